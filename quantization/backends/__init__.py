"""Built-in backends, one per config type: the only table of them."""

from ..config import BitsAndBytesConfig, NoQuantConfig, QuantoConfig, TorchAoConfig
from .base import Backend
from .bitsandbytes_backend import BitsAndBytesBackend
from .none_backend import FullPrecisionBackend
from .quanto_backend import QuantoBackend
from .torchao_backend import TorchAoBackend

BUILTIN: dict[type, Backend] = {
    NoQuantConfig: FullPrecisionBackend(),
    QuantoConfig: QuantoBackend(),
    BitsAndBytesConfig: BitsAndBytesBackend(),
    TorchAoConfig: TorchAoBackend(),
}
