"""Apple MPS by design, proven on the CPU: one memory pool read the same way everywhere, placement and recovery
planned from it, and the attention limit known before a run. Pure functions, tested as tables."""

import time

import numpy as np
import pytest
import torch

from pipelines.errors import UserError
from pipelines.memory.attention import (MPS_SCORE_LIMIT, attention_scores, largest_square, mps_attention_refusal,
                                        sequence_tokens)
from pipelines.memory.placement import plan

G = 2**30


@pytest.mark.parametrize("recommended, allocated, available, free", [
    (24 * G, 0, 30 * G, 24 * G),  # Metal's recommended maximum bounds it
    (24 * G, 10 * G, 30 * G, 14 * G),  # less what the driver already holds for the studio
    (24 * G, 2 * G, 8 * G, 8 * G),  # other apps took the pool: the RAM still available bounds it
    (24 * G, 30 * G, 8 * G, 0),  # never negative
])
def test_unified_free_table(recommended, allocated, available, free):
    from pipelines.memory.device import unified_free

    assert unified_free(recommended, allocated, available) == free


def test_auto_placement_and_the_estimate_read_one_figure_on_mps(monkeypatch):
    """free_memory (Auto, placement) and device_memory (the estimate panel) give the same pool."""
    import psutil

    from pipelines.memory.device import device_memory, free_memory

    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 21 * G)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 5 * G)
    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=40 * G, total=64 * G))
    mps = torch.device("mps")
    memory = device_memory(mps)
    assert free_memory(mps) == memory.free_bytes == 16 * G and memory.total_bytes == 21 * G
    assert "one pool" in memory.what


