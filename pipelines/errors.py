"""Errors a user sees: one readable line, no traceback."""


class UserError(ValueError):
    """Bad input or an unusable setup; the message says what to do."""


class Cancelled(Exception):
    """The caller stopped a run in progress (e.g. the page that asked for it went away); nothing is retried."""
