"""optimum-quanto: qint8 / qint4 weights on CPU, MPS and CUDA (kept behind this module)."""

from __future__ import annotations

import functools
import json

import torch

from .base import Backend
from .common import (MIN_IN_FEATURES, assign_state, load_state, missing, quantizable_linears, quantize_embeddings,
                     restore_embeddings, save_state, saving_with)


# quanto's own state_dict unpacks its int4 TinyGemm layout (~9M weights/s on a 2-core CPU) and loading packs it
# again; these layers are saved as they are in memory instead, under these names beside the layer's other tensors.
PACKED = "weight.tinygemm_packed"  # the kernel's int4 data (as torch's int4pack conversion made it)
SCALE_SHIFT = "weight.tinygemm_scale_shift"  # scale and shift, (in / group, out, 2)
TINYGEMM = "tinygemm"  # metadata: {layer: {"qtype", "group_size", "size", "stride", "packed_size", "packed_stride"}}


class QuantoBackend(Backend):
    name = "quanto"
    import_name = "optimum.quanto"

    def check(self, config, device):
        return missing("optimum.quanto", "optimum-quanto")

    def prepare_probe(self):
        # optimum.quanto imports its transformers and diffusers model wrappers (optimum.quanto.models: ~4 s on a
        # 2-core CPU, most of a probe child's life); quantizing a Linear does not use them, so the child gets an
        # empty stand-in for that package.
        import sys
        import types

        if "optimum.quanto" not in sys.modules:
            sys.modules.setdefault("optimum.quanto.models", types.ModuleType("optimum.quanto.models"))
        self.prepare()

    def quantize(self, module, config, device, dtype):
        from optimum.quanto import qint4, qint8, quantize
        from optimum.quanto.nn import QModuleMixin

        weights = qint8 if config.weights == "int8" else qint4
        skip = [name for name, child in module.named_modules()
                if isinstance(child, torch.nn.Linear) and child.in_features < MIN_IN_FEATURES]
        include = [name for name, _ in quantizable_linears(module)]
        if not include:
            raise RuntimeError("no Linear layer to quantize")
        quantize(module, weights=weights, include=include, exclude=skip or None)
        # Each layer is quantized on the device it will run on, one at a time: int4 weights are packed in that
        # device's own layout there, never packed for the CPU and converted on the way.
        for layer in [m for m in module.modules() if isinstance(m, QModuleMixin)]:
            layer.to(device)
            layer.freeze()
            keep_packed(layer, device)
        contiguous_inputs(module)
        quantize_embeddings(module, dtype)
        return module.to(device)

    def offload_refusal(self, config, offload):
        if offload in ("block", "sequential"):
            return (f"quanto {config.format} weights are tensor subclasses, which {offload} offload cannot move "
                    "(accelerate and diffusers move each registered tensor on its own); use model offload, or "
                    "bitsandbytes or torchao")
        return None

    def is_quantized_layer(self, layer):
        from optimum.quanto.nn import QLinear

        return isinstance(layer, QLinear)

    def state_dict_as_stored(self, module):
        """Each int4 TinyGemm layer's state dict as in the cache (packed data, scale and shift; see _state) while
        inside: quanto's own unpacks every int4 weight, minutes for a FLUX transformer on a CPU."""
        return saving_with([m for m in module.modules() if _is_tinygemm(m._parameters.get("weight"))], _packed_save)

    can_serialize = True
    library = "optimum-quanto"

    def save(self, module, path):
        from optimum.quanto import quantization_map

        state, layouts = _state(module)
        return [save_state(state, path, {"quantization_map": json.dumps(quantization_map(module)),
                                         TINYGEMM: json.dumps(layouts)})]

    def state_keys(self, module):
        return sorted(_state(module)[0])

    def load(self, skeleton, path, config, device, dtype):
        from optimum.quanto import quantize

        state, metadata = load_state(path)
        groups: dict[tuple[str, str], list[str]] = {}
        for name, entry in json.loads(metadata["quantization_map"]).items():
            groups.setdefault((entry["weights"], entry["activations"]), []).append(name)
        for (weights, activations), names in groups.items():  # QLinear layers, still empty (meta)
            quantize(skeleton, weights=None if weights == "none" else weights,
                     activations=None if activations == "none" else activations, include=names)
        layouts = json.loads(metadata.get(TINYGEMM, "{}"))
        for name, layout in layouts.items():
            _set_tinygemm(skeleton.get_submodule(name), state, f"{name}.", layout, device)
        restore_embeddings(skeleton, state)
        module = assign_state(skeleton, state, already_set=[f"{name}.weight" for name in layouts]).to(device)
        for name in layouts:
            keep_packed(module.get_submodule(name), device)
        contiguous_inputs(module)
        return module


def _contiguous(_layer, args):
    first = args[0]
    return None if first.is_contiguous() else (first.contiguous(), *args[1:])


_contiguous.restored_by_backend = True  # restore() installs it again: the quantized-weights store may save the module


def contiguous_inputs(module: torch.nn.Module) -> None:
    """Each quanto layer gets its input contiguous: quanto's CPU int8 kernel (torch._weight_int8pack_mm) refuses an
    input whose last dimension is strided, as FLUX.2's packed latents are (a permuted view) when they reach the
    transformer's first layer. A no-op for inputs that are contiguous already."""
    from optimum.quanto.nn import QModuleMixin

    for layer in module.modules():
        if isinstance(layer, QModuleMixin) and not getattr(layer, "_contiguous_inputs", False):
            layer.register_forward_pre_hook(_contiguous)
            layer._contiguous_inputs = True


