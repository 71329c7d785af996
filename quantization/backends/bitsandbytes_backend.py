"""bitsandbytes: NF4 (double quant) and LLM.int8 Linear layers; CUDA, and CPU where bnb runs there."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import BitsAndBytesConfig
from .base import Backend
from .common import (assign_state, load_state, missing, quantizable_linears, quantize_embeddings, restore_embeddings,
                     save_state, saving_with, set_submodule)


class BitsAndBytesBackend(Backend):
    name = "bitsandbytes"
    import_name = "bitsandbytes"

    def check(self, config, device):
        reason = missing("bitsandbytes", "bitsandbytes")
        if reason:
            return reason
        if device.type == "mps":
            return "bitsandbytes has no Apple MPS support (use quanto on Apple Silicon)"
        if device.type == "cpu":
            import bitsandbytes
            from packaging.version import Version

            if Version(bitsandbytes.__version__) < Version("0.45"):
                return f"bitsandbytes {bitsandbytes.__version__} has no CPU kernels (pip install 'bitsandbytes>=0.45')"
        return None

    def quantize(self, module, config, device, dtype):
        import bitsandbytes as bnb

        layers = quantizable_linears(module)
        if not layers:
            raise RuntimeError("no Linear layer to quantize")
        for name, linear in layers:
            set_submodule(module, name, _convert(bnb, linear, config, dtype, device))
        quantize_embeddings(module, dtype)
        return module.to(device)

    def is_quantized_layer(self, layer):
        import bitsandbytes as bnb

        return isinstance(layer, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))

    def state_dict_as_stored(self, module):
        """Reading a 4-bit layer's state dict converts a weight packed for the CPU kernel back, in place: the next run
        packs it again (time) with slightly different results. Inside, those layers give their tensors as they are."""
        import bitsandbytes as bnb

        return saving_with([m for m in module.modules() if isinstance(m, bnb.nn.Linear4bit)
                            and getattr(getattr(m.weight, "quant_state", None), "packing_format_for_cpu", False)],
                           _packed_save)

    can_serialize = True
    library = "bitsandbytes"

    def save(self, module, path):
        return [save_state(module.state_dict(), path)]  # packed weights plus each layer's quantization state

    def load(self, skeleton, path, config, device, dtype):
        state, _ = load_state(path)
        restore_embeddings(skeleton, state)
        return load_layers(skeleton, state, dtype).to(device)


def load_checkpoint(skeleton: torch.nn.Module, folder, quantization_config: dict, device: torch.device,
                    dtype: torch.dtype) -> torch.nn.Module:
    """A diffusers or transformers folder saved with a bitsandbytes ``quantization_config``, read without their
    loaders (diffusers' refuses to run without a GPU); the layers' saved format is bitsandbytes' own."""
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {folder}")
    state = {}
    for file in files:
        state.update({name: tensor.clone() for name, tensor in load_file(str(file)).items()})
    compute = quantization_config.get("bnb_4bit_compute_dtype")
    compute = getattr(torch, compute) if isinstance(compute, str) and hasattr(torch, compute) else dtype
    threshold = float(quantization_config.get("llm_int8_threshold", 6.0))
    return load_layers(skeleton, state, compute, threshold).to(device)


def load_layers(skeleton: torch.nn.Module, state: dict[str, torch.Tensor], compute_dtype: torch.dtype,
                threshold: float = 6.0) -> torch.nn.Module:
    """Fill ``skeleton`` (meta device) from a state dict saved from bitsandbytes layers: each Linear whose weight
    carries a 4-bit quantization state becomes Linear4bit, each with an ``SCB`` entry Linear8bitLt."""
    import bitsandbytes as bnb

    four = {key.split(".weight.quant_state.")[0] for key in state if ".weight.quant_state.bitsandbytes__" in key}
    eight = {key[:-len(".SCB")] for key in state if key.endswith(".SCB")}
    done = []
    for name in sorted(four | eight):
        linear = skeleton.get_submodule(name)
        if not isinstance(linear, torch.nn.Linear):
            raise ValueError(f"{name} holds quantized weights but is not a Linear layer")
        has_bias = linear.bias is not None
        weight = state.pop(f"{name}.weight")
        if name in four:
            prefix = f"{name}.weight."
            stats = {key[len(prefix):]: state.pop(key) for key in [k for k in state if k.startswith(prefix)]}
            new = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias, compute_dtype=compute_dtype,
                                    quant_storage=weight.dtype, device="meta")
            new.weight = bnb.nn.Params4bit.from_prequantized(weight, stats, requires_grad=False, device="cpu",
                                                             module=new)
        else:
            state.pop(f"{name}.weight_format", None)
            new = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False,
                                      threshold=threshold, device="meta")
            new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
            new.weight.CB, new.weight.SCB = new.weight.data, state.pop(f"{name}.SCB")
        set_submodule(skeleton, name, new)
        done.append(f"{name}.weight")
    return assign_state(skeleton, state, done)


def _convert(bnb, linear: torch.nn.Linear, config: BitsAndBytesConfig, dtype: torch.dtype, device: torch.device):
    has_bias = linear.bias is not None
    weight = linear.weight.data
    if config.quant_type == "nf4":
        # Packed into `dtype` storage rather than uint8: T5 casts its activations to `wo.weight.dtype` before `wo`,
        # which with uint8 storage turns them into bytes.
        new = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias, compute_dtype=dtype,
                                compress_statistics=config.double_quant, quant_type="nf4", quant_storage=dtype,
                                device="meta")
        new.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=config.double_quant,
                                       quant_type="nf4", quant_storage=dtype)
    else:
        new = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False,
                                  threshold=6.0, device="meta")
        new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    if has_bias:
        new.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    return new.to(device)  # bitsandbytes quantizes on this move


def _packed_save(layer: torch.nn.Module, destination: dict, prefix: str, keep_vars: bool) -> None:
    """A 4-bit layer's weight (packed for the CPU kernel), bias and quantization state, as they are."""
    torch.nn.Module._save_to_state_dict(layer, destination, prefix, keep_vars)
    for key, value in layer.weight.quant_state.as_dict(packed=True).items():
        destination[prefix + "weight." + key] = value if keep_vars else value.detach()
