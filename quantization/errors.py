"""The errors quantization raises for its callers to show: one readable line that says what to do."""


class QuantizationError(ValueError):
    """A checkpoint or setting quantization cannot use; the message names the fix."""
