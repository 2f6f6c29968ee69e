"""The settings reference in README.md, written from the settings model's fields.

Each table of :class:`medhub.settings.Settings` becomes a heading and a table of its keys:
type, default and the field's docstring. ``medhub settings-reference --write README.md``
replaces the text between the two markers; ``tests/test_settings.py`` fails when the README
and the model disagree.
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic.fields import FieldInfo

from .settings import Settings, Table

BEGIN = "<!-- settings-reference: begin (medhub settings-reference --write README.md) -->"
END = "<!-- settings-reference: end -->"
TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}


def _type(annotation: Any) -> str:
    """The kind of TOML value a field takes."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        kinds = [_type(a) for a in args if a is not type(None)]
        return " or ".join(kinds)
    if origin is tuple:
        return f"list of {_type(args[0])}s"
    return TYPES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Path):
        return json.dumps(str(value))
    return json.dumps(value)


def _default(field: FieldInfo) -> str:
    derived = (field.json_schema_extra or {}).get("derived") if isinstance(field.json_schema_extra, dict) else None
    if derived:
        return f"*{derived}*"
    if field.is_required():
        return "*required*"
    if field.default is None:
        return "*none*"
    return f"`{_toml(field.default)}`"


def _doc(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _table(model: type[Table]) -> list[str]:
    lines = ["| key | type | default | what it does |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        lines.append(f"| `{name}` | {_type(field.annotation)} | {_default(field)} | {_doc(field.description)} |")
    return lines


def markdown() -> str:
    """The reference: one heading and table per table of the settings file."""
    out: list[str] = []
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if typing.get_origin(annotation) is tuple:  # an array of tables
            model, heading = typing.get_args(annotation)[0], f"[[{field.alias or name}]]"
            note = " Left out: the defaults (`medhub.settings.DEFAULT_PROFILES`)." if name == "profiles" else ""
        else:
            model, heading, note = annotation, f"[{name}]", ""
        summary = _doc(model.__doc__).split(": ", 1)[-1]
        out += [f"**{heading}** {summary}{note}", "", *_table(model), ""]
    return "\n".join(out).rstrip() + "\n"


def replace_in(text: str) -> str:
    """``text`` (the README) with the reference between the markers made anew.

    Raises:
        ValueError: the markers are missing.
    """
    try:
        head, rest = text.split(BEGIN + "\n", 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        raise ValueError(f"the README has no settings reference markers; put the lines\n{BEGIN}\n{END}\n"
                         "where the reference belongs") from None
    return f"{head}{BEGIN}\n{markdown()}{END}{tail}"
