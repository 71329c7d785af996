"""What happened to a component: where its weights came from, and the quantization it ended with."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True)
class ComponentSource:
    """Where a component's full-precision weights live: its folder, a content fingerprint, and its class."""

    folder: Path
    fingerprint: str
    cls: type
    model: str = ""  # the model as the user named it, for listings
    file: Path | None = None  # a single-file checkpoint (GGUF, or safetensors) that replaces the folder's weights
    # (backend, format) of a safetensors ``file`` whose weights are quantized already (BFL's nvfp4): it loads as it
    # is, through the caller's loader, which knows its layout
    file_quantization: tuple[str, str] | None = None

    def __post_init__(self):
        if not self.fingerprint:
            raise ValueError("ComponentSource: fingerprint is empty; pass load.fingerprint(folder).")
        if not (isinstance(self.cls, type) and issubclass(self.cls, torch.nn.Module)):
            raise ValueError(f"ComponentSource: cls={self.cls!r} is not a torch module class; pass the "
                             "component's model class.")
        if self.file is not None and Path(self.file).suffix.lower() not in (".gguf", ".safetensors"):
            raise ValueError(f"ComponentSource: file={self.file} is neither a .gguf nor a .safetensors file.")

    @property
    def prequantized_file(self) -> bool:
        """A file whose weights are quantized already: GGUF, or a safetensors file of a quantized layout
        (``file_quantization``); other safetensors files hold plain weights."""
        return self.file is not None and (Path(self.file).suffix.lower() == ".gguf"
                                          or self.file_quantization is not None)


@dataclass
class Fallback:
    component: str
    backend: str
    format: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ComponentQuant:
    backend: str
    format: str
    bytes_before: int
    bytes_after: int
    quantize_s: float
    quantized_layers: int = 0
    fallbacks: list[Fallback] = field(default_factory=list)
    from_cache: bool = False  # read from the quantized-weights store instead of quantized now
    prequantized: bool = False  # the checkpoint itself was quantized; its format wins over the requested quant

    def to_dict(self) -> dict:
        return {"backend": self.backend, "format": self.format, "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after, "quantize_s": round(self.quantize_s, 4),
                "quantized_layers": self.quantized_layers, "from_cache": self.from_cache,
                "prequantized": self.prequantized}
