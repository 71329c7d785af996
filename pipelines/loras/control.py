"""Control LoRAs: Depth and Canny as a LoRA on the Dev transformer, whose input layer is widened for one run."""

from __future__ import annotations

from pathlib import Path

from quantization.registry import state_dict_as_stored

from ..errors import UserError
from ..models.hub import endpoint, from_hub
from ..models.sources import ModelSource
from .apply import CONTROL_NORMS, _load, _short, check_fits, read_lora, remove_loras, set_strengths, slots
from .files import LoraFile
from .tiny import tiny_control_lora


def control_lora_file(tool_source: ModelSource, tool) -> Path:
    """The default control LoRA of ``tool`` (Depth, Canny): the tiny family's own, or the official file."""
    if tool_source.is_tiny:
        return tiny_control_lora(tool)
    repo_id, filename = tool.control_lora
    from huggingface_hub import hf_hub_download

    return from_hub(lambda: Path(hf_hub_download(repo_id, filename, endpoint=endpoint())),
                    f"control LoRA {repo_id}/{filename}",
                    "pass a local file with --control-lora", repo_id)


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
             if not (key.startswith("transformer.") and key.split(".")[-2] in CONTROL_NORMS)}
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


CONTROL = "control"  # the control LoRA's adapter name (the others are named by their place: apply.slots)


def apply_control_lora(loaded, control: LoraFile, loras: list[LoraFile], before_change=None) -> None:
    """Make ``loaded``'s FluxControlPipeline (over a Dev transformer) run with the control LoRA and ``loras``.

    The files are read and checked first (a bad one leaves the model as it was). The transformer's input layer is
    widened for this run by diffusers' own helpers, the control LoRA's norms replace the transformer's (their
    values kept), and `release_control_lora` gives back the very same input layer, norms and shape.
    ``before_change()`` is called once the files are checked, before the model changes (offload hooks come off)."""
    pipe = loaded.pipe
    control_state = read_control_lora(control, pipe)
    read = [(lora, read_lora(lora, pipe)) for lora in loras]
    if before_change is not None:
        before_change()
    release_control_lora(pipe)
    remove_loras(pipe)
    loaded.lora_state = None
    transformer = pipe.transformer
    transformer._control_saved = _base_embedder(transformer)
    try:
        transformer.x_embedder = _plain_linear(transformer._control_saved[0])
        _load_control(pipe, control, *control_state)
        for name, (lora, state) in zip(slots(loras), read):
            _load(pipe, lora, *state, adapter=name)
    except UserError:
        release_control_lora(pipe)
        raise
    except Exception as error:
        release_control_lora(pipe)
        raise UserError(f"control_lora={control.name!r} could not be applied to this model ({_short(error)}); use "
                        "the FLUX.1-Depth-dev-lora or FLUX.1-Canny-dev-lora file.") from None
    set_strengths(pipe, [CONTROL] + slots(loras), [control.strength] + [lora.strength for lora in loras])


def _load_control(pipe, control: LoraFile, state: dict, alphas, metadata) -> None:
    """What diffusers' FluxLoraLoaderMixin.load_lora_weights does for a control LoRA, from the checked state."""
    transformer = pipe.transformer
    lora_state = {k: v for k, v in state.items() if k.startswith("transformer.") and "lora" in k}
    norm_state = {k: v for k, v in state.items()
                  if k.startswith("transformer.") and any(norm in k for norm in CONTROL_NORMS)}
    # Only the input layer changes shape; the helpers read plain weights, so they are given its keys alone (the
    # other layers may be quantized, and keep their shapes).
    embedder = {k: v for k, v in lora_state.items() if k.startswith("transformer.x_embedder.")}
    pipe._maybe_expand_transformer_param_shape_or_error_(transformer, embedder, None)
    lora_state.update(pipe._maybe_expand_lora_state_dict(transformer=transformer, lora_state_dict=embedder))
    rest = {k: v for k, v in state.items() if k not in norm_state}
    rest.update(lora_state)
    with state_dict_as_stored(transformer):  # read for its keys only (see _load)
        pipe.load_lora_into_transformer(rest, network_alphas=alphas, transformer=transformer,
                                        adapter_name=CONTROL, metadata=metadata)
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
