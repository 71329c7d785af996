"""LoRAs: checked files, applied to a loaded pipeline as runtime (peft) adapters over its layers.

Files in the formats people have (diffusers/PEFT, kohya sd-scripts and ai-toolkit, XLabs, BFL) are read through
diffusers' own converters (FluxLoraLoaderMixin.lora_state_dict) and loaded into the transformer and, where the file
has them, the CLIP text encoder. The adapters sit over the layers as they are: a quantized layer stays quantized (peft
wraps bitsandbytes, torchao and quanto layers), nothing is de-quantized, re-loaded or re-quantized, and removing the
adapters gives back the very same modules.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from quantization.registry import state_dict_as_stored

from .errors import UserError

STRENGTH_MIN, STRENGTH_MAX = -4.0, 4.0
SUFFIX = ".safetensors"
FORMATS_TEXT = "diffusers/PEFT, kohya, XLabs or BFL format"
ADAPTED = ("transformer", "text_encoder")  # the pipeline components a FLUX.1 LoRA may adapt
# <module>.<down|up>[.<adapter>].weight, as the converters leave the keys
_LORA_KEY = re.compile(r"(.+?)\.(lora_A|lora_B|lora_down|lora_up|lora\.down|lora\.up)(?:\.[^.]+)?\.weight$")
_DOWN = {"lora_A", "lora_down", "lora.down"}
_CONTROL_NORMS = ("norm_q", "norm_k", "norm_added_q", "norm_added_k")  # what control LoRAs also replace
_HASHES: dict[tuple, str] = {}


@dataclass(frozen=True)
class LoraFile:
    """One LoRA of a request: its file, strength, and what identifies it (file name and sha256)."""

    path: str
    strength: float
    name: str
    sha256: str

    @property
    def adapter(self) -> str:
        """The adapter name in the model: the content, so a renamed copy is the same adapter."""
        return f"lora_{self.sha256[:16]}"

    @property
    def tag(self) -> str:
        """A1111's prompt form, e.g. <lora:film-grain:0.8>."""
        return f"<lora:{self.name}:{self.strength:g}>"

    def to_dict(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "strength": self.strength}


def parse_lora_arg(text: str) -> tuple[str, float | str]:
    """``FILE[:STRENGTH]`` (strength 1.0 when left out); a colon not followed by a number is part of the path."""
    text = str(text).strip()
    path, sep, tail = text.rpartition(":")
    if sep and path and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*|\s*[-+]?(nan|inf|infinity)\s*",
                                     tail, re.IGNORECASE):
        return path, tail.strip()
    return text, 1.0


def check_loras(value) -> list[LoraFile]:
    """The request's ``loras``: a list of (path, strength) pairs (or "FILE[:STRENGTH]" texts, or LoraFiles),
    each checked: an existing .safetensors file with a readable header, a finite strength in range, no repeats."""
    if value is None or value == "":
        return []
    single_pair = isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], (str, Path))
    if isinstance(value, (str, Path, LoraFile, dict)) or single_pair:
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise UserError(f"loras={value!r} must be a list of (file, strength) pairs.")
    checked = []
    for item in value:
        if isinstance(item, LoraFile):
            item = (item.path, item.strength)
        elif isinstance(item, dict):
            item = (item.get("path"), item.get("strength", 1.0))
        elif isinstance(item, (str, Path)):
            item = parse_lora_arg(str(item))
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise UserError(f"lora={item!r} must be a (file, strength) pair, e.g. ('style.safetensors', 0.8).")
        lora = check_lora(*item)
        twin = next((c for c in checked if c.sha256 == lora.sha256), None)
        if twin is not None:
            raise UserError(f"lora={lora.name!r} is listed twice (same file as {twin.name!r}); give it once, with "
                            "the strength you want.")
        checked.append(lora)
    return checked


