"""Reading TOML tables strictly: typed values, and every unknown key reported.

The dataset catalog is read through :class:`Section`, so that every error names the file, the
entry and the key (``datasets.toml: dataset[2].groups: ...``); :func:`read_toml` reads the
settings file too.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from .errors import HubConfigError


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The parsed file, or a :class:`HubConfigError` saying why it cannot be read."""
    try:
        return tomllib.loads(path.read_text())
    except OSError as e:
        raise HubConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise HubConfigError(f"{path} is not valid TOML: {e}") from None


class Section:
    """Reads one TOML table, remembering which keys were used, to report unknown ones."""

    def __init__(self, data: dict[str, Any], name: str, source: Path):
        if not isinstance(data, dict):
            raise HubConfigError(f"{source}: [{name}] must be a table")
        self.data, self.name, self.source = data, name, source
        self.used: set[str] = set()

    def error(self, key: str, message: str) -> HubConfigError:
        return HubConfigError(f"{self.source}: {self.name}.{key}: {message}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise self.error(key, "is required")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.error(key, f"must be {names}, not {value!r}")
        return value

    def strings(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.get(key, list, list(default))
        if not all(isinstance(v, str) and v for v in value):
            raise self.error(key, "must be a list of non-empty strings")
        return tuple(value)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise HubConfigError(
                f"{self.source}: [{self.name}] has unknown setting(s) {', '.join(unknown)}; "
                "see the configuration reference in README.md"
            )
