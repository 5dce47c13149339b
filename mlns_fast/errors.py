"""Typed errors. Library code raises these; only the CLI turns them into one line and exit code 2."""


class MlnsError(Exception):
    """A problem the user can fix (bad path, bad option, bad data): reported in one line, exit 2."""


class DataError(MlnsError):
    """A data file or folder is missing, unreadable or fails validation."""


class ConfigError(MlnsError):
    """An option or config file value is unknown, of the wrong type or out of range."""


class ModelError(MlnsError):
    """Unknown architecture or head, or weights that do not fit the architecture."""


class RunError(MlnsError):
    """A run folder is unknown, partial or unreadable."""
