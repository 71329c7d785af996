"""LoRAs applied to a loaded pipeline as runtime (peft) adapters over its layers.

Files in the formats people have (diffusers/PEFT, kohya sd-scripts and ai-toolkit, XLabs, BFL) are read through
diffusers' own converters (FluxLoraLoaderMixin.lora_state_dict; for FLUX.2 [klein], Flux2LoraLoaderMixin's: diffusers/
PEFT, BFL/ComfyUI and kohya files) and loaded into the transformer and, where the file has them, the CLIP text
encoder (FLUX.1). The adapters sit over the layers as they are: a quantized layer stays quantized (peft
wraps bitsandbytes, torchao and quanto layers), nothing is de-quantized, re-loaded or re-quantized, and removing the
adapters gives back the very same modules.
"""

from __future__ import annotations

import inspect
import re

from quantization.registry import state_dict_as_stored

from ..errors import UserError
from ..families import family_of
from .files import FORMATS_TEXT, LoraFile, without_paths

ADAPTED = ("transformer", "text_encoder")  # the pipeline components a FLUX.1 LoRA may adapt
# Adapters are named by their place in the request (lora0, lora1, ...), not by file: a compiled transformer guards on
# adapter names, so new names would compile it again for every file; with these, a switch among files of the same
# shape runs the graphs already compiled. Which file sits in which place is recorded (LoadedPipeline.lora_state).
SLOT = "lora{}"
# <module>.<down|up>[.<adapter>].weight, as the converters leave the keys
_LORA_KEY = re.compile(r"(.+?)\.(lora_A|lora_B|lora_down|lora_up|lora\.down|lora\.up)(?:\.[^.]+)?\.weight$")
_DOWN = {"lora_A", "lora_down", "lora.down"}
CONTROL_NORMS = ("norm_q", "norm_k", "norm_added_q", "norm_added_k")  # what control LoRAs also replace


def adapters_on(pipe) -> dict[str, tuple]:
    """Adapters present in each adapted component of ``pipe`` (as the modules themselves record them)."""
    found = {}
    for name in ADAPTED:
        config = getattr(getattr(pipe, name, None), "peft_config", None)
        if config:
            found[name] = tuple(sorted(config))
    return found


def slots(loras: list[LoraFile]) -> list[str]:
    """The adapter names of ``loras``, by their place in the request."""
    return [SLOT.format(index) for index in range(len(loras))]


def apply_loras(loaded, loras: list[LoraFile], before_change=None) -> None:
    """Make ``loaded``'s pipeline run with exactly ``loras`` at their strengths.

    The same files in the same places as last time only change strengths (which changes no compiled graph: the
    strengths are tensors). Another set is read and checked in full first (a bad file leaves the model as it was),
    then ``before_change()`` is called (offload hooks come off: adapters are added to the layers as they are), the old
    adapters are removed and the new ones loaded; a failure while loading removes them all, so the next run starts
    clean. Components shared with other pipelines (CLIP) are compared with what this pipeline left on them, so a
    change made through another pipeline is seen.
    """
    pipe = loaded.pipe
    if loras and not hasattr(pipe, "load_lora_into_transformer"):
        raise UserError(f"loras: {type(pipe).__name__} does not take LoRAs; run this tool without them.")
    names = slots(loras)
    wanted = tuple(zip(names, (lora.sha256 for lora in loras)))
    present = adapters_on(pipe)
    if not loras and not present:
        loaded.lora_state = ((), {})
        return
    if loaded.lora_state != (wanted, present):
        read = [(lora, read_lora(lora, pipe)) for lora in loras]
        if before_change is not None:
            before_change()
        remove_loras(pipe)
        loaded.lora_state = None
        for name, (lora, state) in zip(names, read):
            try:
                _load(pipe, lora, *state, adapter=name)
            except Exception as error:
                remove_loras(pipe)
                raise UserError(f"lora={lora.name!r} could not be applied to this model ({_short(error)}); it was "
                                f"trained for another {_title(pipe)} variant, or the file is damaged.") from None
        loaded.lora_state = (wanted, adapters_on(pipe))
    if loras:
        set_strengths(pipe, names, [lora.strength for lora in loras])


def set_strengths(pipe, names: list[str], strengths: list[float]) -> None:
    """Activate adapters ``names`` at ``strengths``, each strength held as a tensor: torch.compile guards on a
    Python number (a new strength would compile again) but not on a tensor's value."""
    import torch
    from peft.tuners.lora import LoraLayer

    pipe.set_adapters(names, adapter_weights=strengths)
    for component in ADAPTED:
        module = getattr(pipe, component, None)
        if module is None:
            continue
        for layer in module.modules():
            if isinstance(layer, LoraLayer):
                for name, value in layer.scaling.items():
                    if not isinstance(value, torch.Tensor):
                        layer.scaling[name] = torch.tensor(float(value), dtype=torch.float32)


def nonfinite(loras: list[LoraFile]) -> list[LoraFile]:
    """The files among ``loras`` that hold NaN or infinite weights (read from the files, not the model)."""
    import torch
    from safetensors import safe_open

    bad = []
    for lora in loras:
        with safe_open(lora.path, framework="pt") as handle:
            if any(not torch.isfinite(handle.get_tensor(key).float()).all() for key in handle.keys()):
                bad.append(lora)
    return bad


