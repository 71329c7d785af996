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
_HASHES: dict[tuple, str] = {}


@dataclass(frozen=True)
class LoraFile:
    """One LoRA of a request: its file, strength, and what identifies it (file name and sha256)."""

    path: str
    strength: float
    name: str
    sha256: str

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
    from ..paths import lora_dir

    folder = Path(folder) if folder else lora_dir()
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.rglob(f"*{SUFFIX}") if p.is_file() and not p.name.startswith(".")),
                  key=lambda p: str(p.relative_to(folder)).lower())
