"""FLUX.1 Depth: generation that follows the depth of a photo (estimated by Depth Anything V2) or a given map."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..control_maps import depth_map, load_depth_estimator
from ..models.sources import resolve_aux
from .base import TinyVariant
from .control import Control

ESTIMATOR_ID = "depth-anything/Depth-Anything-V2-Small-hf"
TINY_ESTIMATOR = "depth-estimator"


def build_tiny_estimator(path: Path) -> None:
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config,
                              DPTImageProcessor)

    from ..models.tiny import seeded

    seeded(30)
    backbone = Dinov2Config(image_size=70, patch_size=14, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                            intermediate_size=64, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[16, 16, 32, 32],
                                 fusion_hidden_size=16, head_hidden_size=16)
    DepthAnythingForDepthEstimation(config).save_pretrained(path)
    DPTImageProcessor(size={"height": 70, "width": 70}, keep_aspect_ratio=False, ensure_multiple_of=14,
                      do_pad=False).save_pretrained(path)


@dataclass(frozen=True)
class Depth(Control):
    def control_map(self, image, request, ctx):
        manager = ctx.manager
        path = resolve_aux(ctx.source, ESTIMATOR_ID, TINY_ESTIMATOR, ctx.progress)
        estimator = manager.aux(("depth", str(path)), lambda: load_depth_estimator(path, manager.device))
        return depth_map(image, estimator)

    def tiny_folders(self) -> tuple[str, ...]:
        return (self.tiny.folder, TINY_ESTIMATOR)

    def build_tiny(self, root: Path, shared: dict) -> None:
        super().build_tiny(root, shared)
        build_tiny_estimator(root / TINY_ESTIMATOR)


TOOL = Depth(name="depth", title="FLUX.1 Depth", model_id="black-forest-labs/FLUX.1-Depth-dev", steps=28,
             control_lora=("black-forest-labs/FLUX.1-Depth-dev-lora", "flux1-depth-dev-lora.safetensors"),
             guidance=10.0, tiny_steps=8, order=4, tiny=TinyVariant("depth", seed=14, in_channels=128),
             aux_models=(ESTIMATOR_ID,))
