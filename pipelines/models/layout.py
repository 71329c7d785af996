"""A model directory's layout, read without loading a weight: its index (model_index.json) and the tensor tables
of its safetensors files."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

MAX_HEADER = 100 * 2**20  # a safetensors header larger than this is not one


@dataclass(frozen=True)
class ComponentSize:
    """One component: its parameter count, its largest tensor (what sequential offload holds at once), the bytes it
    is stored in, and its repeated blocks: the largest one's parameters (what block offload holds at once, twice: one
    computing, the next copied in) and all of theirs together (the rest stays on the device)."""

    name: str
    params: int
    largest: int
    stored_bytes: int
    block: int = 0
    in_blocks: int = 0
    held_bytes: int = 0  # a pre-quantized single file's bytes, held whatever the quant choice (0: not one)

    def __post_init__(self):
        if not self.name or self.params < 0 or self.stored_bytes < 0 or not 0 <= self.largest <= self.params \
                or not 0 <= self.block <= self.in_blocks <= self.params or self.held_bytes < 0:
            raise ValueError(f"ComponentSize: name={self.name!r}, params={self.params}, largest={self.largest}, "
                             f"stored_bytes={self.stored_bytes}, block={self.block}, in_blocks={self.in_blocks}, "
                             f"held_bytes={self.held_bytes} must be a name and counts with largest <= params and "
                             "block <= in_blocks <= params.")


DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
               "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}


def safetensors_header(path: Path) -> dict:
    """The tensor table of a .safetensors file (name -> dtype, shape, offsets); no weights are read."""
    with Path(path).open("rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise UserError(f"{path} is not a safetensors file (shorter than its header).")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER:
            raise UserError(f"{path} is not a safetensors file (a {length}-byte header).")
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise UserError(f"{path} is not a safetensors file (its header is not JSON).") from None
    return {name: entry for name, entry in header.items() if name != "__metadata__"}


def folder_size(folder: Path, name: str) -> ComponentSize:
    """A component folder's parameter count, largest tensor, stored bytes and repeated blocks, from its safetensors
    headers (a block: the tensors under one numbered element of a module list, e.g. ``transformer_blocks.3.`` or
    T5's ``encoder.block.5.``)."""
    params = largest = stored = 0
    blocks: dict[str, int] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        for tensor, entry in safetensors_header(path).items():
            numel = 1
            for dim in entry["shape"]:
                numel *= dim
            params += numel
            largest = max(largest, numel)
            stored += numel * DTYPE_BYTES.get(entry["dtype"], 2)
            parts = tensor.split(".")
            index = next((i for i, part in enumerate(parts[:-1]) if part.isdigit()), None)
            if index is not None:
                block = ".".join(parts[:index + 1])
                blocks[block] = blocks.get(block, 0) + numel
    return ComponentSize(name, params, largest, stored, max(blocks.values(), default=0), sum(blocks.values()))


def read_index(root: Path) -> dict[str, tuple[str, str]]:
    """component -> (library, class name), from model_index.json."""
    index = json.loads((root / "model_index.json").read_text())
    return {name: tuple(entry) for name, entry in index.items()
            if not name.startswith("_") and isinstance(entry, list) and entry[0] and entry[1]}
