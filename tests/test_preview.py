"""Live previews: the latent-to-RGB projection, and the engine's preview callback (never changes the result)."""

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.errors import Cancelled
from pipelines.preview import (LATENT_CHANNELS, LATENT_RGB_BIAS, is_preview_step, latents_to_rgb, packed_preview,
                               preview_image)
from pipelines.request import GenerationRequest


def latents(height=16, width=24, seed=0):
    return torch.randn(1, LATENT_CHANNELS, height, width, generator=torch.Generator().manual_seed(seed))


def test_projection_is_rgb_uint8_of_the_latent_size_and_leaves_the_latents_alone():
    values = latents() * 4  # well outside [-1, 1] after the projection somewhere: clipped, not wrapped
    before = values.clone()
    rgb = latents_to_rgb(values)
    assert rgb.shape == (16, 24, 3) and rgb.dtype == np.uint8
    assert rgb.min() >= 0 and rgb.max() <= 255 and rgb.std() > 1
    assert torch.equal(values, before)
    assert np.array_equal(rgb, latents_to_rgb(before))  # deterministic
    assert np.array_equal(rgb, latents_to_rgb(values[0]))  # (16, h, w) works as well
    assert latents_to_rgb(values.to(torch.bfloat16)).shape == rgb.shape  # any dtype


def test_zero_latents_show_the_bias():
    rgb = latents_to_rgb(torch.zeros(1, LATENT_CHANNELS, 2, 2))
    expected = [round((b + 1) * 127.5) for b in LATENT_RGB_BIAS]
    assert (rgb == np.array(expected, dtype=np.uint8)).all()


def test_non_finite_latents_give_a_picture_not_an_error():
    values = latents(4, 4)
    values[0, 0, 0, 0] = float("nan")
    values[0, 1, 1, 1] = float("inf")
    assert latents_to_rgb(values).shape == (4, 4, 3)


@pytest.mark.parametrize("height, width, out", [(7, 5, (57, 41)), (1, 1, (8, 8)), (13, 31, (248, 104))])
def test_preview_is_scaled_to_the_output_size_for_odd_sizes(height, width, out):
    image = preview_image(latents(height, width, seed=height), *out)
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == out


def test_wrong_channel_count_is_refused():
    with pytest.raises(ValueError, match="16 latent channels"):
        latents_to_rgb(torch.zeros(1, 4, 8, 8))


def test_packed_latents_are_unpacked_as_the_decode_does():
    from diffusers import FluxPipeline

    class Pipe:
        vae_scale_factor = 8
        _unpack_latents = staticmethod(FluxPipeline._unpack_latents)

    spatial = latents(12, 20, seed=3)  # a 160x96 image
    packed = FluxPipeline._pack_latents(spatial, 1, LATENT_CHANNELS, 12, 20)
    image = packed_preview(Pipe(), packed, 160, 96)
    assert image.size == (160, 96)
    assert np.array_equal(np.asarray(image), np.asarray(preview_image(spatial, 160, 96)))


def test_preview_steps():
    assert [s for s in range(1, 9) if is_preview_step(s, 2)] == [2, 4, 6, 8]
    assert [s for s in range(1, 9) if is_preview_step(s, 3)] == [3, 6]
    assert not any(is_preview_step(s, 0) for s in range(1, 9))


# ---- the engine -----------------------------------------------------------------------------------------------

def request(**change):
    values = dict(tool="dev", prompt="a red fox", model="tiny", quant="none", seed=3, steps=6, width=144, height=96)
    return GenerationRequest(**{**values, **change})


def test_preview_every_n_steps_and_the_final_image_is_bit_identical(studio):
    seen = []
    with_previews = studio.generate(request(), preview=lambda image, step, steps: seen.append((image, step, steps)),
                                    preview_every=2)
    assert [(step, steps) for _, step, steps in seen] == [(2, 6), (4, 6), (6, 6)]
    assert all(image.size == (144, 96) and image.mode == "RGB" for image, _, _ in seen)
    assert not np.array_equal(np.asarray(seen[0][0]), np.asarray(seen[-1][0]))  # the picture follows the run
    assert with_previews.report["timings"]["preview_s"] > 0
    without = studio.generate(request())
    assert "preview_s" not in without.report["timings"]
    assert np.array_equal(np.asarray(with_previews.image), np.asarray(without.image))
    seen.clear()
    studio.generate(request(steps=5), preview=lambda *args: seen.append(args[1]), preview_every=3)
    assert seen == [3]


def test_a_failing_preview_never_fails_or_changes_the_run(studio):
    calls = []

    def broken(image, step, steps):
        calls.append(step)
        raise RuntimeError("the page went away")

    result = studio.generate(request(), preview=broken, preview_every=1)
    assert calls == [1]  # no more previews after one failed
    assert result.report["quantization"]["fallbacks"] == []  # not mistaken for a failing quantized model
    assert np.array_equal(np.asarray(result.image), np.asarray(studio.generate(request()).image))


def test_cancelled_from_a_preview_stops_the_run_and_the_next_one_runs(studio):
    def stop(image, step, steps):
        raise Cancelled("stopped")

    with pytest.raises(Cancelled):
        studio.generate(request(), preview=stop, preview_every=2)
    assert studio.generate(request()).report["quantization"]["fallbacks"] == []


@pytest.mark.parametrize("tool", ["fill", "kontext", "canny"])
def test_previews_on_the_image_tools(studio, photo, mask, tool):
    extra = {"fill": {"mask": mask}}.get(tool, {})
    seen = []
    result = studio.generate(request(tool=tool, image=photo, width=None, height=None, steps=2, **extra),
                             preview=lambda image, step, steps: seen.append(image.size), preview_every=1)
    assert seen == [result.image.size] * 2