def check_lora(path, strength=1.0) -> LoraFile:
    if path is None or not str(path).strip():
        raise UserError("lora: the file name is empty; give a .safetensors LoRA file.")
    shown = str(path).strip()
    file = Path(shown).expanduser()
    if file.suffix.lower() != SUFFIX:
        raise UserError(f"lora={shown!r} is not a .safetensors file; LoRAs load from .safetensors only "
                        "(convert a .ckpt/.pt/.bin LoRA first).")
    if not file.is_file():
        raise UserError(f"lora={shown!r}: no such file.")
    number = _strength(strength, file.stem)
    _check_header(file, shown)
    return LoraFile(str(file), number, file.stem, file_sha256(file))


def _strength(value, name: str) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number) or not STRENGTH_MIN <= number <= STRENGTH_MAX:
        raise UserError(f"lora strength={value!r} for {name!r} is not a number in {STRENGTH_MIN:g}..{STRENGTH_MAX:g}; "
                        "use e.g. 1.0 (0 turns it off).")
    return number


def _check_header(file: Path, shown: str) -> None:
    """A complete safetensors file: a JSON header whose tensors all lie within the file (no weights are read)."""
    size = file.stat().st_size
    try:
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > min(size - 8, 100 * 2**20):
                raise ValueError("header length")
            header = json.loads(handle.read(length))
        end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
        complete = 8 + length + end <= size and end > 0
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error, UnicodeDecodeError):
        raise UserError(f"lora={shown!r} is not a safetensors file (unreadable header); use a .safetensors LoRA, "
                        "or download it again if it is damaged.") from None
    if not complete:
        raise UserError(f"lora={shown!r} is truncated or damaged ({size} bytes, shorter than its header says); "
                        "download it again.")


def file_sha256(file: Path) -> str:
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def available_loras(folder: Path | None = None) -> list[Path]:
    """The .safetensors files under the LoRA folder (pipelines.paths.lora_dir), sorted by name."""
    from .paths import lora_dir

    folder = Path(folder) if folder else lora_dir()
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.rglob(f"*{SUFFIX}") if p.is_file() and not p.name.startswith(".")),
                  key=lambda p: str(p.relative_to(folder)).lower())


# ---- on a loaded pipeline ---------------------------------------------------------------------------------------

def adapters_on(pipe) -> dict[str, tuple]:
    """Adapters present in each adapted component of ``pipe`` (as the modules themselves record them)."""
    found = {}
    for name in ADAPTED:
        config = getattr(getattr(pipe, name, None), "peft_config", None)
        if config:
            found[name] = tuple(sorted(config))
    return found


def apply_loras(loaded, loras: list[LoraFile]) -> None:
    """Make ``loaded``'s pipeline run with exactly ``loras`` at their strengths.

    The same set as last time only changes strengths. Another set is read and checked in full first (a bad file
    leaves the model as it was), then the old adapters are removed and the new ones loaded; a failure while loading
    removes them all, so the next run starts clean. Components shared with other pipelines (CLIP) are compared
    with what this pipeline left on them, so a change made through another pipeline is seen.
    """
    pipe = loaded.pipe
    if loras and not hasattr(pipe, "load_lora_into_transformer"):
        raise UserError(f"loras: {type(pipe).__name__} does not take LoRAs; run this tool without them.")
    wanted = tuple(lora.adapter for lora in loras)
    present = adapters_on(pipe)
    if not loras and not present:
        loaded.lora_state = ((), {})
        return
    if loaded.lora_state != (tuple(sorted(wanted)), present):
        read = [(lora, read_lora(lora, pipe)) for lora in loras]
        remove_loras(pipe)
        loaded.lora_state = None
        for lora, state in read:
            try:
                _load(pipe, lora, *state)
            except Exception as error:
                remove_loras(pipe)
                raise UserError(f"lora={lora.name!r} could not be applied to this model ({_short(error)}); it was "
                                "trained for another FLUX.1 variant, or the file is damaged.") from None
        loaded.lora_state = (tuple(sorted(wanted)), adapters_on(pipe))
    if loras:
        pipe.set_adapters(list(wanted), adapter_weights=[lora.strength for lora in loras])


def remove_loras(pipe) -> None:
    """Remove every adapter: the layers are the original modules again (quantized ones included)."""
    if adapters_on(pipe):
        pipe.unload_lora_weights()