def remove_loras(pipe) -> None:
    """Remove every adapter: the layers are the original modules again (quantized ones included)."""
    if adapters_on(pipe):
        pipe.unload_lora_weights()


def text_encoder_adapters(pipe, loras: list[LoraFile]) -> tuple:
    """(file sha256, strength) of the LoRAs that adapt a text encoder: part of the prompt-embedding cache key."""
    present = set(adapters_on(pipe).get("text_encoder", ()))
    return tuple((lora.sha256, lora.strength) for name, lora in zip(slots(loras), loras) if name in present)


def _title(pipe) -> str:
    """'FLUX.1' or 'FLUX.2' (klein): the family of ``pipe``, as the messages name it."""
    return family_of(type(pipe).__name__).title


def _takes_alphas(pipe) -> bool:
    """Whether ``pipe``'s loader passes network alphas on (FLUX.1's does; FLUX.2's converters fold them in)."""
    return "network_alphas" in inspect.signature(pipe.load_lora_into_transformer).parameters


def read_lora(lora: LoraFile, pipe) -> tuple:
    """(state dict, alphas, metadata) in diffusers' naming, checked against ``pipe``'s modules."""
    title = _title(pipe)
    try:
        if _takes_alphas(pipe):
            state, alphas, metadata = pipe.lora_state_dict(lora.path, return_alphas=True, return_lora_metadata=True)
        else:
            (state, metadata), alphas = pipe.lora_state_dict(lora.path, return_lora_metadata=True), None
    except Exception as error:
        raise UserError(f"lora={lora.name!r} is not a LoRA for {title} ({_short(error)}); use a {title} LoRA in "
                        f"{FORMATS_TEXT}.") from None
    check_fits(lora, state, pipe)
    return state, alphas, metadata


def check_fits(lora: LoraFile, state: dict, pipe) -> None:
    """Every key is for a component of the pipeline's family, names a layer the transformer has, with the layer's
    shapes."""
    title = _title(pipe)
    foreign = [key for key in state if key.split(".", 1)[0] not in ADAPTED]
    if foreign or not state:
        example = f" (keys like {foreign[0]!r})" if foreign else " (no weights)"
        raise UserError(f"lora={lora.name!r} is not a LoRA for {title}{example}: it is for another model family "
                        f"(SD 1.5, SDXL, ...); use a {title} LoRA in {FORMATS_TEXT}.")
    modules = dict(pipe.transformer.named_modules())
    embedder = getattr(modules.get("x_embedder"), "in_features", None)
    for key, tensor in state.items():
        parts = key.split(".")
        widens = (len(parts) > 2 and parts[1] == "x_embedder" and parts[2] in _DOWN and embedder is not None
                  and tensor.shape[-1] != embedder)
        if (len(parts) > 2 and parts[0] == "transformer" and parts[-2] in CONTROL_NORMS) or widens:
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
            raise UserError(f"lora={lora.name!r} adapts {name!r}, which this {title} transformer does not have; "
                            "it was made for another model.")
        in_features, out_features = getattr(module, "in_features", None), getattr(module, "out_features", None)
        expected = in_features if kind in _DOWN else out_features
        got = tensor.shape[-1] if kind in _DOWN else tensor.shape[0]
        if expected is not None and got != expected:
            raise UserError(f"lora={lora.name!r} does not fit this model: {name} takes {in_features} -> "
                            f"{out_features} features but the LoRA has {tuple(tensor.shape)} for it; it was made for "
                            f"another {title} variant or size.")


def _load(pipe, lora: LoraFile, state: dict, alphas, metadata, adapter: str) -> None:
    """Load ``lora``'s checked ``state`` as adapter ``adapter``. Offload hooks are off by now (the caller's
    before_change): ``_pipeline`` is not passed, so diffusers does not put any back on its own."""
    if any(key.startswith("transformer.") for key in state):
        # The transformer part without load_lora_weights' shape expansion (control LoRAs widen the input layer,
        # which would change the base model; check_fits refuses those) and its reading of the base state dict.
        # Loading reads the transformer's state dict for its keys only: quantized weights stay as stored.
        alphas_arg = {"network_alphas": alphas} if _takes_alphas(pipe) else {}
        with state_dict_as_stored(pipe.transformer):
            pipe.load_lora_into_transformer(state, transformer=pipe.transformer, adapter_name=adapter,
                                            metadata=metadata, **alphas_arg)
    if any(key.startswith("text_encoder.") for key in state):
        pipe.load_lora_into_text_encoder(state, network_alphas=alphas, text_encoder=pipe.text_encoder,
                                         prefix="text_encoder", lora_scale=pipe.lora_scale,
                                         adapter_name=adapter, metadata=metadata)
    if adapter not in {a for names in adapters_on(pipe).values() for a in names}:
        raise ValueError("none of its layers matched")
    _run_dtype(pipe.transformer, adapter)


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


def _short(error: Exception) -> str:
    text = without_paths(" ".join(str(error).split()))  # the library names the file by its path
    return f"{type(error).__name__}: {text[:160]}" + ("..." if len(text) > 160 else "")