def _is_tinygemm(tensor) -> bool:
    return type(tensor).__name__ == "TinyGemmWeightQBitsTensor"


def keep_packed(layer: torch.nn.Module, device: torch.device) -> None:
    """Make ``layer``, when its weight is in torch's TinyGemm int4 layout (packed for ``device``'s type), a
    PackedInt4Linear: it moves its packed bytes as they are."""
    if _is_tinygemm(layer._parameters.get("weight")):
        layer.__class__ = _packed_int4_linear()
        layer.packed_for = torch.device(device).type


@functools.cache
def _packed_int4_linear() -> type:
    from optimum.quanto.nn import QLinear
    from optimum.quanto.tensor.weights.tinygemm import TinyGemmPackedTensor, TinyGemmWeightQBitsTensor

    class PackedInt4Linear(QLinear):
        """A quanto qint4 layer whose weight is in torch's TinyGemm layout, which is specific to a device type (the
        CPU's or CUDA's). quanto moves such a weight to another device type by unpacking it and packing it again (a
        matrix product per layer: minutes for a 12B model on a CPU), and fails to move it within one (cuda:0 to
        cuda:1). This layer moves its packed bytes as they are, so that it can wait in CPU memory (placement,
        offload) and come back unchanged; it computes only on the device type it was packed for (``packed_for``) and
        says so anywhere else."""

        packed_for = "cpu"

        def _apply(self, fn, recurse=True):
            weight = self._parameters.get("weight")
            probe = fn(torch.zeros((), dtype=torch.bfloat16, device=weight.device))
            if probe.dtype != torch.bfloat16:
                return super()._apply(fn, recurse)  # a cast, not a move: quanto's own rules (it refuses them)
            device = probe.device
            packed = weight._data
            moved = TinyGemmWeightQBitsTensor(
                weight.qtype, weight.axis, weight._group_size, weight.size(), weight.stride(),
                TinyGemmPackedTensor(packed._data.to(device), packed.size(), packed.stride()),
                weight._scale_shift.to(device))
            del self._parameters["weight"]
            try:
                super()._apply(fn, recurse)  # bias and scales
            finally:
                self._parameters["weight"] = weight
            self._parameters["weight"] = torch.nn.Parameter(moved, requires_grad=weight.requires_grad)
            return self

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            if input.device.type != self.packed_for:
                raise RuntimeError(f"this int4 layer is packed for {self.packed_for} and cannot compute on "
                                   f"{input.device.type}; move it back to {self.packed_for} first")
            return super().forward(input)

    return PackedInt4Linear


def _state(module: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """``module``'s state dict, with each int4 TinyGemm weight as its packed data and scale/shift tensors (never
    unpacked), and what rebuilds those weights: (state, {layer name: layout})."""
    state: dict[str, torch.Tensor] = {}
    layouts: dict[str, dict] = {}
    for name, child in module.named_modules(remove_duplicate=False):
        prefix = f"{name}." if name else ""
        weight = child._parameters.get("weight")
        if not _is_tinygemm(weight):
            child._save_to_state_dict(state, prefix, False)
            continue
        packed = weight._data
        state[prefix + PACKED] = packed._data.detach()
        state[prefix + SCALE_SHIFT] = weight._scale_shift.detach()
        for key, value in [*child._parameters.items(), *child._buffers.items()]:  # bias, input/output scales
            if key != "weight" and value is not None and key not in child._non_persistent_buffers_set:
                state[prefix + key] = value.detach()
        layouts[name] = {"qtype": weight.qtype.name, "group_size": weight._group_size, "size": list(weight.size()),
                         "stride": list(weight.stride()), "packed_size": list(packed.size()),
                         "packed_stride": list(packed.stride())}
    return state, layouts


def _packed_save(layer: torch.nn.Module, destination: dict, prefix: str, keep_vars: bool) -> None:
    """A TinyGemm int4 layer's own tensors as _state writes them (a QLinear has no children)."""
    destination.update({prefix + key: value for key, value in _state(layer)[0].items()})


def _set_tinygemm(layer: torch.nn.Module, state: dict[str, torch.Tensor], prefix: str, layout: dict,
                  device: torch.device) -> None:
    """Give ``layer`` (an empty QLinear) its int4 TinyGemm weight from the saved tensors, as they are.

    The packing is device-specific (an entry is only read on the device type it was made on): the tensors go to
    ``device`` before they are wrapped, since moving a packed weight across device types unpacks and repacks it."""
    from optimum.quanto import qtypes
    from optimum.quanto.tensor.weights.tinygemm import TinyGemmPackedTensor, TinyGemmWeightQBitsTensor

    packed = TinyGemmPackedTensor(state.pop(prefix + PACKED).to(device), layout["packed_size"],
                                  layout["packed_stride"])
    weight = TinyGemmWeightQBitsTensor(qtypes[layout["qtype"]], 0, layout["group_size"], layout["size"],
                                       layout["stride"], packed, state.pop(prefix + SCALE_SHIFT).to(device))
    layer.weight = torch.nn.Parameter(weight)  # as quanto's freeze sets it
