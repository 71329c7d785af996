"""Quantization choices as small, frozen, validated config objects (one per backend)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class QuantConfig:
    """Base class: ``backend`` names the handler, ``format`` the weight format, ``bits`` the weight width."""

    backend: ClassVar[str] = "none"
    formats: ClassVar[tuple[str, ...]] = ()

    @property
    def format(self) -> str:  # overridden by fields in subclasses
        return "bf16"

    @property
    def bits(self) -> int:
        return 16

    @property
    def label(self) -> str:
        return f"{self.backend} {self.format}"

    def _check_format(self, value: str) -> None:
        if value not in self.formats:
            raise ValueError(
                f"{type(self).__name__}: format={value!r} is not supported; choose one of {', '.join(self.formats)}."
            )


@dataclass(frozen=True)
class NoQuantConfig(QuantConfig):
    """Full precision: the weights stay in the pipeline dtype."""

    @property
    def label(self) -> str:
        return "full precision"


@dataclass(frozen=True)
class QuantoConfig(QuantConfig):
    """optimum-quanto weight-only quantization: qint8 or qint4."""

    weights: str = "int8"
    backend = "quanto"
    formats = ("int8", "int4")

    def __post_init__(self):
        self._check_format(self.weights)

    @property
    def format(self) -> str:
        return self.weights

    @property
    def bits(self) -> int:
        return 8 if self.weights == "int8" else 4


@dataclass(frozen=True)
class BitsAndBytesConfig(QuantConfig):
    """bitsandbytes LLM.int8 or NF4 (double quant, bf16 compute)."""

    quant_type: str = "nf4"
    double_quant: bool = True
    backend = "bitsandbytes"
    formats = ("int8", "nf4")

    def __post_init__(self):
        self._check_format(self.quant_type)

    @property
    def format(self) -> str:
        return self.quant_type

    @property
    def bits(self) -> int:
        return 8 if self.quant_type == "int8" else 4


@dataclass(frozen=True)
class TorchAoConfig(QuantConfig):
    """torchao int8 (dynamic activations, fast on CPU; or weight-only) and float8 (row-wise dynamic activations, or
    weight-only; NVIDIA GPUs of compute capability 8.9 and up)."""

    kind: str = "int8_dynamic"
    backend = "torchao"
    formats = ("int8_dynamic", "int8_weight_only", "float8_dynamic", "float8_weight_only")

    def __post_init__(self):
        self._check_format(self.kind)

    @property
    def format(self) -> str:
        return self.kind

    @property
    def bits(self) -> int:
        return 8


FULL_PRECISION = NoQuantConfig()
