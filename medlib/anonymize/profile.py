"""PS3.15 Table E.1-1 as a lookup: which action the profile and its options give an attribute.

The table lives in ``profile.json`` (made by :mod:`generate_profile`); nothing here lists a
tag. :func:`load_profile` reads it once; :meth:`Profile.action` answers for a tag and a set of
options, resolving combined codes (X/Z, X/D, Z/D, X/Z/D, X/Z/U*) to one action.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path

from ..errors import MedlibError

DATA = Path(__file__).with_name("profile.json")


class Action(str, Enum):
    """The single actions of PS3.15 E.1.1."""

    DUMMY = "D"  # replace with a non-zero-length dummy value consistent with the VR
    ZERO = "Z"  # replace with a zero-length value
    REMOVE = "X"
    KEEP = "K"
    CLEAN = "C"  # replace with values of similar meaning, known not to identify
    UID = "U"  # replace with a non-zero-length UID, consistently
    UID_IN_SEQUENCE = "U*"  # keep the sequence, replace the UIDs inside it (its items follow the profile)


class OptionError(MedlibError):
    """An unknown option name, or options that exclude each other."""


@dataclass(frozen=True)
class Rule:
    tag: str
    keyword: str | None
    name: str
    basic: str
    options: dict[str, str]
    std_comp_iod: bool

    def code(self, options: frozenset[str]) -> str:
        """The action code under ``options``: a retaining option (K) wins over a cleaning one (C),
        which wins over the Basic Profile."""
        codes = {self.options[o] for o in options if o in self.options}
        if "K" in codes:
            return "K"
        if "C" in codes:
            return "C"
        return self.basic

    def action(self, options: frozenset[str]) -> Action:
        """The single action under ``options``.

        A combined code keeps the least information while the file stays valid. Without the
        IOD module tables, an attribute of a standard composite IOD is taken as required (it
        may be Type 1): then a dummy where D is allowed (valid for Type 1 and 2), else the
        sequence with its UIDs replaced (X/Z/U*), else zero length. Other attributes are
        removed (X), or zero-length (Z/D).
        """
        code = self.code(options)
        if "/" not in code:
            return Action(code)
        choices = code.split("/")
        if not self.std_comp_iod:
            return Action.REMOVE if "X" in choices else Action.ZERO
        if "U*" in choices:
            return Action.UID_IN_SEQUENCE
        if "D" in choices:
            return Action.DUMMY
        return Action.ZERO


@dataclass(frozen=True)
class Profile:
    """Table E.1-1: rules by tag, the repeating-group patterns, the private-attribute rule,
    and the option names with their CID 7050 codes."""

    by_tag: dict[int, Rule]
    curves: Rule  # (50xx,xxxx)
    overlays: dict[int, Rule]  # (60xx,eeee) by element
    private: Rule
    option_codes: dict[str, tuple[str, str]]  # option → (code, meaning)
    basic_code: tuple[str, str]
    clean_pixel_code: tuple[str, str]

    def rule(self, tag: int) -> Rule | None:
        """The rule for an attribute tag, or None (the profile keeps it)."""
        group, element = tag >> 16, tag & 0xFFFF
        if group % 2:
            return self.private
        if tag in self.by_tag:
            return self.by_tag[tag]
        if group & 0xFF00 == 0x5000:
            return self.curves
        if group & 0xFF00 == 0x6000:
            return self.overlays.get(element)
        return None

    def check_options(self, options: frozenset[str]) -> frozenset[str]:
        unknown = sorted(options - set(self.option_codes))
        if unknown:
            raise OptionError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(self.option_codes))}")
        if {"retain_full_dates", "retain_modified_dates"} <= options:
            raise OptionError("retain_full_dates and retain_modified_dates exclude each other; choose one")
        return options


@cache
def load_profile(path: Path = DATA) -> Profile:
    data = json.loads(Path(path).read_text())
    by_tag: dict[int, Rule] = {}
    curves = private = None
    overlays: dict[int, Rule] = {}
    for row in data["rows"]:
        rule = Rule(row["tag"], row["keyword"], row["name"], row["basic"], row["options"], row["std_comp_iod"])
        tag = row["tag"].upper()
        if tag == "(50XX,XXXX)":
            curves = rule
        elif tag.startswith("(60XX,"):
            overlays[int(tag[6:10], 16)] = rule
        elif tag.startswith("GGGGEEEE"):
            private = rule
        else:
            by_tag[int(tag[1:5] + tag[6:10], 16)] = rule
    if curves is None or private is None or not overlays:
        raise MedlibError(f"{path} lacks the curve, overlay or private-attribute rows; regenerate it")
    return Profile(
        by_tag=by_tag,
        curves=curves,
        overlays=overlays,
        private=private,
        option_codes={k: (v["code"], v["meaning"]) for k, v in data["options"].items()},
        basic_code=(data["basic_profile"]["code"], data["basic_profile"]["meaning"]),
        clean_pixel_code=(data["clean_pixel_data"]["code"], data["clean_pixel_data"]["meaning"]),
    )
