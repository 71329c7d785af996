"""Errors a user sees: one readable line, no traceback."""


class UserError(ValueError):
    """Bad input or an unusable setup; the message says what to do."""
