"""The anonymizer: a small interpreter of PS3.15 Table E.1-1 over a pydicom Dataset.

For every attribute, at every depth of nested sequences, the profile (with the chosen
options) gives one action; :class:`Anonymizer` carries it out with the site key: UIDs and
the patient's name and ID become keyed pseudonyms, dates move by a per-patient shift when
dates are kept modified. The result records what was done (PatientIdentityRemoved,
DeidentificationMethod and its CID 7050 codes, LongitudinalTemporalInformationModified) and
its file meta information matches the new SOP Instance UID.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
import datetime as dt
from collections import Counter
from collections.abc import Iterable

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from .. import __version__
from .keys import SiteKey
from .profile import Action, OptionError, Profile, SafePrivate, creator_tag, load_profile, safe_private_for

#: A dummy value for each VR (PS3.15: "a non-zero length value that may be a dummy value
#: and consistent with the VR"). UI is handled by the key; SQ keeps its cleaned items.
DUMMY_BY_VR: dict[str, object] = {
    "AE": "ANONYMOUS", "AS": "000Y", "CS": "ANONYMIZED", "DA": "19000101", "DS": "0",
    "DT": "19000101000000", "IS": "0", "LO": "ANONYMIZED", "LT": "ANONYMIZED", "PN": "ANONYMIZED",
    "SH": "ANONYMIZED", "ST": "ANONYMIZED", "TM": "000000", "UC": "ANONYMIZED", "UR": "", "UT": "ANONYMIZED",
    "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0, "UL": 0, "US": 0, "SV": 0, "UV": 0, "AT": 0,
    "OB": b"", "OD": b"", "OF": b"", "OL": b"", "OV": b"", "OW": b"", "UN": b"",
}
#: Where an element lies: its file's SOP Class UID and the keywords of the sequences around it.
Scope = tuple[str | None, tuple[str, ...]]
NO_SCOPE: Scope = (None, ())
_BY_SCOPE = object()  # an action that depends on the scope (a combined code)
#: Attributes whose dummy is a keyed pseudonym, so that one patient's files stay linked.
PSEUDONYMS = {"PatientID": ("patient-id", "ANON-{}"), "PatientName": ("patient-name", "ANON^{}")}
#: Identifies medlib as the writer in the file meta information (a ``2.25.`` UUID-derived UID).
IMPLEMENTATION_CLASS_UID = "2.25.184782084898960086280484355460401478319"
IMPLEMENTATION_VERSION_NAME = f"MEDLIB_{__version__}"[:16]
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def _zero(vr: str):
    """A zero-length value of ``vr``."""
    return b"" if vr in BINARY_VRS else None


class Anonymizer:
    """De-identify datasets with the PS3.15 Basic Profile and options, keyed by a site key.

    Args:
        key: the site key (:meth:`SiteKey.load`).
        options: option names, e.g. ``{"retain_modified_dates", "clean_descriptors"}``;
            see :attr:`Profile.option_codes`.

    Example:
        >>> from medlib.synthetic import write_ct_series
        >>> import pydicom, tempfile, secrets
        >>> ds = pydicom.dcmread(write_ct_series(tempfile.mkdtemp(), shape=(1, 4, 4))[0])
        >>> out = Anonymizer(SiteKey(secrets.token_bytes(32))).anonymize(ds)
        >>> str(out.PatientName).startswith("ANON^"), "InstitutionName" in out
        (True, False)
    """

    def __init__(self, key: SiteKey, options: Iterable[str] = (), profile: Profile | None = None,
                 safe_private: SafePrivate | None = None):
        self.key = key
        self.profile = profile or load_profile()
        self.options = self.profile.check_options(frozenset(options))
        if safe_private is not None and "retain_safe_private" not in self.options:
            raise OptionError("a list of safe private attributes is only used with the option retain_safe_private")
        self.safe_private = safe_private_for(self.options, safe_private)
        self._actions: dict[int, Action | None | object] = {}
        self._scoped: dict[tuple[int, Scope], Action] = {}
        self._mappings: set[tuple[str, str, str]] | None = None
        self._extra_safe_private = safe_private

    def __reduce__(self):  # picklable for worker processes
        return (Anonymizer, (self.key, sorted(self.options), None, self._extra_safe_private))

    # -- public ----------------------------------------------------------------------------

    def anonymize(
        self,
        dataset: Dataset,
        counts: Counter | None = None,
        *,
        in_place: bool = False,
        mappings: set[tuple[str, str, str]] | None = None,
    ) -> Dataset:
        """Return an anonymized copy of ``dataset`` (the original is not touched).

        Args:
            counts: if given, incremented per action taken (``"X"``, ``"U"``, …).
            in_place: change ``dataset`` itself instead of a copy (for a dataset just read
                from a file, as tree runs do: it saves the copy).
            mappings: if given, receives (kind, pseudonym, original) for every UID and patient
                pseudonym made, for a :class:`~medlib.anonymize.mapping.MappingStore`.
        """
        counts = Counter() if counts is None else counts
        shift = self.date_shift(dataset)
        ds = dataset if in_place else copy.deepcopy(dataset)
        self.anonymize_elements(ds, shift, counts, mappings, scope_of(ds))
        self._record(ds)
        if getattr(ds, "file_meta", None) is not None:  # only what Part 10 requires: no AE titles
            ds.file_meta = file_meta_for(ds.file_meta.get("MediaStorageSOPClassUID") or ds.get("SOPClassUID"),
                                         ds.get("SOPInstanceUID"), ds.file_meta.get("TransferSyntaxUID"))
        ds.preamble = None  # 128 bytes that another format (TIFF, a vendor's header) may fill
        return ds

    def date_shift(self, dataset: Dataset) -> int:
        """Days this patient's dates move under Modified Dates (by the original Patient ID)."""
        return self.key.date_shift_days(str(dataset.get("PatientID", "")))

    def anonymize_elements(self, ds: Dataset, shift: int, counts: Counter,
                           mappings: set[tuple[str, str, str]] | None = None, scope: Scope = NO_SCOPE) -> None:
        """Apply the profile to the elements of ``ds`` in place, recording nothing: for
        callers that anonymize a file piece by piece (:mod:`.rewrite`). ``scope``: where
        ``ds`` lies in its file (:func:`scope_of`, :func:`inside`)."""
        with self._recording(mappings):
            self._walk(ds, shift, counts, scope)

    def replace_uids(self, text: str, mappings: set[tuple[str, str, str]] | None = None) -> str:
        """Replace each UID of a UI value (``\\``-separated), as the U action does."""
        with self._recording(mappings):
            values = text.split("\\")
            return "\\".join(self._uids(values)) if len(values) > 1 else self._uids(text)

    @contextmanager
    def _recording(self, mappings: set[tuple[str, str, str]] | None):
        """While inside, every pseudonym made is added to ``mappings`` (if given)."""
        self._mappings = mappings
        try:
            yield
        finally:
            self._mappings = None

    @property
    def method_codes(self) -> list[tuple[str, str]]:
        """The CID 7050 (code, meaning) pairs this anonymizer records."""
        return [self.profile.basic_code] + sorted(self.profile.option_codes[o] for o in self.options)

    def mark_pixels_cleaned(self, ds: Dataset) -> None:
        """Record the Clean Pixel Data Option (CID 7050 113101) in an anonymized dataset."""
        code, meaning = self.profile.clean_pixel_code
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "DCM", meaning
        ds.DeidentificationMethodCodeSequence.append(item)
        ds.DeidentificationMethod = [*ds.DeidentificationMethod, meaning]

    # -- the interpreter -------------------------------------------------------------------

    def action(self, tag: int, scope: Scope = NO_SCOPE) -> Action | None:
        """The action the profile and options give ``tag`` where ``scope`` says it lies
        (None: no rule, it is kept). A combined code depends on the IOD and the place."""
        try:
            action = self._actions[tag]
        except KeyError:
            rule = self.profile.rule(tag)
            action = self._actions[tag] = (None if rule is None else _BY_SCOPE if "/" in rule.code(self.options)
                                           else rule.action(self.options))
        if action is not _BY_SCOPE:
            return action
        try:
            return self._scoped[tag, scope]
        except KeyError:
            rule = self.profile.rule(tag)
            requirement = self.profile.requirement(scope[0], scope[1], rule.keyword)
            action = self._scoped[tag, scope] = rule.action(self.options, requirement)
            return action

    def _walk(self, ds: Dataset, shift: int, counts: Counter, scope: Scope) -> None:
        # Tags first: an element is decoded only when the profile acts on it or it is a
        # sequence; the rest are written back as read.
        for tag in list(ds.keys()):
            action = self.action(tag, scope)
            if action is Action.CLEAN and tag >> 16 & 1:  # Retain Safe Private: keep the listed ones
                counts["C"] += 1
                creator = creator_tag(tag)
                if not self.safe_private.keeps(tag, str(ds[creator].value) if creator in ds else None):
                    del ds[tag]
                elif _is_sequence(ds, tag):
                    for item in ds[tag].value:
                        self._walk(item, shift, counts, inside(scope, tag))
                continue
            if action is None or action is Action.KEEP:  # kept, but items still follow the profile
                if _is_sequence(ds, tag):
                    for item in ds[tag].value:
                        self._walk(item, shift, counts, inside(scope, tag))
                if action is Action.KEEP:
                    counts["K"] += 1
                continue
            counts[action.value] += 1
            if action is Action.REMOVE:
                del ds[tag]
            else:
                self._apply(ds[tag], action, shift, counts, scope)

    def _apply(self, elem: DataElement, action: Action, shift: int, counts: Counter, scope: Scope) -> None:
        """Carry out Z, D, U, U* or C on one element (X and K are the walk's)."""
        vr = elem.VR
        if vr == "SQ":
            if action is Action.ZERO:
                elem.value = Sequence()
            else:  # C, D, U*: keep the structure, apply the profile inside
                for item in elem.value:
                    self._walk(item, shift, counts, inside(scope, elem.tag))
        elif elem.keyword in PSEUDONYMS and action in (Action.ZERO, Action.DUMMY):
            elem.value = self._pseudonym(elem)
        elif action is Action.ZERO:
            elem.value = _zero(vr)
        elif action is Action.UID or (action is Action.UID_IN_SEQUENCE and vr == "UI"):
            if vr == "UI":
                elem.value = self._uids(elem.value)
            else:
                elem.value = DUMMY_BY_VR.get(vr, b"")
        elif action is Action.DUMMY:
            elem.value = self._dummy(elem)
        elif action is Action.CLEAN:
            elem.value = self._clean(elem, shift)

    def _uid(self, original: str) -> str:
        new = self.key.uid(original)
        if self._mappings is not None:
            self._mappings.add(("uid", new, original))
        return new

    def _uids(self, value):
        if isinstance(value, (list, tuple, MultiValue)):
            return [self._uid(str(v)) for v in value if str(v)]
        return self._uid(str(value)) if value else value

    def _pseudonym(self, elem: DataElement) -> str:
        """The patient's keyed pseudonym (empty stays empty: nothing to link)."""
        if not elem.value:
            return ""
        purpose, template = PSEUDONYMS[elem.keyword]
        pseudonym = template.format(self.key.pseudonym(purpose, str(elem.value)))
        if self._mappings is not None:
            self._mappings.add((purpose, pseudonym, str(elem.value)))
        return pseudonym

    def _dummy(self, elem: DataElement):
        if elem.VR == "UI":
            return self._uids(elem.value)
        return DUMMY_BY_VR.get(elem.VR, b"")

    def _clean(self, elem: DataElement, shift: int):
        """C: dates move by the patient's shift under Modified Dates; anything else that can
        carry identifying text is emptied (the least information that is still valid)."""
        if "retain_modified_dates" in self.options and elem.VR in ("DA", "DT"):
            return _shift_dates(elem.value, elem.VR, shift)
        if "retain_modified_dates" in self.options and elem.VR == "TM":
            return elem.value  # times of day carry no date; intervals stay
        return _zero(elem.VR)

    def record_elements(self) -> Dataset:
        """The attributes that record what was done (PS3.15 E.1.1, PS3.3 C.7.1.1)."""
        ds = Dataset()
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = [f"medlib {__version__}"] + [m for _, m in self.method_codes]
        items = []
        for code, meaning in self.method_codes:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "DCM", meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        if "retain_full_dates" in self.options:
            ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
        elif "retain_modified_dates" in self.options:
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        else:
            ds.LongitudinalTemporalInformationModified = "REMOVED"
        return ds

    def _record(self, ds: Dataset) -> None:
        ds.update(self.record_elements())
        for keyword in PSEUDONYMS:  # Type 2 in every IOD: keep present, pseudonymous
            if keyword not in ds:
                setattr(ds, keyword, "")


