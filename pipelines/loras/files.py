"""LoRA files: checked (a complete safetensors header, a strength in range), named and hashed; no weights read."""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

STRENGTH_MIN, STRENGTH_MAX = -4.0, 4.0
SUFFIX = ".safetensors"
FORMATS_TEXT = "diffusers/PEFT, kohya, XLabs or BFL format"
_HASHES: dict[tuple, tuple[str, str]] = {}


@dataclass(frozen=True)
class LoraFile:
    """One LoRA of a request: its file, strength, and what identifies it: its file name, the sha256 of the whole
    file, and its AutoV3 hash (the sha256 of the tensor data after the safetensors header, as A1111 and Civitai
    hash LoRAs; they show its first 12 hex digits)."""

    path: str
    strength: float
    name: str
    sha256: str
    autov3: str = ""

    @property
    def tag(self) -> str:
        """A1111's prompt form, e.g. <lora:film-grain:0.8>."""
        return f"<lora:{self.name}:{self.strength:g}>"

    def to_dict(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "autov3": self.autov3, "strength": self.strength}


def parse_lora_arg(text: str) -> tuple[str, float | str]:
    """``FILE[:STRENGTH]`` (strength 1.0 when left out); a colon not followed by a number is part of the path."""
    text = str(text).strip()
    path, sep, tail = text.rpartition(":")
    if sep and path and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*|\s*[-+]?(nan|inf|infinity)\s*",
                                     tail, re.IGNORECASE):
        return path, tail.strip()
    return text, 1.0


def check_loras(value) -> list[LoraFile]:
    """The request's ``loras``: a list of (path, strength) pairs (or "FILE[:STRENGTH]" texts, LoraFiles, or dicts
    with ``path``, ``strength`` and ``shown``: how messages name the file, e.g. an upload by its own name), each
    checked: an existing .safetensors file with a complete header, a finite strength in range, no repeats."""
    if value is None or value == "":
        return []
    single_pair = isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], (str, Path))
    if isinstance(value, (str, Path, LoraFile, dict)) or single_pair:
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise UserError(f"loras={value!r} must be a list of (file, strength) pairs.")
    checked = []
    for item in value:
        shown = None
        if isinstance(item, LoraFile):
            item = (item.path, item.strength)
        elif isinstance(item, dict):
            shown = item.get("shown")
            item = (item.get("path"), item.get("strength", 1.0))
        elif isinstance(item, (str, Path)):
            item = parse_lora_arg(str(item))
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise UserError(f"lora={item!r} must be a (file, strength) pair, e.g. ('style.safetensors', 0.8).")
        lora = check_lora(*item, shown=shown)
        twin = next((c for c in checked if c.sha256 == lora.sha256), None)
        if twin is not None:
            raise UserError(f"lora={shown or lora.name!r} is listed twice (same file as {twin.name!r}); give it once, "
                            "with the strength you want.")
        checked.append(lora)
    return checked


def check_lora(path, strength=1.0, shown: str | None = None) -> LoraFile:
    """One LoRA file, checked (see check_loras); messages name it ``shown`` (default: the path as given)."""
    if path is None or not str(path).strip():
        raise UserError("lora: the file name is empty; give a .safetensors LoRA file.")
    file = Path(str(path).strip()).expanduser()
    shown = str(shown).strip() if shown else str(path).strip()
    if file.suffix.lower() != SUFFIX:
        raise UserError(f"lora={shown!r} is not a .safetensors file; LoRAs load from .safetensors only "
                        "(convert a .ckpt/.pt/.bin LoRA first).")
    if not file.is_file():
        raise UserError(f"lora={shown!r}: no such file.")
    number = check_strength(strength, Path(shown).stem)
    _check_header(file, shown)
    return LoraFile(str(file), number, file.stem, *file_hashes(file))


def check_strength(value, name: str) -> float:
    """A LoRA strength: a finite number in STRENGTH_MIN..STRENGTH_MAX (``name``: the LoRA it is for)."""
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number) or not STRENGTH_MIN <= number <= STRENGTH_MAX:
        raise UserError(f"lora strength={value!r} for {name!r} is not a number in {STRENGTH_MIN:g}..{STRENGTH_MAX:g}; "
                        "use e.g. 1.0 (0 turns it off).")
    return number


DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _check_header(file: Path, shown: str) -> None:
    """A complete safetensors file: a JSON object for a header, whose tensors each have a known dtype, a shape and
    data offsets that match, lie end to end within the file, and hold weights (no weights are read)."""
    size = file.stat().st_size
    unreadable = (f"lora={shown!r} is not a safetensors file ({{why}}); use a .safetensors LoRA, or download it "
                  "again if it is damaged.")
    try:
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > min(size - 8, 100 * 2**20):
                raise ValueError("header length")
            header = json.loads(handle.read(length))
    except RecursionError:
        raise UserError(unreadable.format(why="its header is nested too deeply")) from None
    except (OSError, ValueError, struct.error, UnicodeDecodeError):
        raise UserError(unreadable.format(why="unreadable header")) from None
    if not isinstance(header, dict):
        raise UserError(unreadable.format(why=f"its header is a JSON {type(header).__name__}, not an object"))
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    spans = []
    for name, entry in tensors.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            count = math.prod(shape)
            valid = (dtype in DTYPE_BYTES and isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
                     and type(begin) is int and type(end) is int and 0 <= begin <= end)
        except (TypeError, KeyError, ValueError):
            valid = False
        if not valid:
            raise UserError(unreadable.format(why=f"tensor {str(name)[:80]!r} is described wrongly"))
        if end - begin != count * DTYPE_BYTES[dtype]:
            raise UserError(f"lora={shown!r} is damaged: tensor {str(name)[:80]!r} ({dtype} {shape}) needs "
                            f"{count * DTYPE_BYTES[dtype]} bytes but its offsets give {end - begin}; download it "
                            "again.")
        spans.append((begin, end))
    spans.sort()
    if any(b != previous_end for (b, _), previous_end in zip(spans, [0] + [e for _, e in spans[:-1]])):
        raise UserError(f"lora={shown!r} is damaged: its tensors overlap or leave gaps; download it again.")
    end = spans[-1][1] if spans else 0
    if 8 + length + end > size:
        raise UserError(f"lora={shown!r} is truncated or damaged ({size} bytes, shorter than its header says); "
                        "download it again.")
    if end == 0:
        raise UserError(f"lora={shown!r} holds no weights ({'rank 0: ' if tensors else ''}"
                        f"{'every tensor is empty' if tensors else 'no tensors'}); it would change nothing. Use a "
                        "LoRA of rank 1 or more.")


def without_paths(text: str) -> str:
    """``text`` with every file path in it cut to the file's name (library errors name the files they read)."""
    return re.sub(r"(?:[A-Za-z]:)?(?:[\\/][^\\/\s'\",:;()\[\]]+)+[\\/]([^\\/\s'\",:;()\[\]]+)", r"\1", text)


def file_hashes(file: Path) -> tuple[str, str]:
    """(sha256 of the whole file, AutoV3: sha256 of what follows the safetensors header), in one read; remembered
    per file, size and modification time."""
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        whole, data = hashlib.sha256(), hashlib.sha256()
        with file.open("rb") as handle:
            head = handle.read(8)
            whole.update(head)
            skip = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            while skip > 0:  # the JSON header: in the whole file's hash only
                block = handle.read(min(skip, 2**20))
                if not block:
                    break
                whole.update(block)
                skip -= len(block)
            for block in iter(lambda: handle.read(2**20), b""):
                whole.update(block)
                data.update(block)
        _HASHES[key] = (whole.hexdigest(), data.hexdigest())
    return _HASHES[key]


def available_loras(folder: Path | None = None) -> list[Path]:
    """The .safetensors files under the LoRA folder (pipelines.paths.lora_dir), sorted by name."""
    from ..paths import lora_dir

    folder = Path(folder) if folder else lora_dir()
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.rglob(f"*{SUFFIX}") if p.is_file() and not p.name.startswith(".")),
                  key=lambda p: str(p.relative_to(folder)).lower())