def text_encoder_adapters(pipe, loras: list[LoraFile]) -> tuple:
    """(adapter, strength) of the LoRAs that adapt a text encoder: part of the prompt-embedding cache key."""
    present = set(adapters_on(pipe).get("text_encoder", ()))
    return tuple((lora.adapter, lora.strength) for lora in loras if lora.adapter in present)


def read_lora(lora: LoraFile, pipe) -> tuple:
    """(state dict, alphas, metadata) in diffusers' naming, checked against ``pipe``'s modules."""
    try:
        state, alphas, metadata = pipe.lora_state_dict(lora.path, return_alphas=True, return_lora_metadata=True)
    except Exception as error:
        raise UserError(f"lora={lora.name!r} is not a LoRA for FLUX.1 ({_short(error)}); use a FLUX.1 LoRA in "
                        f"{FORMATS_TEXT}.") from None
    check_fits(lora, state, pipe)
    return state, alphas, metadata


def check_fits(lora: LoraFile, state: dict, pipe) -> None:
    """Every key is for a FLUX.1 component, names a layer the transformer has, with the layer's shapes."""
    foreign = [key for key in state if key.split(".", 1)[0] not in ADAPTED]
    if foreign or not state:
        example = f" (keys like {foreign[0]!r})" if foreign else " (no weights)"
        raise UserError(f"lora={lora.name!r} is not a LoRA for FLUX.1{example}: it is for another model family "
                        f"(SD 1.5, SDXL, ...); use a FLUX.1 LoRA in {FORMATS_TEXT}.")
    modules = dict(pipe.transformer.named_modules())
    embedder = getattr(modules.get("x_embedder"), "in_features", None)
    for key, tensor in state.items():
        parts = key.split(".")
        widens = (len(parts) > 2 and parts[1] == "x_embedder" and parts[2] in _DOWN and embedder is not None
                  and tensor.shape[-1] != embedder)
        if (len(parts) > 2 and parts[0] == "transformer" and parts[-2] in _CONTROL_NORMS) or widens:
            raise UserError(f"lora={lora.name!r} is a control LoRA (it widens the transformer's input for a depth or "
                            "edge map and replaces its norms); give it to the Depth or Canny tool as its control LoRA "
                            "(--control lora --control-lora FILE), not as --lora.")
    for key, tensor in state.items():
        if not key.startswith("transformer."):
            continue  # text encoder keys are in older naming here; peft checks them as it loads
        match = _LORA_KEY.match(key[len("transformer."):])
        if not match:
            continue
        name, kind = match.groups()
        module = modules.get(name)
        if module is None:
            raise UserError(f"lora={lora.name!r} adapts {name!r}, which this FLUX.1 transformer does not have; "
                            "it was made for another model.")
        in_features, out_features = getattr(module, "in_features", None), getattr(module, "out_features", None)
        expected = in_features if kind in _DOWN else out_features
        got = tensor.shape[-1] if kind in _DOWN else tensor.shape[0]
        if expected is not None and got != expected:
            raise UserError(f"lora={lora.name!r} does not fit this model: {name} takes {in_features} -> "
                            f"{out_features} features but the LoRA has {tuple(tensor.shape)} for it; it was made for "
                            "another FLUX.1 variant or size.")


def _load(pipe, lora: LoraFile, state: dict, alphas, metadata) -> None:
    if any(key.startswith("transformer.") for key in state):
        # The transformer part without load_lora_weights' shape expansion (control LoRAs widen the input layer,
        # which would change the base model; check_fits refuses those) and its reading of the base state dict.
        # Loading reads the transformer's state dict for its keys only: quantized weights stay as stored.
        with state_dict_as_stored(pipe.transformer):
            pipe.load_lora_into_transformer(state, network_alphas=alphas, transformer=pipe.transformer,
                                            adapter_name=lora.adapter, metadata=metadata, _pipeline=pipe)
    if any(key.startswith("text_encoder.") for key in state):
        pipe.load_lora_into_text_encoder(state, network_alphas=alphas, text_encoder=pipe.text_encoder,
                                         prefix="text_encoder", lora_scale=pipe.lora_scale,
                                         adapter_name=lora.adapter, metadata=metadata, _pipeline=pipe)
    if lora.adapter not in {a for names in adapters_on(pipe).values() for a in names}:
        raise ValueError("none of its layers matched")
    _run_dtype(pipe.transformer, lora.adapter)


