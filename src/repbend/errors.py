"""User-facing errors: the CLI prints their message, never a traceback."""
from __future__ import annotations


class RepbendError(Exception):
    """An error caused by input the user can fix (config, data, paths)."""


class ConfigError(RepbendError):
    pass


class DataError(RepbendError):
    """Bad data, located as precisely as the format allows."""

    def __init__(self, message: str, *, file=None, line=None, field=None, value=None):
        where = str(file) if file is not None else ""
        if line is not None:
            where += f":{line}"
        parts = [f"{where}: " if where else "", message]
        if field is not None:
            parts.append(f" (field {field!r}")
            parts.append(f", value {_short(value)!r})" if value is not None else ")")
        super().__init__("".join(parts))
        self.file, self.line, self.field, self.value = file, line, field, value


class TrainingDiverged(RepbendError):
    """The divergence guard stopped training; the last good checkpoint is kept."""


def _short(value, limit: int = 80):
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."
