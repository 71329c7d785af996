"""Helpers shared by the backends."""

from __future__ import annotations

import contextlib
import importlib.util

import torch

MIN_IN_FEATURES = 16  # torch's CPU int8 matmul crashes below this
MIN_VOCAB = 128  # embedding tables at least this long (T5's vocabulary) are stored in int8; position tables stay


def missing(package: str, pip_name: str) -> str | None:
    if importlib.util.find_spec(package) is None:
        return f"{pip_name} is not installed (pip install {pip_name})"
    return None


def quantizable_linears(module: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """Plain nn.Linear layers worth quantizing (named, in module order)."""
    return [
        (name, child)
        for name, child in module.named_modules()
        if type(child) is torch.nn.Linear and child.in_features >= MIN_IN_FEATURES
    ]


def set_submodule(root: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


class Int8Embedding(torch.nn.Module):
    """An embedding table stored as int8 rows with one scale per row; only the rows looked up are dequantized.

    Stock quantizers leave embeddings alone: T5-XXL's 32128 x 4096 table is 2.8% of its weights, which alone keeps
    an 8-bit T5 above half its bf16 size. A lookup reads whole rows, so no matmul kernel is involved.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype, device=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("weight", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.empty(num_embeddings, 1, dtype=dtype, device=device))

    @classmethod
    def from_embedding(cls, embedding: torch.nn.Embedding, dtype: torch.dtype) -> "Int8Embedding":
        weight = embedding.weight.detach().float()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
        new = cls(embedding.num_embeddings, embedding.embedding_dim, dtype, device=weight.device)
        new.weight.copy_(torch.round(weight / scale).clamp(-127, 127).to(torch.int8))
        new.scale.copy_(scale.to(dtype))
        return new

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids].to(self.scale.dtype) * self.scale[ids]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8"


def quantize_embeddings(module: torch.nn.Module, dtype: torch.dtype) -> int:
    """Replace each vocabulary-sized nn.Embedding of ``module`` by an Int8Embedding (tied tables stay tied).

    Returns the number of tables converted."""
    made: dict[int, Int8Embedding] = {}
    targets = [(name, child) for name, child in module.named_modules(remove_duplicate=False)
               if type(child) is torch.nn.Embedding and child.num_embeddings >= MIN_VOCAB
               and child.embedding_dim >= MIN_IN_FEATURES]
    for name, child in targets:
        key = id(child.weight)
        if key not in made:
            made[key] = Int8Embedding.from_embedding(child, dtype)
        set_submodule(module, name, made[key])
    return len(made)


def restore_embeddings(skeleton: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put empty Int8Embedding modules into ``skeleton`` where ``state`` holds int8 tables (before assign_state)."""
    made: dict[int, Int8Embedding] = {}
    for key in [k for k in state if k.endswith(".scale")]:
        name = key[: -len(".scale")]
        try:
            old = skeleton.get_submodule(name)
        except AttributeError:
            continue
        if not isinstance(old, torch.nn.Embedding):
            continue
        ident = _identity(state[f"{name}.weight"])
        if ident not in made:
            made[ident] = Int8Embedding(old.num_embeddings, old.embedding_dim, state[key].dtype, device="meta")
        set_submodule(skeleton, name, made[ident])


# ---- saving and loading quantized state (the quantized-weights cache) ------------------------------------
STATE_FILE = "weights.safetensors"


def save_state(state: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None) -> str:
    """Plain tensors to ``path/weights.safetensors``; a tensor held under several names (tied weights) is
    written once and its other names recorded in the metadata. Returns the file name."""
    import json

    from safetensors.torch import save_file

    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, tensor in state.items():
        tensor = tensor.detach().as_subclass(torch.Tensor)
        ptr, ident = tensor.untyped_storage().data_ptr(), _identity(tensor)
        if ident in seen:
            aliases[name] = seen[ident]
            continue
        seen[ident] = name
        if ptr in storages or not tensor.is_contiguous():  # a view into a tensor already written: copy it
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        unique[name] = tensor.cpu()
    save_file(unique, str(path / STATE_FILE), metadata={**(metadata or {}), "aliases": json.dumps(aliases)})
    return STATE_FILE


def load_state(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """What ``save_state`` wrote: (state with every name, metadata)."""
    import json

    from safetensors import safe_open

    with safe_open(str(path / STATE_FILE), framework="pt", device="cpu") as handle:
        metadata = handle.metadata() or {}
        # A copy of each tensor: the file's own buffers are unaligned (int8 kernels crash on them) and must not
        # outlive the file.
        state = {name: handle.get_tensor(name).clone() for name in handle.keys()}
    for name, target in json.loads(metadata.get("aliases", "{}")).items():
        state[name] = state[target]
    return state, metadata


def assign_state(module: torch.nn.Module, state: dict[str, torch.Tensor], already_set=()) -> torch.nn.Module:
    """Load ``state`` into ``module`` (built on the meta device) by assignment: no full-size copy is made.

    ``already_set``: names the caller has filled in itself (a name covers the names under it: ``x.weight`` covers
    ``x.weight._data``). Tensors that ``state`` holds under several names become one parameter again (tied weights).
    """
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    covered = set(already_set)
    missing = [name for name in missing
               if name not in covered and not any(name.startswith(f"{done}.") for done in covered)]
    if missing or unexpected:
        raise ValueError(f"saved weights do not fit the model: {len(missing)} missing (e.g. {missing[:2]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    empty = [name for name, tensor in [*module.named_parameters(), *module.named_buffers()] if tensor.is_meta]
    if empty:
        raise ValueError(f"saved weights leave {len(empty)} tensors unset (e.g. {empty[:2]})")
    first: dict[tuple, str] = {}
    params = dict(module.named_parameters(remove_duplicate=False))
    for name, tensor in state.items():
        if name not in params:
            continue
        ident = _identity(tensor)
        if ident in first:
            owner, _, attr = name.rpartition(".")
            setattr(module.get_submodule(owner) if owner else module, attr, params[first[ident]])
        else:
            first[ident] = name
    return module


def _identity(tensor: torch.Tensor) -> tuple:
    """Equal for two tensors that are views of the same memory with the same layout."""
    if type(tensor) is not torch.Tensor or not tensor.numel():
        return (id(tensor),)
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()),
            tensor.dtype)


@contextlib.contextmanager
def saving_with(layers: list, save):
    """Within it, each of ``layers`` writes its state dict with ``save(layer, destination, prefix, keep_vars)``
    instead of its class's own (these instances only)."""
    for layer in layers:
        layer._save_to_state_dict = save.__get__(layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer._save_to_state_dict
