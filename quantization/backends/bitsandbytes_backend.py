"""bitsandbytes: NF4 (double quant) and LLM.int8 Linear layers; CUDA, and CPU where bnb runs there.

The layers are this module's own two small Linear classes over bitsandbytes' kernels (``bnb.matmul``,
``bnb.matmul_4bit``). bitsandbytes' Linear8bitLt and Linear4bit keep tensors beside their registered ones (``CB`` and
``SCB`` on the weight and on a state object, the NF4 statistics on a QuantState object): a parent module's ``.to()``,
accelerate's offload hooks and diffusers' group offloading move the registered tensors only, so those copies stayed
behind (or could not be rebuilt at all). Here every tensor a layer computes with is a registered parameter or buffer,
and bitsandbytes' state objects are made from them for each call: wherever the layer is moved, all of it goes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import BitsAndBytesConfig
from .base import Backend
from .common import (assign_state, load_state, missing, quantizable_linears, quantize_embeddings, restore_embeddings,
                     save_state, set_submodule)

BLOCKSIZE = 64  # NF4 block size (bitsandbytes' default for Linear4bit)
NESTED = ("nested_absmax", "nested_quant_map", "nested_offset")  # double quantization's statistics
LAYOUTS = "bitsandbytes_layouts"  # metadata: {layer: what rebuilds it} (the cache's safetensors metadata)


class Int8Linear(torch.nn.Linear):
    """LLM.int8: the int8 weight (``weight``) and its per-row scales (``SCB``, float32) are this layer's own tensors;
    bitsandbytes' matmul state is made from them for each call."""

    def __init__(self, in_features: int, out_features: int, bias: bool, threshold: float = 6.0,
                 device=None, dtype: torch.dtype = torch.bfloat16):
        super().__init__(in_features, out_features, bias=bias, device="meta", dtype=dtype)
        self.weight = torch.nn.Parameter(torch.empty(out_features, in_features, dtype=torch.int8, device=device),
                                         requires_grad=False)
        if bias:
            self.bias = torch.nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False)
        self.register_buffer("SCB", torch.empty(out_features, dtype=torch.float32, device=device))
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import bitsandbytes as bnb

        state = bnb.MatmulLtState()
        state.threshold, state.has_fp16_weights, state.is_training = self.threshold, False, False
        state.CB, state.SCB = self.weight, self.SCB
        bias = self.bias if self.bias is None or self.bias.dtype == x.dtype else self.bias.to(x.dtype)
        return bnb.matmul(x, self.weight, bias=bias, state=state)

    def layout(self) -> dict:
        return {"kind": "int8", "threshold": self.threshold}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, int8 (bitsandbytes)"


