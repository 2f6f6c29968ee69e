"""What the profile does not list: free text outside PS3.15 Table E.1-1, undefined attributes,
and code meanings typed at a site.

The table is the floor. Every standard attribute it does not list whose VR can carry free text
(``text_vrs`` in ``free_text.json``) is removed, or emptied or given a dummy where its IOD
requires it (X/Z/D), unless the reviewed ``keep`` list of that file names it; ``act`` rows give
an attribute an action as a table row would (the free text of a structured report's TEXT items);
an even-group attribute the standard does not define is removed, like a private one, and so is
a command or file meta element found in the dataset (a damaged tag). The rules
come only from the data file; :meth:`~medlib.anonymize.profile.Profile.rule` falls back to
:meth:`FreeTextPolicy.rule` for attributes the table does not list.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pydicom.datadict import get_entry, tag_for_keyword

from ..errors import MedlibError
from .profile import Rule

DATA = Path(__file__).with_name("free_text.json")


@dataclass(frozen=True)
class FreeTextPolicy:
    """The rules of ``free_text.json``, by tag."""

    text_vrs: frozenset[str]
    keep: frozenset[int]
    act: dict[int, Rule]
    local_prefixes: tuple[str, ...]
    local_designators: frozenset[str]

    def rule(self, tag: int) -> Rule | None:
        """The rule for a standard attribute that Table E.1-1 does not list, or None (kept)."""
        if tag in self.act:
            return self.act[tag]
        if tag >> 16 in (0x0000, 0x0002):  # command or file meta elements in a dataset: a corrupted tag
            return Rule(f"({tag >> 16:04X},{tag & 0xFFFF:04X})", None, "a command or file meta element in the dataset",
                        "X", {}, False, beyond_table=True)
        if tag in self.keep or not tag & 0xFFFF:  # kept; group lengths are the writer's
            return None
        try:
            vr, _, name, _, keyword = get_entry(tag)
        except KeyError:
            return Rule(f"({tag >> 16:04X},{tag & 0xFFFF:04X})", None, "an attribute the standard does not define",
                        "X", {}, False, beyond_table=True)
        if vr not in self.text_vrs:
            return None
        return Rule(f"({tag >> 16:04X},{tag & 0xFFFF:04X})", keyword or None, name, "X/Z/D", {}, False,
                    beyond_table=True)

    def keeping(self, tags: frozenset[int]) -> FreeTextPolicy:
        """This policy with a site's additions to the ``keep`` list (:func:`load_keep_text`)."""
        return dataclasses.replace(self, keep=self.keep | tags)

    def is_local_scheme(self, designator: str) -> bool:
        """Whether a Coding Scheme Designator names a scheme private to a site (its code
        meanings are typed by people)."""
        designator = designator.strip().upper()
        return designator.startswith(self.local_prefixes) or designator in self.local_designators


@cache
def load_free_text(path: Path = DATA) -> FreeTextPolicy:
    """Read ``free_text.json`` (once).

    Raises:
        MedlibError: unreadable, or a row naming an attribute pydicom's dictionary lacks.
    """
    try:
        data = json.loads(Path(path).read_text())
        keep, act = set(), {}
        for row in data["keep"]:
            keep.add(_tag(row["keyword"], path))
        for row in data["act"]:
            tag = _tag(row["keyword"], path)
            act[tag] = Rule(f"({tag >> 16:04X},{tag & 0xFFFF:04X})", row["keyword"], row["keyword"], row["basic"],
                            row.get("options", {}), True, beyond_table=True)
        local = data["local_coding_schemes"]
        return FreeTextPolicy(frozenset(data["text_vrs"]), frozenset(keep), act, tuple(local["prefixes"]),
                              frozenset(d.upper() for d in local["designators"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MedlibError(f"cannot read the free-text rules in {path}: {e}") from None


def load_keep_text(path: str | Path) -> frozenset[int]:
    """A site's additions to the attributes kept with their free text, in the format of
    ``free_text.json``'s ``keep`` rows: ``{"keep": [{"keyword": ..., "reason": ...}]}``.

    Raises:
        MedlibError: unreadable, or a row that is not a standard attribute with a free-text VR
            outside Table E.1-1 (the row and the fix are named).
    """
    from .profile import load_profile

    path = Path(path)
    try:
        rows = json.loads(path.read_text())["keep"]
        keywords = [(n, str(row["keyword"]), str(row.get("reason", "")).strip()) for n, row in enumerate(rows, 1)]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MedlibError(f"cannot read the attributes to keep in {path}: {e}; expected "
                          '{"keep": [{"keyword": ..., "reason": ...}]}') from None
    profile, tags = load_profile(), set()
    for n, keyword, reason in keywords:
        tag = tag_for_keyword(keyword)
        where = f"{path} row {n} ({keyword})"
        if tag is None:
            raise MedlibError(f"{where}: not an attribute keyword pydicom knows")
        if tag in profile.by_tag:
            raise MedlibError(f"{where}: PS3.15 Table E.1-1 lists it; its options, not this file, decide")
        if get_entry(tag)[0] not in profile.beyond.text_vrs:
            raise MedlibError(f"{where}: its VR cannot carry free text; it is kept already")
        if not reason:
            raise MedlibError(f"{where}: give the reason it is safe to keep (\"reason\"), as the reviewed list does")
        tags.add(tag)
    return frozenset(tags)


def _tag(keyword: str, path: Path) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise MedlibError(f"{path}: {keyword!r} is not an attribute keyword pydicom knows")
    return tag
