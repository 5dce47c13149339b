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


class OutputError(MlnsError):
    """An output path cannot be written (a folder where a file goes, no permission, a run's own file)."""


MAX_MESSAGE = 400  # characters of an error line: a 10 MB value given by mistake is not echoed back whole


def one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """An error message as one printable line of at most about `limit` characters: newlines and
    control characters escaped, an over-long middle cut (the start names the file, the end the cause)."""
    def clean(t: str) -> str:
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in t.replace("\n", " "))
    text, half = str(message), (limit - 5) // 2
    if len(text) <= limit:
        return clean(text)
    return f"{clean(text[:half])[:half]} ... {clean(text[-half:])[-half:]}"
