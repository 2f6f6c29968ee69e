"""The settings references in README.md, written from the settings models' fields.

Each table of :class:`medhub.settings.Settings` (the hub's file) and of
:class:`medhub_edge.settings.EdgeSettings` (an edge node's) becomes a heading and a table of its
keys: type, default and the field's docstring; an edge's top-level keys come first.
``medhub settings-reference --write README.md`` replaces the text between each pair of markers;
``tests/test_settings.py`` fails when the README and the models disagree.
"""

from __future__ import annotations

import enum
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic.fields import FieldInfo

from pydantic import BaseModel

from medhub_edge.settings import EdgeSettings

from .settings import Settings

#: Each reference: its marker's name → the model it documents.
REFERENCES: dict[str, type[BaseModel]] = {"settings-reference": Settings, "edge-settings-reference": EdgeSettings}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: begin (medhub settings-reference --write README.md) -->", f"<!-- {name}: end -->"


BEGIN, END = markers("settings-reference")
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
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "string"
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


def _table(fields: dict[str, FieldInfo]) -> list[str]:
    lines = ["| key | type | default | what it does |", "|---|---|---|---|"]
    for name, field in fields.items():
        lines.append(f"| `{name}` | {_type(field.annotation)} | {_default(field)} | {_doc(field.description)} |")
    return lines


def _is_table(annotation: Any) -> bool:
    inner = typing.get_args(annotation)[0] if typing.get_origin(annotation) is tuple else annotation
    return isinstance(inner, type) and issubclass(inner, BaseModel)


def markdown(root: type[BaseModel] = Settings) -> str:
    """The reference of ``root``'s file: its top-level keys, then a heading and a table per table."""
    top = {name: field for name, field in root.model_fields.items() if not _is_table(field.annotation)}
    out: list[str] = [*_table(top), ""] if top else []
    for name, field in root.model_fields.items():
        annotation = field.annotation
        if not _is_table(annotation):
            continue
        if typing.get_origin(annotation) is tuple:  # an array of tables
            model, heading = typing.get_args(annotation)[0], f"[[{field.alias or name}]]"
            note = " Left out: the defaults (`medhub.settings.DEFAULT_PROFILES`)." if name == "profiles" else ""
        else:
            model, heading, note = annotation, f"[{name}]", ""
        summary = _doc(model.__doc__).split(": ", 1)[-1]
        out += [f"**{heading}** {summary}{note}", "", *_table(model.model_fields), ""]
    return "\n".join(out).rstrip() + "\n"


def replace_in(text: str) -> str:
    """``text`` (the README) with every reference between its markers made anew.

    Raises:
        ValueError: a pair of markers is missing.
    """
    for name, model in REFERENCES.items():
        begin, end = markers(name)
        try:
            head, rest = text.split(begin + "\n", 1)
            _, tail = rest.split(end, 1)
        except ValueError:
            raise ValueError(f"the README has no {name} markers; put the lines\n{begin}\n{end}\n"
                             "where the reference belongs") from None
        text = f"{head}{begin}\n{markdown(model)}{end}{tail}"
    return text
