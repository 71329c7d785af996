"""Tiled decode is the tile the plan counts on, and it lowers the decode's peak at the sizes the plan tiles; the
out-of-memory recovery keeps what a run asked for and adds to it; offload set back to none takes the hooks off."""

import numpy as np
import pytest
import torch

from bench.common import LiveBytes
from pipelines.memory.options import RunOptions, tile_vae
from pipelines.memory.placement import TILE, TILE_PIXELS
from pipelines.request import GenerationRequest


def flux_like_vae():
    """FLUX.1's VAE layout and config (sample_size 1024, 16 latent channels, four levels, its scaling and shift),
    at small widths."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16),
                         layers_per_block=1, norm_num_groups=4, sample_size=1024, use_quant_conv=False,
                         use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159).eval()


def decode_peak(vae, side: int) -> int:
    latents = torch.randn(1, 16, side // 8, side // 8)
    with torch.no_grad(), LiveBytes() as meter:
        vae.decode(latents)
    return meter.peak


def test_tiled_decode_lowers_the_decode_peak_of_a_flux_vae_at_1024():
    """diffusers tiles by the VAE's sample_size (1024 for FLUX), which leaves a 1024 x 1024 decode whole; the studio
    tiles at TILE (512), the size the placement plan and the estimates count on."""
    vae = flux_like_vae()
    whole = decode_peak(vae, 1024)
    tile_vae(vae)
    assert (vae.tile_sample_min_size, vae.use_tiling) == (TILE, True) and TILE * TILE == TILE_PIXELS
    tiled = decode_peak(vae, 1024)
    assert tiled < 0.5 * whole, (tiled, whole)


def test_the_run_options_tile_the_vae_when_asked_and_stop_when_not():
    from types import SimpleNamespace

    vae = flux_like_vae()
    pipe = SimpleNamespace(vae=vae, components={"vae": vae}, remove_all_hooks=lambda: None)
    RunOptions().apply(pipe, torch.device("cpu"), tiled=True)
    assert vae.use_tiling and vae.tile_sample_min_size == TILE
    RunOptions().apply(pipe, torch.device("cpu"))
    assert not vae.use_tiling
    RunOptions(vae_tiling=True).apply(pipe, torch.device("cpu"))
    assert vae.use_tiling and vae.tile_sample_min_size == TILE


def test_out_of_memory_recovery_keeps_the_tiled_decode_and_adds_offload(tiny_root, monkeypatch):
    """A GPU's recovery (model offload, then block, then sequential) keeps the run's tiled decode and says which
    offload really ran."""
    from diffusers import FluxTransformer2DModel

    from pipelines.engine import Engine
    from pipelines.manager import ModelManager

    monkeypatch.setattr("pipelines.engine.oom_recovery_steps",
                        lambda device: ("model offload", "block offload", "sequential offload"))
    original, raised = FluxTransformer2DModel.forward, []

    def forward(self, *args, **kwargs):
        if not raised:
            raised.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FluxTransformer2DModel, "forward", forward)
    decoded, decode = [], Engine._vae_decode

    def spy(pipe, latents, dtype):
        decoded.append((pipe.vae.use_tiling, pipe.vae.tile_sample_min_size))
        return decode(pipe, latents, dtype)

    monkeypatch.setattr(Engine, "_vae_decode", staticmethod(spy))
    # so little free memory that the plan decodes in tiles
    engine = Engine(ModelManager(device="cpu", free_memory_fn=lambda device: 16 * 2**20))
    result = engine.generate(GenerationRequest(tool="dev", prompt="x", model="tiny", quant="none", seed=1, steps=2))
    assert result.report["placement"]["tiled_decode"] is True
    assert decoded == [(True, TILE)]
    assert result.report["offload"] == "model"
    assert any(n == "Out of memory: retrying with model offload." for n in result.notices)


def test_offload_set_back_to_none_takes_its_hooks_off(tiny_root):
    from pipelines.engine import Engine
    from pipelines.manager import ModelManager
    from pipelines.memory.offload import installed

    engine = Engine(ModelManager(device="cpu"))

    def run():
        return engine.generate(GenerationRequest(tool="dev", prompt="x", model="tiny", quant="none", seed=1, steps=2))

    base = run()
    (loaded,) = engine.manager._pipelines.values()
    for kind in ("model", "block", "sequential", "none"):
        engine.manager.set_options(offload=kind)
        result = run()
        assert result.report["offload"] == installed(loaded.pipe) == kind
        assert np.array_equal(np.asarray(result.image), np.asarray(base.image))
    assert not any(hasattr(m, "_hf_hook") for component in loaded.components.values()
                   if isinstance(component.module, torch.nn.Module) for m in component.module.modules())


@pytest.mark.parametrize("kind", ["model", "block", "sequential"])
def test_an_offload_is_recorded_in_the_png(tiny_root, kind):
    from pipelines.engine import Engine
    from pipelines.manager import ModelManager

    engine = Engine(ModelManager(device="cpu", offload=kind))
    result = engine.generate(GenerationRequest(tool="schnell", prompt="x", model="tiny", quant="none", seed=1))
    assert result.metadata()["offload"] == kind
    assert any("saves no memory on the CPU" in n for n in result.notices)
