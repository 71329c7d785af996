"""The tool registry: every tool declared in one module, and a new tool is one module (or one register call)."""

from dataclasses import dataclass

import numpy as np
import pytest

import cli
from pipelines.errors import UserError
from pipelines.images import read_metadata
from pipelines.request import GenerationRequest
from pipelines.tools import Prepared, TinyVariant, Tool, all_tools, get_tool, register, tool_names, unregister


@dataclass(frozen=True)
class Square(Tool):
    """A made-up tool: text to a square image, on FluxPipeline."""

    def prepare(self, request, ctx):
        side = min(self.output_size(request, None))
        return Prepared({"prompt": request.prompt}, side, side)


def square_tool() -> Square:
    return Square(name="square", title="Square", pipeline_class="FluxPipeline", model_id="example/flux-square",
                  steps=20, guidance=3.5, tiny_steps=2, order=99, tiny=TinyVariant("square", seed=42))


@pytest.fixture
def square():
    tool = register(square_tool())
    yield tool
    unregister(tool.name)


def test_every_tool_declares_what_the_studio_needs():
    names = tool_names()
    assert names == ("schnell", "dev", "fill", "kontext", "depth", "canny", "redux", "klein", "klein_inpaint")
    for tool in all_tools():
        assert tool.title and tool.pipeline_class.startswith(("Flux", "Flux2")) and tool.model_id.count("/") == 1
        assert get_tool(tool.name) is tool
        assert tool.defaults("tiny").steps == tool.tiny_steps and tool.defaults(None).steps == tool.steps
    with pytest.raises(UserError, match="tool='sdxl' is unknown; choose one of schnell, dev"):
        get_tool("sdxl")


@pytest.mark.parametrize("change, message", [
    ({"name": "Big Tool"}, "name='Big Tool' must be a lower-case identifier"),
    ({"inputs": frozenset({"sketch"})}, "inputs=\\['sketch'\\] are unknown"),
    ({"needs_image": True}, "needs_image=True needs 'image' in inputs"),
    ({"steps": 0}, "steps=0"),
])
def test_a_tool_is_checked_when_it_is_declared(change, message):
    fields = dict(name="square", title="Square", pipeline_class="FluxPipeline", model_id="example/flux-square",
                  steps=20, guidance=3.5, tiny_steps=2, order=99, tiny=TinyVariant("square", seed=42))
    with pytest.raises(ValueError, match=message):
        Square(**{**fields, **change})
    with pytest.raises(ValueError, match="folder='Square'"):
        TinyVariant("Square", seed=1)


def test_an_extra_tool_runs_end_to_end_on_the_tiny_family(square, studio, tiny_root, tmp_path, capsys, image_files):
    assert "square" in tool_names()
    request = GenerationRequest(tool="square", prompt="a red fox", model="tiny", seed=3, width=128, height=96)
    result = studio.generate(request)
    assert result.image.size == (96, 96)
    assert np.asarray(result.image, dtype=np.float32).std() > 5.0
    assert result.report["tool"] == "square" and result.report["parameters"]["steps"] == 2
    assert (tiny_root / "square" / "model_index.json").is_file()  # its tiny model was built on first use

    out = tmp_path / "square.png"
    assert cli.main(["generate", "--tool", "square", "--prompt", "a red fox", "--model", "tiny", "--seed", "3",
                     "--out", str(out)]) == 0
    assert read_metadata(out)["tool"] == "square"

    with pytest.raises(UserError, match="--mask is only used by the fill and klein_inpaint tools, not square"):
        GenerationRequest(tool="square", prompt="x", model="tiny", mask=image_files["mask"])
    with pytest.raises(UserError, match="--control-image is only used by the depth and canny tools, not square"):
        GenerationRequest(tool="square", prompt="x", model="tiny", control_image=image_files["photo"])