SIZES = {"transformer": 12 * G, "text_encoder_2": 4 * G, "text_encoder": G // 8, "vae": G // 8}
WORK = {"encode": G // 8, "denoise": G // 4}
PIXELS = 1024 * 1024


@pytest.mark.parametrize("free, tiled, note", [
    (64 * G, False, ""),
    (18 * G, True, ""),  # the whole decode does not fit: in tiles, everything still stays
    (8 * G, True, "does not fit even with a tiled decode"),  # nothing is parked on the CPU: it would free nothing
])
def test_mps_placement_never_parks_on_the_cpu(free, tiled, note):
    placement = plan(SIZES, free, WORK, PIXELS, "mps")
    assert placement.name == "resident" and placement.resident == frozenset(SIZES)
    assert placement.tiled_decode is tiled
    assert "one pool" in placement.reason and note in placement.reason


def test_cuda_parks_where_mps_cannot():
    assert plan(SIZES, 8 * G, WORK, PIXELS, "cuda").name != "resident"


@pytest.mark.parametrize("width, height, condition, refused", [
    (1024, 1024, 0, False),
    (1536, 1536, 0, False),
    (2048, 1536, 0, False),  # 24 x 12,800^2 = 3.9e9
    (2048, 2048, 0, True),  # 24 x 16,896^2 = 6.9e9: MPS would abort (pytorch#149261)
    (1024, 1024, 1024 * 1024, False),  # Kontext: the input image's tokens join the sequence
    (1536, 1536, 1536 * 1536, True),
])
def test_mps_attention_limit_table(width, height, condition, refused):
    reason = mps_attention_refusal(width, height, 512, 24, condition)
    assert (reason is not None) is refused
    scores = attention_scores(width * height, 512, 24, condition)
    assert (scores > MPS_SCORE_LIMIT) is refused
    if refused:
        assert f"width={width}, height={height}" in reason and "2^32" in reason


def test_the_2048_example_and_the_largest_square():
    assert sequence_tokens(2048 * 2048, 512) == 16_896
    assert attention_scores(2048 * 2048, 512, 24) == 24 * 16_896**2 > 2**32
    side = largest_square(512, 24)
    assert side % 16 == 0 and attention_scores(side * side, 512, 24) <= 2**32
    assert attention_scores((side + 16) ** 2, 512, 24) > 2**32
    kontext = largest_square(512, 24, 1.0)
    assert kontext < side and attention_scores(2 * kontext * kontext, 512, 24) <= 2**32


def test_the_estimate_says_a_2048_image_does_not_fit_on_mps_whatever_the_memory():
    from pipelines.memory.estimate import DeviceMemory, Format, estimate
    from pipelines.memory.sizes import ComponentSize, ModelSizes

    model = ModelSizes("made-up", (ComponentSize("transformer", G, G // 8, 2 * G),),
                       hidden=3072, text_dim=4096, vae_width=128, source="known")
    full = Format("none", "full precision", 1.0, 1.0)
    big = DeviceMemory("mps", 512 * G, 512 * G, "free")
    row = estimate(model, full, "none", 2048 * 2048, 512, big)
    assert not row.fits and "attention scores" in row.reason
    assert estimate(model, full, "none", 1536 * 1536, 512, big).fits
    assert estimate(model, full, "none", 2048 * 2048, 512, DeviceMemory("cuda", 512 * G, 512 * G, "free")).fits


def test_a_run_past_the_attention_limit_is_refused_before_it_starts():
    from types import SimpleNamespace

    from pipelines.engine import check_mps_attention

    transformer = SimpleNamespace(config=SimpleNamespace(num_attention_heads=24))
    check_mps_attention(transformer, 1024, 1024, 512)
    with pytest.raises(UserError, match="width=2048, height=2048"):
        check_mps_attention(transformer, 2048, 2048, 512)


@pytest.mark.parametrize("device, steps, advice", [
    ("mps", ("freed memory", "tiled decode"), "CPU offload frees nothing"),
    ("cuda", ("model offload", "block offload", "sequential offload"), "CPU offload (--offload block"),
    ("cpu", ("freed memory",), "CPU offload (--offload block"),
])
def test_out_of_memory_recovery_per_device(device, steps, advice):
    from pipelines.engine import oom_advice, oom_recovery_steps

    assert oom_recovery_steps(device) == steps
    assert advice in oom_advice(device)
    if device == "mps":
        assert "smaller size" in oom_advice(device) and "--quant 4bit" in oom_advice(device)


def test_mps_recovery_frees_memory_then_decodes_in_tiles(tiny_root, monkeypatch):
    """The MPS recovery steps run through the engine's own retry (on the CPU here): freed memory, then the same run
    decoded in tiles, both visible; no offload is added."""
    from diffusers import FluxTransformer2DModel

    from pipelines.engine import Engine, oom_recovery_steps
    from pipelines.manager import ModelManager
    from pipelines.request import GenerationRequest

    monkeypatch.setattr("pipelines.engine.oom_recovery_steps", lambda device: oom_recovery_steps("mps"))
    original, raised = FluxTransformer2DModel.forward, []

    def forward(self, *args, **kwargs):
        if len(raised) < 2:
            raised.append(1)
            raise torch.OutOfMemoryError("MPS backend out of memory")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FluxTransformer2DModel, "forward", forward)
    engine = Engine(ModelManager(device="cpu"))
    result = engine.generate(GenerationRequest(tool="schnell", prompt="x", model="tiny", quant="none", seed=1))
    assert [n for n in result.notices if n.startswith("Out of memory")] == [
        "Out of memory: retrying with freed memory.", "Out of memory: retrying with tiled decode."]
    assert result.report["placement"]["tiled_decode"] is True and result.report["offload"] == "none"


@pytest.mark.parametrize("offload, device, says", [
    ("model", "mps", "saves no memory on Apple MPS"), ("block", "mps", "share one pool"),
    ("model", "cpu", "saves no memory on the CPU"), ("model", "cuda", None), ("none", "mps", None),
])
def test_offload_notice_table(offload, device, says):
    from pipelines.memory.options import offload_notice

    notice = offload_notice(offload, device)
    assert notice is None if says is None else says in notice


def test_a_run_s_peak_on_mps_counts_the_whole_pool(monkeypatch):
    """Metal's allocations and the process's own share one pool on a Mac: the peak adds them up, so a component kept
    on the CPU (or a large NumPy image) counts as it does on the Mac, not only what the MPS driver holds."""
    import psutil

    from pipelines.memory.device import PeakMemory, memory_kind

    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 3 * G)
    mps = torch.device("mps")
    before = psutil.Process().memory_info().rss
    with PeakMemory(mps, interval=0.005) as peak:
        held = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB on the CPU side of the pool
        held[::4096] = 2
        time.sleep(0.05)
    assert peak.peak_bytes >= 3 * G + before + 32 * 2**20
    assert memory_kind(mps) == "mps-driver+rss"
    del held
