"""Errors that the CLI reports as one line (no traceback)."""


class DomainfmError(Exception):
    """A user-facing error: the message names the file or key and the fix."""


class DataError(DomainfmError):
    """Input data is missing, empty or unreadable."""


class NonFiniteLossError(DomainfmError):
    """Training produced a NaN/Inf loss."""


class ConfigError(DomainfmError):
    """A config key or value is invalid."""
