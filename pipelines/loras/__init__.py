"""LoRAs: checked files (files), runtime adapters on a loaded pipeline (apply), control LoRAs for Depth and Canny on
the Dev transformer (control), and the tiny family's LoRAs for tests and benchmarks (tiny)."""

from .apply import adapters_on, apply_loras, nonfinite, remove_loras, text_encoder_adapters
from .control import apply_control_lora, control_lora_file, release_control_lora
from .files import (STRENGTH_MAX, STRENGTH_MIN, LoraFile, available_loras, check_lora, check_loras, check_strength,
                    file_hashes, parse_lora_arg, without_paths)

__all__ = ["LoraFile", "STRENGTH_MAX", "STRENGTH_MIN", "adapters_on", "apply_control_lora", "apply_loras",
           "available_loras", "check_lora", "check_loras", "check_strength", "control_lora_file", "file_hashes",
           "nonfinite", "parse_lora_arg", "release_control_lora", "remove_loras", "text_encoder_adapters",
           "without_paths"]
