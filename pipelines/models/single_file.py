"""Single-file transformer checkpoints: a FLUX.1 or FLUX.2 transformer as one ``.safetensors`` (bf16, fp16, fp8 e4m3
with or without scales, or BFL's nvfp4; BFL's original key names, ComfyUI's prefixed ones, or diffusers' own) or one
``.gguf``.

The file's tensor table is read first, without its weights, to say what it is and whether it fits the tool's model
(its family, input channels, width, depth and guidance embedder). It then loads through diffusers' ``from_single_file``
with the tool's own model config. fp8 weights are upcast to the run's dtype as they load, their scales applied (per
tensor, or BFL's per-row ``fp8r``): they run at the quantization the user chose, like any full-precision weights.
Pre-quantized files load as they are (quantization.prequantized): GGUF, and BFL's ``nvfp4`` (packed 4-bit weights with
block scales), which diffusers' BFL quantization config reads.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError
from .layout import safetensors_header

SUFFIXES = (".safetensors", ".gguf")
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")
# (input layer, double blocks, single blocks, guidance embedder) in BFL's names and in diffusers'
LAYOUTS = {"bfl": ("img_in.weight", "double_blocks.", "single_blocks.", "guidance_in.in_layer.weight"),
           "diffusers": ("x_embedder.weight", "transformer_blocks.", "single_transformer_blocks.",
                         "time_text_embed.guidance_embedder.linear_1.weight")}
FLUX2_GUIDANCE = {"bfl": "guidance_in.in_layer.weight",
                  "diffusers": "time_guidance_embed.guidance_embedder.linear_1.weight"}
FLUX2_KEYS = ("double_stream_modulation_img.lin.weight", "single_stream_modulation.lin.weight",
              "double_stream_modulation_img.linear.weight", "single_stream_modulation.linear.weight")
FAMILY_TITLES = {"flux1": "FLUX.1", "flux2": "FLUX.2"}
SCALES = (".scale_weight", ".weight_scale")  # per-tensor or per-row scales of scaled fp8 weights
NVFP4_MARK = ".weight_scale_2"  # BFL's nvfp4 layout: packed E2M1 weights, block scales and this global scale
WEIGHT_NAMES = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F8_E4M3": "fp8_e4m3", "F8_E5M2": "fp8_e5m2"}


@dataclass(frozen=True)
class TransformerFile:
    """What a single-file transformer holds, read from its tensor table."""

    path: Path
    container: str  # safetensors or gguf
    layout: str  # bfl (BFL's names, ComfyUI's prefixed too) or diffusers
    in_channels: int
    hidden: int
    double_blocks: int
    single_blocks: int
    guidance: bool
    weights: str  # the weights' storage: bf16, fp16, fp32, fp8_e4m3, fp8_e5m2, or a GGUF type such as Q8_0
    scaled: bool  # fp8 weights with scales beside them
    prefixed: bool = False  # its names carry a prefix (ComfyUI's model.diffusion_model.)
    family: str = "flux1"  # the model family of its layout (pipelines.families): flux1 or flux2

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_fp8(self) -> bool:
        return self.weights.startswith("fp8")

    @property
    def prequantized(self) -> tuple[str, str] | None:
        """(backend, format) of a file whose weights are quantized already and load as they are; None when its
        weights are plain (bf16, fp16, fp32, fp8 upcast as they load)."""
        if self.container == "gguf":
            return ("gguf", self.weights)
        return ("bfl", "nvfp4") if self.weights == "nvfp4" else None

    def describe(self) -> str:
        if self.family == "flux2":
            kind = {128: "text-to-image, editing and inpainting"}.get(self.in_channels, "custom")
        else:
            kind = {64: "text-to-image / Kontext", 384: "Fill", 128: "Depth / Canny"}.get(self.in_channels, "custom")
        guidance = "guidance-distilled" if self.guidance else "no guidance embedder"
        return (f"a {FAMILY_TITLES[self.family]} transformer ({kind}: {self.in_channels} input channels, width "
                f"{self.hidden}, {self.double_blocks}+{self.single_blocks} blocks, {guidance}; {self.weights} weights)")

    def to_dict(self) -> dict:
        values = asdict(self)
        values["path"] = self.name  # the file's name only: reports and PNGs never carry a local path
        return values


def is_transformer_file(value) -> bool:
    return isinstance(value, (str, Path)) and Path(str(value)).suffix.lower() in SUFFIXES


def inspect(path: str | Path) -> TransformerFile:
    """What ``path`` is; a UserError naming the file when it is not a FLUX transformer checkpoint."""
    path = Path(path).expanduser()
    shown = path.name
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"transformer={shown!r} must be a .safetensors or .gguf file (a single-file FLUX.1 or "
                        "FLUX.2 transformer).")
    if not path.is_file():
        raise UserError(f"transformer={shown!r}: no such file.")
    stat = path.stat()
    return _inspect(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _inspect(path: str, size: int, mtime: int) -> TransformerFile:
    file = Path(path)
    table = _gguf_table(file) if file.suffix.lower() == ".gguf" else _safetensors_table(file)
    return classify(file, table)


def _safetensors_table(file: Path) -> dict[str, tuple[str, tuple]]:
    try:
        header = safetensors_header(file)
        return {name: (entry["dtype"], tuple(entry["shape"])) for name, entry in header.items()}
    except (UserError, KeyError, TypeError, AttributeError):
        raise UserError(f"transformer={file.name!r} is not a readable safetensors file (its header is damaged); "
                        "download it again.") from None


def _gguf_table(file: Path) -> dict[str, tuple[str, tuple]]:
    import gguf

    try:
        reader = gguf.GGUFReader(str(file))
        return {t.name: (t.tensor_type.name, tuple(int(d) for d in reversed(t.shape))) for t in reader.tensors}
    except Exception as error:  # noqa: BLE001  (gguf raises ValueError, struct errors, ...)
        raise UserError(f"transformer={file.name!r} is not a readable GGUF file ({type(error).__name__}); "
                        "download it again.") from None


def classify(file: Path, table: dict[str, tuple[str, tuple]]) -> TransformerFile:
    """A tensor table (name -> (dtype, shape)) as a TransformerFile; a UserError when it is no FLUX transformer."""
    names = {_strip(name): value for name, value in table.items()}
    shown = file.name
    family = "flux2" if any(key in names for key in FLUX2_KEYS) else "flux1"
    layout = next((name for name, keys in LAYOUTS.items() if keys[0] in names), None)
    if layout is None:
        example = next(iter(table), "none")
        raise UserError(f"transformer={shown!r} is not a FLUX transformer (no input layer img_in or x_embedder; "
                        f"keys like {example!r}): it is another model's file, or a LoRA (give LoRAs as --lora).")
    entry, double, single, guidance = LAYOUTS[layout]
    if family == "flux2":
        guidance = FLUX2_GUIDANCE[layout]
    hidden, in_channels = names[entry][1][:2]
    dtypes = Counter(dtype for name, (dtype, shape) in names.items() if name.endswith(".weight") and len(shape) == 2)
    storage = dtypes.most_common(1)[0][0] if dtypes else "?"
    weights = "nvfp4" if any(name.endswith(NVFP4_MARK) for name in names) else WEIGHT_NAMES.get(storage, storage)
    return TransformerFile(file, "gguf" if file.suffix.lower() == ".gguf" else "safetensors", layout,
                           int(in_channels), int(hidden), _count(names, double), _count(names, single),
                           guidance in names, weights,
                           weights != "nvfp4" and any(name.endswith(SCALES) for name in names),
                           any(_strip(name) != name for name in table), family)


def _strip(name: str) -> str:
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _count(names, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for name in names if (m := pattern.match(name))}
    return max(found) + 1 if found else 0


def check_fits(file: TransformerFile, root: Path, tool_name: str) -> None:
    """A UserError when ``file`` does not fit the transformer of the model in ``root`` (the tool's model)."""
    try:
        config = json.loads((Path(root) / "transformer" / "config.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"transformer={file.name!r}: the {tool_name} tool's model has no transformer config to load "
                        "it with.") from None
    wanted_family = "flux2" if str(config.get("_class_name", "")).startswith("Flux2") else "flux1"
    if file.family != wanted_family:
        raise UserError(f"transformer={file.name!r} does not fit the {tool_name} tool's model: it is "
                        f"{file.describe()}, and the model is a {FAMILY_TITLES[wanted_family]} one.")
    wanted = {"in_channels": config.get("in_channels"),
              "width": config.get("num_attention_heads", 0) * config.get("attention_head_dim", 0),
              "blocks": (config.get("num_layers"), config.get("num_single_layers")),
              "guidance": bool(config.get("guidance_embeds"))}
    got = {"in_channels": file.in_channels, "width": file.hidden, "blocks": (file.double_blocks, file.single_blocks),
           "guidance": file.guidance}
    different = [f"{key} {got[key]} (the model has {wanted[key]})" for key in wanted if got[key] != wanted[key]]
    if different:
        raise UserError(f"transformer={file.name!r} does not fit the {tool_name} tool's model: "
                        f"{'; '.join(different)}. It is {file.describe()}.")


def load(file: TransformerFile, cls, root: Path, dtype):
    """The transformer ``cls`` from ``file`` (safetensors) with the config of the model in ``root``, at ``dtype``.

    bf16/fp16/fp32 files are read by diffusers as they are. fp8 ones are upcast tensor by tensor first (their scales
    applied, where the file has them), so diffusers' converter never meets a float8 tensor. A prefix is dropped from
    the names where diffusers does not drop it itself (it does for FLUX.1 files in BFL's names). nvfp4 files load as
    they are, through diffusers' BFL quantization config: their layers stay packed and dequantize as they run (fused
    FP4 kernels where the device and FlashInfer have them)."""
    if file.container != "safetensors":
        raise ValueError(f"load: {file.name} is a {file.container} file; GGUF loads as a pre-quantized checkpoint.")
    strip = file.prefixed and (file.layout == "diffusers" or file.family == "flux2")
    if file.weights == "nvfp4":
        from diffusers import BFLQuantizationConfig
        from safetensors.torch import load_file

        state = {(_strip(name) if strip else name): tensor for name, tensor in load_file(str(file.path)).items()}
        config = BFLQuantizationConfig(compute_dtype=dtype)
        return cls.from_single_file(state, config=str(root), subfolder="transformer", dtype=dtype,
                                    local_files_only=True, quantization_config=config)
    source = _read(file.path, dtype, strip) if file.is_fp8 or strip else str(file.path)
    return cls.from_single_file(source, config=str(root), subfolder="transformer", dtype=dtype,
                                local_files_only=True)


def _read(path: Path, dtype, strip: bool) -> dict:
    from safetensors import safe_open

    state = {}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        names = list(handle.keys())
        scales = {name for name in names if name.endswith(SCALES) or name.endswith(".input_scale")
                  or name == "scaled_fp8"}
        for name in names:
            if name in scales:
                continue
            tensor = handle.get_tensor(name)
            if tensor.is_floating_point():
                tensor = tensor.to(dtype)
            base = name[: -len(".weight")] if name.endswith(".weight") else None
            scale = next((f"{base}{suffix}" for suffix in SCALES if base and f"{base}{suffix}" in names), None)
            if scale is not None:
                factor = handle.get_tensor(scale).to(dtype)
                tensor = tensor * (factor.reshape(-1, *([1] * (tensor.dim() - 1))) if factor.numel() > 1 else factor)
            state[_strip(name) if strip else name] = tensor
    return state


def loaded_as(file: TransformerFile, dtype, component: dict) -> dict:
    """What the report says of a run's single-file transformer: the file, and how its weights ran."""
    quantized = component.get("backend") != "none"
    ran = f"{component['backend']} {component['format']}" if quantized else "full precision"
    run_dtype = str(dtype).replace("torch.", "")
    if file.container == "gguf":
        how = f"GGUF {file.weights}, used as it is ({ran})"
    elif file.prequantized:
        how = f"BFL {file.weights} weights, used as they are ({ran})"
    elif file.is_fp8:
        how = (f"{file.weights} weights{' with scales' if file.scaled else ''}, upcast to {run_dtype}"
               + (f", then quantized: {ran}" if quantized else ", run in full precision"))
    else:
        how = f"{file.weights} weights, loaded as {run_dtype}" + (f", then quantized: {ran}" if quantized else "")
    return dict(file.to_dict(), loaded_as=run_dtype, ran=ran, summary=f"Transformer from {file.name}: {how}.")
