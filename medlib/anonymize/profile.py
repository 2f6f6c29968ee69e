"""PS3.15 Table E.1-1 as a lookup: which action the profile and its options give an attribute.

The table lives in ``profile.json`` (made by :mod:`generate_profile`); nothing here lists a
tag. :func:`load_profile` reads it once; :meth:`Profile.action` answers for a tag and a set of
options, resolving combined codes (X/Z, X/D, Z/D, X/Z/D, X/Z/U*) to one action.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import Enum
from functools import cache
from pathlib import Path

from typing import TYPE_CHECKING

from ..errors import MedlibError

if TYPE_CHECKING:
    from .free_text import FreeTextPolicy

DATA = Path(__file__).with_name("profile.json")
SAFE_PRIVATE = Path(__file__).with_name("safe_private.json")
REQUIREMENTS = Path(__file__).with_name("requirements.json")


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
    beyond_table: bool = False  # a rule of medlib's free-text policy, not of Table E.1-1

    def code(self, options: frozenset[str]) -> str:
        """The action code under ``options``: a retaining option (K) wins over a cleaning one (C),
        which wins over the Basic Profile."""
        codes = {self.options[o] for o in options if o in self.options}
        if "K" in codes:
            return "K"
        if "C" in codes:
            return "C"
        return self.basic

    @property
    def combined(self) -> bool:
        """Whether the Basic Profile gives a combined code (its action depends on the IOD)."""
        return "/" in self.basic

    def action(self, options: frozenset[str], requirement: str | None = None) -> Action:
        """The single action under ``options``.

        A combined code keeps the least information the file's IOD allows. ``requirement``
        is the attribute's Type there (:meth:`Profile.requirement`): "3" (optional): removed
        where X is allowed, else zero length; "2" (required, may be empty): zero length where
        Z is allowed, else a dummy; "1" (required with a value): the sequence with its UIDs
        replaced (X/Z/U*), else a dummy, else zero length. Unknown (None): an attribute of a
        standard composite IOD counts as Type 1, others as Type 3.
        """
        code = self.code(options)
        if "/" not in code:
            return Action(code)
        choices = code.split("/")
        if requirement is None:
            requirement = "1" if self.std_comp_iod else "3"
        if requirement == "3":
            return Action.REMOVE if "X" in choices else Action.ZERO
        if requirement == "2" and "Z" in choices:
            return Action.ZERO
        if "U*" in choices:
            return Action.UID_IN_SEQUENCE
        return Action.DUMMY if "D" in choices else Action.ZERO


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
    requirements: dict  # {"sop_classes": {uid: iod}, "iods": {iod: {path: type}}}
    beyond: FreeTextPolicy  # what the table does not list (:mod:`.free_text`)

    def requirement(self, sop_class: str | None, path: tuple[str, ...], keyword: str | None) -> str | None:
        """The Type ("1", "2" or "3") the IOD of ``sop_class`` gives the attribute ``keyword``
        inside the sequences named by ``path`` (``()``: the top level), from
        ``requirements.json`` (made by :mod:`generate_requirements`). An attribute the IOD
        does not have is "3" at the top level; unknown (None) for an unknown SOP class, and
        for a nested attribute the tables do not place (its item may come from a macro they
        lack)."""
        iod = self.requirements["sop_classes"].get(sop_class or "")
        if iod is None or keyword is None:
            return None
        found = self.requirements["iods"][iod].get("/".join((*path, keyword)))
        return found or (None if path else "3")

    def keeping_text(self, tags: frozenset[int]) -> Profile:
        """This profile with a site's additions to the free-text attributes kept."""
        return replace(self, beyond=self.beyond.keeping(tags)) if tags else self

    def rule(self, tag: int) -> Rule | None:
        """The rule for an attribute tag, or None (the profile keeps it): the table's, else
        medlib's free-text policy's."""
        group, element = tag >> 16, tag & 0xFFFF
        if group % 2:
            return self.private
        if tag in self.by_tag:
            return self.by_tag[tag]
        if group & 0xFF00 == 0x5000:
            return self.curves
        if group & 0xFF00 == 0x6000 and element in self.overlays:
            return self.overlays[element]
        return self.beyond.rule(tag)

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


NO_SAFE_PRIVATE = SafePrivate(frozenset())


@cache
def _shipped_safe_private() -> SafePrivate:
    return load_safe_private(SAFE_PRIVATE)


def safe_private_for(options: frozenset[str], site: SafePrivate | None = None) -> SafePrivate:
    """What Retain Safe Private keeps under ``options``: medlib's list (read once) and the
    site's additions; nothing without the option."""
    if "retain_safe_private" not in options:
        return NO_SAFE_PRIVATE
    return _shipped_safe_private() | (site or NO_SAFE_PRIVATE)


@cache
def load_profile(path: Path = DATA) -> Profile:
    from .free_text import load_free_text  # it builds on Rule

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
        requirements=json.loads(REQUIREMENTS.read_text()),
        beyond=load_free_text(),
    )