def _run_dtype(module, adapter: str) -> None:
    """The adapter's weights in the dtype the module runs in. peft makes them float32 over layers whose own weights
    are not floating (bitsandbytes int8), and a float32 LoRA beside a bfloat16 run costs a cast on every step."""
    from collections import Counter

    named = list(module.named_parameters())
    dtypes = Counter(p.dtype for name, p in named if p.is_floating_point() and ".lora_" not in name)
    if not dtypes:
        return
    dtype = dtypes.most_common(1)[0][0]
    for name, param in named:
        if f".{adapter}." in name and ".lora_" in name and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)


# ---- control LoRAs (Depth and Canny on the Dev transformer) ---------------------------------------------------

def read_control_lora(lora: LoraFile, pipe) -> tuple:
    """(state dict, alphas, metadata) of a FLUX.1 control LoRA, checked: its input layer takes twice the
    transformer's input width (the latents beside the packed control map)."""
    try:
        state, alphas, metadata = pipe.lora_state_dict(lora.path, return_alphas=True, return_lora_metadata=True)
    except Exception as error:
        raise UserError(f"control_lora={lora.name!r} is not a FLUX.1 control LoRA ({_short(error)}); use the "
                        "FLUX.1-Depth-dev-lora or FLUX.1-Canny-dev-lora file.") from None
    base = _base_embedder(pipe.transformer)[1]
    down = state.get("transformer.x_embedder.lora_A.weight")
    if down is None:
        raise UserError(f"control_lora={lora.name!r} is not a control LoRA (it does not adapt the transformer's input "
                        "layer x_embedder); give it as --lora, or use the FLUX.1-Depth-dev-lora or "
                        "FLUX.1-Canny-dev-lora file.")
    if down.shape[-1] != 2 * base:
        raise UserError(f"control_lora={lora.name!r} does not fit this model: its input layer takes {down.shape[-1]} "
                        f"features, this Dev transformer's control input takes {2 * base} (2 x {base}); it was made "
                        "for another FLUX.1 variant or size.")
    plain = {key: value for key, value in state.items()
             if not (key.startswith("transformer.") and key.split(".")[-2] in _CONTROL_NORMS)}
    try:
        check_fits(lora, {k: v for k, v in plain.items() if not k.startswith("transformer.x_embedder.")}, pipe)
    except UserError as error:
        raise UserError(str(error).replace("lora=", "control_lora=", 1)) from None
    return state, alphas, metadata


def _base_embedder(transformer) -> tuple:
    """(the transformer's own input layer, its in_features, config in_channels): what a control run widens."""
    saved = getattr(transformer, "_control_saved", None)
    if saved is not None:
        return saved
    layer = transformer.x_embedder
    return layer, layer.in_features, transformer.config.in_channels


def _plain_linear(layer):
    """``layer`` as a full-precision torch Linear: itself, or (quantized) its weights read back through it.

    diffusers widens only plain Linear layers; the input layer is small (64 -> 3072 on FLUX.1), so the widened copy
    is kept in full precision for the control run, and the quantized original comes back afterwards."""
    import torch

    weight = getattr(layer, "weight", None)
    if type(layer) is torch.nn.Linear and type(weight) is torch.nn.Parameter and type(weight.data) is torch.Tensor:
        return layer
    bias = getattr(layer, "bias", None)
    dtype = bias.dtype if bias is not None else torch.get_default_dtype()
    device = bias.device if bias is not None else next(layer.parameters()).device
    with torch.no_grad():
        eye = torch.eye(layer.in_features, dtype=dtype, device=device)
        out = layer(eye)
        if bias is not None:
            out = out - bias
        plain = torch.nn.Linear(layer.in_features, layer.out_features, bias=bias is not None, dtype=dtype,
                                device=device)
        plain.weight.copy_(out.T.to(dtype))
        if bias is not None:
            plain.bias.copy_(bias.detach().to(dtype))
    return plain


