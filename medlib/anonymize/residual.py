"""The residual scan: a second line of defence after the profile.

The profile acts on attributes; a patient's name typed into a comment, a report's text or a
private block is not an attribute it knows. :class:`Identifiers` holds the identifying values of
one input (``identifiers.json``: the patient's names and their parts, IDs, accession and
procedure numbers, at the top level or in the items of the sequence a row names, the date of birth in the formats people write, the names of physicians,
operators and the institution) and finds them, case-insensitively and as whole words, in every
string value left in the output: every nesting level, kept private blocks, the file meta
information. A hit is overwritten in place with ``X`` (the value keeps its length, so it stays
valid for its VR) and reported by attribute and kind, never by value.

Dates, times, UIDs and numbers are not scanned (their values are the profile's to handle), nor
code strings (defined terms: a patient called Head must not erase ``HEAD``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from ..errors import MedlibError

DATA = Path(__file__).with_name("identifiers.json")
#: VRs whose values are searched: those that carry text a person may have typed.
SCANNED_VRS = frozenset({"AE", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
#: Binary VRs searched in private elements (a vendor's text in an OB or UN value).
SCANNED_BINARY_VRS = frozenset({"OB", "UN"})
_WORD = r"(?<![0-9A-Za-z]){}(?![0-9A-Za-z])"


def reads(vr: str, private: bool) -> bool:
    """Whether the scan reads a value of ``vr`` (in a private element, if ``private``)."""
    return vr in SCANNED_VRS or private and vr in SCANNED_BINARY_VRS


@dataclass(frozen=True)
class _Table:
    rows: tuple[tuple[int, str, str, str | None, int | None], ...]  # (tag, keyword, kind, retained by, in sequence)
    min_length: dict[str, int]
    ignore: frozenset[str]
    date_formats: tuple[str, ...]


@cache
def _table(path: Path = DATA) -> _Table:
    try:
        data = json.loads(path.read_text())
        rows = tuple((tag_for_keyword(r["keyword"]), r["keyword"], r["kind"], r.get("retained_by"),
                      tag_for_keyword(r["in"]) if "in" in r else None) for r in data["rows"])
        table = _Table(rows, data["min_length"], frozenset(w.upper() for w in data["ignore"]),
                       tuple(data["date_formats"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MedlibError(f"cannot read the identifying attributes in {path}: {e}") from None
    unknown = [keyword for keyword in [r["keyword"] for r in data["rows"]] + [r["in"] for r in data["rows"] if "in" in r]
               if tag_for_keyword(keyword) is None]
    if unknown:
        raise MedlibError(f"{path}: not attribute keywords pydicom knows: {', '.join(unknown)}")
    return table


@cache
def identifying_tags() -> tuple[int, ...]:
    """The top-level attributes whose input values the scan looks for (or whose items hold
    them), in tag order."""
    return tuple(sorted({sequence or tag for tag, _, _, _, sequence in _table().rows}))


@dataclass(frozen=True)
class Identifiers:
    """The identifying values of one input, and the pattern that finds them.

    ``values``: (what, value) pairs, ``what`` naming the attribute and kind ("PatientName
    part", "PatientBirthDate as 14.03.1956"); the scan reports ``what``, never the value.
    """

    values: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, ds: Dataset, options: frozenset[str] = frozenset()) -> Identifiers:
        """The identifying values in the top level of ``ds`` (an input, before anonymizing),
        less those an option keeps (Retain Institution Identity keeps the institution's name)."""
        rows = _table().rows
        # the values as read (one patient's files share them): decoded once per patient
        key = (options, str(ds.get("SpecificCharacterSet", "")),
               tuple(_as_read(ds.get_item(tag)) for tag in identifying_tags()))
        if key in _SEEN:
            return _SEEN[key]
        raw = []
        for tag, keyword, kind, retained_by, sequence in rows:
            if retained_by in options:
                continue
            try:
                holders = [ds] if sequence is None else list(ds[sequence].value) if sequence in ds else []
                values = [holder[tag].value for holder in holders if tag in holder]
            except Exception:  # an undecodable value: nothing to search for
                continue
            raw.extend((keyword, kind, text) for value in values for text in _strings(value))
        if len(_SEEN) > 1024:
            _SEEN.clear()
        found = _SEEN[key] = _identifiers(tuple(raw))
        return found

    def to_json(self) -> str:
        return json.dumps([list(v) for v in self.values])

    @classmethod
    def from_json(cls, text: str) -> Identifiers:
        return cls(tuple((str(what), str(value)) for what, value in json.loads(text)))

    @property
    def pattern(self) -> re.Pattern[str] | None:
        """One case-insensitive whole-word pattern for every value (longest first), or None."""
        return _compile(self.values)

    def in_bytes(self, data: bytes, encoding: str) -> bool:
        """Whether any value may be in ``data`` (encoded in ``encoding``): a quick test of an
        encoded file, case-insensitive, that :meth:`scrub` then settles."""
        if not self.values:
            return False
        upper = data.upper()  # ASCII letters only: the needles come in their case variants
        return any(needle in upper for needle in _encoded(self.values, encoding))

    def what(self, match: str) -> str:
        upper = match.upper()
        return next((what for what, value in self.values if value.upper() == upper), "an identifying value")

    def scrub(self, ds: Dataset) -> list[str]:
        """Overwrite every identifying value found in ``ds`` (all levels, and its file meta),
        in place. Returns a line per hit: the attribute's path and what it held."""
        pattern = self.pattern
        if pattern is None:
            return []
        hits: list[str] = []
        meta = getattr(ds, "file_meta", None)
        for holder in ([meta] if meta is not None else []) + [ds]:
            for path, elem in _walk(holder, ""):
                hits.extend(self._scrub_element(elem, path, pattern))
        return hits

    def find(self, ds: Dataset) -> list[tuple[str, str]]:
        """(attribute path, what it holds) for each identifying value in ``ds``, without
        changing it (for ``check``)."""
        pattern = self.pattern
        if pattern is None:
            return []
        hits = []
        meta = getattr(ds, "file_meta", None)
        for holder in ([meta] if meta is not None else []) + [ds]:
            for path, elem in _walk(holder, ""):
                for text in _element_texts(elem):
                    hits.extend((path, self.what(m.group(0))) for m in pattern.finditer(text))
        return hits

    def _scrub_element(self, elem, path: str, pattern: re.Pattern[str]) -> list[str]:
        hits: list[str] = []

        def replace(match: re.Match[str]) -> str:
            hits.append(f"{path}: {self.what(match.group(0))}")
            return "X" * len(match.group(0))

        if elem.VR in SCANNED_BINARY_VRS:
            raw = bytes(elem.value or b"")
            text = raw.decode("latin-1")
            new = pattern.sub(replace, text)
            if hits:
                elem.value = new.encode("latin-1")
            return hits
        value = elem.value
        if isinstance(value, (list, tuple, MultiValue)):
            new_values = [pattern.sub(replace, str(v)) for v in value]
            if hits:
                elem.value = new_values
        elif value is not None:
            new = pattern.sub(replace, str(value))
            if hits:
                elem.value = new
        return hits


_SEEN: dict[tuple, Identifiers] = {}


def _as_read(elem) -> object:
    """An element's value as read (bytes, before decoding), or its value once decoded."""
    if elem is None:
        return None
    value = elem.value
    return value if isinstance(value, (bytes, str)) else str(value)


def _identifiers(raw: tuple[tuple[str, str, str], ...]) -> Identifiers:
    """The identifiers made of (keyword, kind, text) values (one patient's files share them)."""
    table = _table()
    found: dict[str, str] = {}
    for keyword, kind, text in raw:
        for what, needle in _needles(keyword, kind, text, table):
            if len(needle) >= table.min_length.get(kind, 2) and needle.upper() not in table.ignore:
                found.setdefault(needle.upper(), what)
    return Identifiers(tuple(sorted((what, needle) for needle, what in found.items())))


def _strings(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return [str(v) for v in value if str(v).strip()]
    return [str(value)] if str(value).strip() else []


def _needles(keyword: str, kind: str, text: str, table: _Table) -> Iterator[tuple[str, str]]:
    """The strings to look for that ``text`` (a value of ``keyword``) gives."""
    text = text.strip(" \0")
    if kind == "name":
        name = PersonName(text)
        parts = [p for component in (name.family_name, name.given_name, name.middle_name)
                 for p in re.split(r"[\s,.\-]+", component) if p]
        for part in parts:
            yield f"{keyword} part", part
        if len(parts) > 1:
            yield f"{keyword}", " ".join(parts)
    elif kind == "date":
        try:
            date = dt.datetime.strptime(text[:8], "%Y%m%d").date()
        except ValueError:
            return
        for fmt in table.date_formats:
            yield f"{keyword} as {fmt}", date.strftime(fmt)
    else:
        yield keyword, text


def _walk(ds: Dataset, where: str) -> Iterator[tuple[str, object]]:
    """(path, element) of every scanned element of ``ds``, at every level."""
    for elem in ds:
        name = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        path = f"{where}{name}"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                yield from _walk(item, f"{path}[{i}]/")
        elif reads(elem.VR, elem.tag.is_private):
            yield path, elem


def _element_texts(elem) -> list[str]:
    if elem.VR in SCANNED_BINARY_VRS:
        return [bytes(elem.value or b"").decode("latin-1")]
    return _strings(elem.value)


@lru_cache(maxsize=256)
def _compile(values: tuple[tuple[str, str], ...]) -> re.Pattern[str] | None:
    if not values:
        return None
    needles = sorted({v for _, v in values}, key=len, reverse=True)
    return re.compile(_WORD.format("(?:" + "|".join(re.escape(n) for n in needles) + ")"), re.IGNORECASE)


@lru_cache(maxsize=256)
def _encoded(values: tuple[tuple[str, str], ...], encoding: str) -> frozenset[bytes]:
    """Each value in ``encoding``, in its case variants, upper-cased as ``bytes.upper`` does."""
    needles = set()
    for _, v in values:  # bytes.upper folds ASCII letters only: the other letters by variant
        for variant in {v, v.upper(), v.lower(), v.title()}:
            try:
                needles.add(variant.encode(encoding).upper())
            except (UnicodeEncodeError, LookupError):
                needles.add(variant.encode("utf-8").upper())
    return frozenset(needles)
