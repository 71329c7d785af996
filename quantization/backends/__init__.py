"""Built-in backends; each module registers its handler on import."""

from . import bitsandbytes_backend, none_backend, quanto_backend, torchao_backend  # noqa: F401