def apply_control_lora(loaded, control: LoraFile, loras: list[LoraFile]) -> None:
    """Make ``loaded``'s FluxControlPipeline (over a Dev transformer) run with the control LoRA and ``loras``.

    The files are read and checked first (a bad one leaves the model as it was). The transformer's input layer is
    widened for this run by diffusers' own helpers, the control LoRA's norms replace the transformer's (their
    values kept), and `release_control_lora` gives back the very same input layer, norms and shape."""
    pipe = loaded.pipe
    control_state = read_control_lora(control, pipe)
    read = [(lora, read_lora(lora, pipe)) for lora in loras]
    release_control_lora(pipe)
    remove_loras(pipe)
    loaded.lora_state = None
    transformer = pipe.transformer
    transformer._control_saved = _base_embedder(transformer)
    try:
        transformer.x_embedder = _plain_linear(transformer._control_saved[0])
        _load_control(pipe, control, *control_state)
        for lora, state in read:
            _load(pipe, lora, *state)
    except UserError:
        release_control_lora(pipe)
        raise
    except Exception as error:
        release_control_lora(pipe)
        raise UserError(f"control_lora={control.name!r} could not be applied to this model ({_short(error)}); use "
                        "the FLUX.1-Depth-dev-lora or FLUX.1-Canny-dev-lora file.") from None
    pipe.set_adapters([control.adapter] + [lora.adapter for lora in loras],
                      adapter_weights=[control.strength] + [lora.strength for lora in loras])


def _load_control(pipe, control: LoraFile, state: dict, alphas, metadata) -> None:
    """What diffusers' FluxLoraLoaderMixin.load_lora_weights does for a control LoRA, from the checked state."""
    transformer = pipe.transformer
    lora_state = {k: v for k, v in state.items() if k.startswith("transformer.") and "lora" in k}
    norm_state = {k: v for k, v in state.items()
                  if k.startswith("transformer.") and any(norm in k for norm in _CONTROL_NORMS)}
    # Only the input layer changes shape; the helpers read plain weights, so they are given its keys alone (the
    # other layers may be quantized, and keep their shapes).
    embedder = {k: v for k, v in lora_state.items() if k.startswith("transformer.x_embedder.")}
    pipe._maybe_expand_transformer_param_shape_or_error_(transformer, embedder, None)
    lora_state.update(pipe._maybe_expand_lora_state_dict(transformer=transformer, lora_state_dict=embedder))
    rest = {k: v for k, v in state.items() if k not in norm_state}
    rest.update(lora_state)
    with state_dict_as_stored(transformer):  # read for its keys only (see _load)
        pipe.load_lora_into_transformer(rest, network_alphas=alphas, transformer=transformer,
                                        adapter_name=control.adapter, metadata=metadata, _pipeline=pipe)
    if norm_state:
        transformer._transformer_norm_layers = pipe._load_norm_into_transformer(
            dict(norm_state), transformer=transformer, discard_original_layers=False)


def release_control_lora(pipe) -> None:
    """Undo `apply_control_lora`: adapters removed, norms and the transformer's own input layer and shape back."""
    transformer = pipe.transformer
    saved = getattr(transformer, "_control_saved", None)
    if saved is None:
        return
    device = next(transformer.x_embedder.parameters()).device  # where placement moved the transformer meanwhile
    pipe.unload_lora_weights(reset_to_overwritten_params=True)  # the norms too, and the config's in_channels
    layer, _, in_channels = saved
    if next(layer.parameters()).device != device:  # it was kept aside, so it did not move with the transformer
        layer.to(device)
    transformer.x_embedder = layer
    transformer.register_to_config(in_channels=in_channels)
    transformer._overwritten_params = None
    transformer._control_saved = None


def _short(error: Exception) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:160]}" + ("..." if len(text) > 160 else "")
