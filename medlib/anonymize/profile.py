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
SAFE_PRIVATE = Path(__file__).with_name("safe_private.json")


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


@dataclass(frozen=True)
class SafePrivate:
    """Private attributes known not to identify (PS3.15 E.3.10): what Retain Safe Private keeps.

    A private tag names its block, not its creator: ``(0019,xx23)`` under creator
    ``GEMS_ACQU_01`` is element 0x23 of whichever block (gggg,00xx) that creator holds.
    """

    elements: frozenset[tuple[str, int, int]]  # (creator, group, element within the block)

    def keeps(self, tag: int, creator: str | None) -> bool:
        """Whether private ``tag`` is safe, its block's creator being ``creator`` (for a
        creator element (gggg,0010-00FF): its own value). Unknown creators are not."""
        if creator is None:
            return False
        group, element = tag >> 16, tag & 0xFFFF
        creator = creator.strip(" \0")
        if 0x10 <= element <= 0xFF:
            return any(c == creator and g == group for c, g, _ in self.elements)
        return element > 0xFF and (creator, group, element & 0xFF) in self.elements

    def __or__(self, other: SafePrivate) -> SafePrivate:
        return SafePrivate(self.elements | other.elements)


def creator_tag(tag: int) -> int | None:
    """The tag of the Private Creator element that reserves private ``tag``'s block (itself
    for a creator element), or None for (gggg,0000-000F)."""
    element = tag & 0xFFFF
    if 0x10 <= element <= 0xFF:
        return tag
    return (tag & 0xFFFF0000) | (element >> 8) if element > 0xFF else None


def load_safe_private(path: str | Path = SAFE_PRIVATE) -> SafePrivate:
    """Read a list of safe private attributes: ``{"rows": [{"creator": ..., "tag":
    "(gggg,xxee)", "meaning": ...}]}`` (medlib's own, or a site's additions).

    Raises:
        MedlibError: unreadable, or a row that is not a private tag with a creator.
    """
    try:
        rows = json.loads(Path(path).read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MedlibError(f"cannot read the safe private attributes in {path}: {e}") from None
    elements = set()
    for n, row in enumerate(rows, 1):
        tag, creator = str(row.get("tag", "")).upper(), str(row.get("creator", "")).strip()
        try:
            group, element = int(tag[1:5], 16), int(tag[8:10], 16)
            valid = len(tag) == 11 and tag[0] + tag[5:8] + tag[10] == "(,XX)" and group % 2 and creator
        except ValueError:
            valid = False
        if not valid:
            raise MedlibError(f"{path} row {n}: expected a creator and a private tag like (0019,xx23), "
                              f"got {row!r}")
        elements.add((creator, group, element))
    return SafePrivate(frozenset(elements))


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