def scope_of(ds: Dataset) -> Scope:
    """The scope of a file's top level: its SOP Class, no enclosing sequence."""
    meta = getattr(ds, "file_meta", None)
    sop_class = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    return (str(sop_class) if sop_class else None, ())


def inside(scope: Scope, tag: int) -> Scope:
    """The scope of the items of sequence ``tag`` found in ``scope``."""
    return scope[0], (*scope[1], keyword_for_tag(tag) or f"{tag:08X}")


def file_meta_for(sop_class: str | None, sop_instance: str | None, syntax: str | None) -> FileMetaDataset:
    """File meta information with only what PS3.10 requires, written by medlib."""
    meta = FileMetaDataset()
    if sop_class:
        meta.MediaStorageSOPClassUID = sop_class
    if sop_instance:
        meta.MediaStorageSOPInstanceUID = sop_instance
    if syntax:
        meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def _is_sequence(ds: Dataset, tag: int) -> bool:
    vr = ds.get_item(tag).VR  # the raw element: not decoded
    if vr is None:  # implicit VR: the dictionary says
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return False
    return vr == "SQ"


def _shift_dates(value, vr: str, days: int):
    if isinstance(value, (list, tuple, MultiValue)):
        return [_shift_one(str(v), vr, days) for v in value]
    return _shift_one(str(value), vr, days)


def _shift_one(value: str, vr: str, days: int) -> str:
    """Move the date part of a DA or DT value by ``days``; keep time and offset as they are."""
    value = value.strip()
    if len(value) < 8:
        return ""  # not a full date: nothing safe to keep
    try:
        date = dt.datetime.strptime(value[:8], "%Y%m%d").date() + dt.timedelta(days=days)
    except (ValueError, OverflowError):  # not a date, or shifted before year 1
        return ""
    return f"{date.year:04d}{date.month:02d}{date.day:02d}" + (value[8:] if vr == "DT" else "")