class NF4Linear(torch.nn.Linear):
    """NF4 with double quantization: the packed 4-bit weight (``weight``, stored in the run's dtype so that code reading
    a layer's dtype, as T5 does, sees a float), the block scales (``absmax``) and the NF4 code (``quant_map``), and the
    scales' own quantization (``nested_*``) are this layer's tensors; bitsandbytes' QuantState is made from them for
    each call. The 4-bit layout is bitsandbytes' portable one (the same on every device)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, layout: dict, device=None,
                 compute_dtype: torch.dtype = torch.bfloat16):
        super().__init__(in_features, out_features, bias=bias, device="meta", dtype=compute_dtype)
        self.compute_dtype = compute_dtype
        self.quant = dict(layout)  # shape, blocksize, quant_type, dtype, storage, stored, nested_blocksize, nested_dtype
        storage = getattr(torch, self.quant["storage"])
        self.weight = torch.nn.Parameter(torch.empty(self.quant["stored"], dtype=storage, device=device),
                                         requires_grad=False)
        if bias:
            self.bias = torch.nn.Parameter(torch.empty(out_features, dtype=compute_dtype, device=device),
                                           requires_grad=False)
        blocks = -(-in_features * out_features // self.quant["blocksize"])  # rounded up, as bitsandbytes does
        nested = "nested_blocksize" in self.quant
        self.register_buffer("absmax", torch.empty(blocks, dtype=torch.uint8 if nested else torch.float32,
                                                   device=device))
        self.register_buffer("quant_map", torch.empty(16, dtype=torch.float32, device=device))
        if nested:
            self.register_buffer("nested_absmax", torch.empty(-(-blocks // self.quant["nested_blocksize"]),
                                                              dtype=torch.float32, device=device))
            self.register_buffer("nested_quant_map", torch.empty(256, dtype=torch.float32, device=device))
            self.register_buffer("nested_offset", torch.empty((), dtype=torch.float32, device=device))

    @classmethod
    def from_quant_state(cls, packed: torch.Tensor, state, bias: torch.Tensor | None,
                         compute_dtype: torch.dtype) -> "NF4Linear":
        """The layer holding ``packed`` and bitsandbytes' QuantState ``state`` (``packed``'s device)."""
        layout = {"shape": list(state.shape), "blocksize": state.blocksize, "quant_type": state.quant_type,
                  "dtype": str(state.dtype).replace("torch.", ""), "storage": str(packed.dtype).replace("torch.", ""),
                  "stored": list(packed.shape)}
        if state.nested:
            layout.update(nested_blocksize=state.state2.blocksize,
                          nested_dtype=str(state.state2.dtype).replace("torch.", ""))
        out_features, in_features = state.shape
        layer = cls(in_features, out_features, bias is not None, layout, device="meta", compute_dtype=compute_dtype)
        layer.weight = torch.nn.Parameter(packed, requires_grad=False)
        if bias is not None:
            layer.bias = torch.nn.Parameter(bias, requires_grad=False)
        layer.absmax, layer.quant_map = state.absmax, state.code
        if state.nested:
            layer.nested_absmax, layer.nested_quant_map = state.state2.absmax, state.state2.code
            layer.nested_offset = torch.as_tensor(state.offset, dtype=torch.float32, device=packed.device)
        return layer

    def quant_state(self):
        """bitsandbytes' QuantState over this layer's tensors, where they are now."""
        from bitsandbytes.functional import QuantState

        q = self.quant
        state2 = None
        if "nested_blocksize" in q:
            state2 = QuantState(absmax=self.nested_absmax, code=self.nested_quant_map, blocksize=q["nested_blocksize"],
                                dtype=getattr(torch, q["nested_dtype"]))
        return QuantState(absmax=self.absmax, shape=torch.Size(q["shape"]), code=self.quant_map,
                          blocksize=q["blocksize"], quant_type=q["quant_type"], dtype=getattr(torch, q["dtype"]),
                          offset=self.nested_offset if state2 is not None else None, state2=state2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import bitsandbytes as bnb

        dtype = x.dtype
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        out = bnb.matmul_4bit(x.to(self.compute_dtype), self.weight, bias=bias, quant_state=self.quant_state())
        return out.to(dtype)

    def layout(self) -> dict:
        return {"kind": "nf4", **self.quant}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.quant['quant_type']} (bitsandbytes)"


LAYERS = (Int8Linear, NF4Linear)


def device_refusal(config, device, version: str | None = None) -> str | None:
    """Why bitsandbytes cannot run ``config`` on ``device`` with bitsandbytes ``version`` (default: the installed
    one), or None: its CPU kernels came with 0.45, its Apple MPS ones (4-bit only) with 0.50."""
    from packaging.version import Version

    if device.type not in ("cpu", "mps"):
        return None
    if version is None:
        import bitsandbytes

        version = bitsandbytes.__version__
    if device.type == "cpu" and Version(version) < Version("0.45"):
        return f"bitsandbytes {version} has no CPU kernels (pip install 'bitsandbytes>=0.45')"
    if device.type == "mps" and Version(version) < Version("0.50"):
        return f"bitsandbytes {version} has no Apple MPS kernels (pip install 'bitsandbytes>=0.50', macOS 14+)"
    if device.type == "mps" and config.bits != 4:
        return f"bitsandbytes runs only 4-bit (nf4) on Apple MPS, not {config.format}"
    return None


class BitsAndBytesBackend(Backend):
    name = "bitsandbytes"
    import_name = "bitsandbytes"

    def check(self, config, device):
        reason = missing("bitsandbytes", "bitsandbytes")
        if reason:
            return reason
        return device_refusal(config, device)

    def quantize(self, module, config, device, dtype):
        layers = quantizable_linears(module)
        if not layers:
            raise RuntimeError("no Linear layer to quantize")
        for name, linear in layers:  # one layer at a time on the device: it never holds the full-precision model
            set_submodule(module, name, _convert(linear, config, dtype, device))
        quantize_embeddings(module, dtype)
        return module.to(device)

    def is_quantized_layer(self, layer):
        return isinstance(layer, LAYERS)

    can_serialize = True
    library = "bitsandbytes"

    def save(self, module, path):
        layouts = {name: layer.layout() for name, layer in module.named_modules() if isinstance(layer, LAYERS)}
        return [save_state(module.state_dict(), path, {LAYOUTS: json.dumps(layouts)})]

    def load(self, skeleton, path, config, device, dtype):
        state, metadata = load_state(path)
        restore_embeddings(skeleton, state)
        for name, layout in json.loads(metadata.get(LAYOUTS, "{}")).items():
            set_submodule(skeleton, name, _empty_layer(skeleton.get_submodule(name), layout, dtype))
        return assign_state(skeleton, state).to(device)


def _empty_layer(linear: torch.nn.Module, layout: dict, dtype: torch.dtype) -> torch.nn.Module:
    """The quantized layer ``layout`` describes, in place of ``linear`` (meta device), its tensors still empty."""
    if not isinstance(linear, torch.nn.Linear):
        raise ValueError(f"{type(linear).__name__} holds quantized weights but is not a Linear layer")
    has_bias = linear.bias is not None
    if layout["kind"] == "int8":
        return Int8Linear(linear.in_features, linear.out_features, has_bias, layout["threshold"], device="meta",
                          dtype=dtype)
    return NF4Linear(linear.in_features, linear.out_features, has_bias,
                     {k: v for k, v in layout.items() if k != "kind"}, device="meta", compute_dtype=dtype)


def _convert(linear: torch.nn.Linear, config: BitsAndBytesConfig, dtype: torch.dtype, device: torch.device):
    """``linear`` quantized on ``device`` into an Int8Linear or NF4Linear."""
    import bitsandbytes.functional as F

    weight = linear.weight.data.to(device)
    bias = None if linear.bias is None else linear.bias.data.to(device=device, dtype=dtype)
    if config.quant_type == "nf4":
        # Packed into `dtype` storage rather than uint8: T5 casts its activations to `wo.weight.dtype` before `wo`,
        # which with uint8 storage turns them into bytes.
        packed, state = F.quantize_4bit(weight.to(dtype), blocksize=BLOCKSIZE, compress_statistics=config.double_quant,
                                        quant_type="nf4", quant_storage=dtype)
        return NF4Linear.from_quant_state(packed, state, bias, dtype)
    layer = Int8Linear(linear.in_features, linear.out_features, bias is not None, device="meta", dtype=dtype)
    rows, scales, _ = F.int8_vectorwise_quant(weight.to(torch.float16))  # as bitsandbytes' Int8Params quantizes
    layer.weight = torch.nn.Parameter(rows, requires_grad=False)
    layer.SCB = scales
    if bias is not None:
        layer.bias = torch.nn.Parameter(bias, requires_grad=False)
    return layer


def adopt_layers(module: torch.nn.Module, compute_dtype: torch.dtype) -> int:
    """Replace bitsandbytes' own Linear4bit and Linear8bitLt layers (as diffusers' and transformers' loaders make
    them) by this module's, over the very same tensors; returns how many were replaced."""
    import bitsandbytes as bnb

    replaced = 0
    for name, layer in list(module.named_modules()):
        if isinstance(layer, bnb.nn.Linear4bit):
            state = layer.weight.quant_state or layer.quant_state
            new = NF4Linear.from_quant_state(layer.weight.data, state, None if layer.bias is None else layer.bias.data,
                                             layer.compute_dtype or compute_dtype)
        elif isinstance(layer, bnb.nn.Linear8bitLt):
            scales = layer.weight.SCB if layer.weight.SCB is not None else layer.state.SCB
            new = Int8Linear(layer.in_features, layer.out_features, layer.bias is not None, layer.state.threshold,
                             device="meta", dtype=compute_dtype)
            new.weight = torch.nn.Parameter(layer.weight.data, requires_grad=False)
            new.SCB = scales
            if layer.bias is not None:
                new.bias = torch.nn.Parameter(layer.bias.data, requires_grad=False)
        else:
            continue
        set_submodule(module, name, new)
        replaced += 1
    return replaced


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
    """Fill ``skeleton`` (meta device) from a state dict in bitsandbytes' own format: each Linear whose weight carries
    a 4-bit quantization state becomes an NF4Linear, each with an ``SCB`` entry an Int8Linear."""
    from bitsandbytes.functional import QuantState

    four = {key.split(".weight.quant_state.")[0] for key in state if ".weight.quant_state.bitsandbytes__" in key}
    eight = {key[:-len(".SCB")] for key in state if key.endswith(".SCB")}
    done = sorted(four | eight)
    for name in done:
        linear = skeleton.get_submodule(name)
        if not isinstance(linear, torch.nn.Linear):
            raise ValueError(f"{name} holds quantized weights but is not a Linear layer")
        weight = state.pop(f"{name}.weight")
        bias = state.pop(f"{name}.bias", None)
        if name in four:
            prefix = f"{name}.weight."
            stats = {key[len(prefix):]: state.pop(key) for key in [k for k in state if k.startswith(prefix)]}
            new = NF4Linear.from_quant_state(weight, QuantState.from_dict(stats, device=weight.device), bias,
                                             compute_dtype)
        else:
            state.pop(f"{name}.weight_format", None)
            new = Int8Linear(linear.in_features, linear.out_features, bias is not None, threshold, device="meta",
                             dtype=compute_dtype)
            new.weight = torch.nn.Parameter(weight, requires_grad=False)
            new.SCB = state.pop(f"{name}.SCB")
            if bias is not None:
                new.bias = torch.nn.Parameter(bias.to(compute_dtype), requires_grad=False)
        set_submodule(skeleton, name, new)
    return assign_state(skeleton, state, already_set=done)
