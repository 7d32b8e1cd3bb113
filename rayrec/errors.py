"""Errors that reach the user as one clear line instead of a traceback."""


class RayrecError(Exception):
    """Base class: the CLI prints ``error: <message>`` and exits with status 2."""


class ConfigError(RayrecError):
    """A configuration value is invalid or inconsistent."""


class DataError(RayrecError):
    """Input data does not follow the data contract (names the file, column and row)."""


class ArtifactError(RayrecError):
    """A model, index or policy artifact is missing, corrupt or does not match what uses it."""
