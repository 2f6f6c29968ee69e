"""The anonymizer: a small interpreter of PS3.15 Table E.1-1 over a pydicom Dataset.

For every attribute, at every depth of nested sequences, the profile (with the chosen
options) gives one action; :class:`Anonymizer` carries it out with the site key: UIDs and
the patient's name and ID become keyed pseudonyms, dates move by a per-patient shift when
dates are kept modified. Attributes the table does not list follow medlib's free-text policy
(:mod:`.free_text`), and the residual scan (:mod:`.residual`) then looks for the input's
identifying values in everything left. The result records what was done (PatientIdentityRemoved,
DeidentificationMethod and its CID 7050 codes, LongitudinalTemporalInformationModified) and
its file meta information matches the new SOP Instance UID; a :class:`Trace` says what was
done to one file.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
import datetime as dt
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from .. import __version__
from .keys import SiteKey
from .profile import Action, OptionError, Profile, SafePrivate, creator_tag, load_profile, safe_private_for
from .residual import Identifiers

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
CODE_MEANING, CODING_SCHEME_DESIGNATOR = 0x00080104, 0x00080102


@dataclass
class Trace:
    """What anonymizing one file did.

    Attributes:
        counts: actions taken, by code (``"X"``, ``"U"``, …).
        mappings: if not None, receives (kind, pseudonym, original) rows for a
            :class:`~medlib.anonymize.mapping.MappingStore`: every UID and patient pseudonym
            made, and the input's identifying values under the output's SOP Instance UID
            (kind ``identifiers``, for ``medlib anonymize check``).
        beyond_table: keywords of attributes outside Table E.1-1 that were acted on.
        residual: identifying values the residual scan overwrote (where, and what they were).
    """

    counts: Counter = field(default_factory=Counter)
    mappings: set[tuple[str, str, str]] | None = None
    beyond_table: set[str] = field(default_factory=set)
    residual: list[str] = field(default_factory=list)

    def fresh(self) -> Trace:
        """An empty trace that records what this one does (mappings or not)."""
        return Trace(mappings=None if self.mappings is None else set())

    def update(self, other: Trace) -> None:
        """Add what ``other`` recorded."""
        self.counts.update(other.counts)
        if self.mappings is not None and other.mappings:
            self.mappings |= other.mappings
        self.beyond_table |= other.beyond_table
        self.residual.extend(other.residual)


def _zero(vr: str):
    """A zero-length value of ``vr``."""
    return b"" if vr in BINARY_VRS else None


class Anonymizer:
    """De-identify datasets with the PS3.15 Basic Profile and options, keyed by a site key.

    Args:
        key: the site key (:meth:`SiteKey.load`).
        options: option names, e.g. ``{"retain_modified_dates", "clean_descriptors"}``;
            see :attr:`Profile.option_codes`.
        profile: the table (default: :func:`load_profile`).
        safe_private: the site's additions to the safe private attributes (Retain Safe Private).
        keep_text: the site's additions to the free-text attributes kept
            (:func:`~medlib.anonymize.free_text.load_keep_text`).

    Example:
        >>> from medlib.synthetic import write_ct_series
        >>> import pydicom, tempfile, secrets
        >>> ds = pydicom.dcmread(write_ct_series(tempfile.mkdtemp(), shape=(1, 4, 4))[0])
        >>> out = Anonymizer(SiteKey(secrets.token_bytes(32))).anonymize(ds)
        >>> str(out.PatientName).startswith("ANON^"), "InstitutionName" in out
        (True, False)
    """

    def __init__(self, key: SiteKey, options: Iterable[str] = (), profile: Profile | None = None,
                 safe_private: SafePrivate | None = None, keep_text: frozenset[int] = frozenset()):
        self.key = key
        self.profile = (profile or load_profile()).keeping_text(keep_text)
        self.options = self.profile.check_options(frozenset(options))
        if safe_private is not None and "retain_safe_private" not in self.options:
            raise OptionError("a list of safe private attributes is only used with the option retain_safe_private")
        self.safe_private = safe_private_for(self.options, safe_private)
        self._actions: dict[int, Action | None | object] = {}
        self._scoped: dict[tuple[int, Scope], Action] = {}
        self._trace = Trace()
        self._beyond: dict[int, str | None] = {}
        self._extra_safe_private, self._keep_text = safe_private, frozenset(keep_text)

    def __reduce__(self):  # picklable for worker processes
        return (Anonymizer, (self.key, sorted(self.options), None, self._extra_safe_private, self._keep_text))

    # -- public ----------------------------------------------------------------------------

    def anonymize(self, dataset: Dataset, trace: Trace | None = None, *, in_place: bool = False) -> Dataset:
        """Return an anonymized copy of ``dataset`` (the original is not touched).

        Args:
            trace: if given, filled with what was done (:class:`Trace`).
            in_place: change ``dataset`` itself instead of a copy (for a dataset just read
                from a file, as tree runs do: it saves the copy).
        """
        trace = Trace() if trace is None else trace
        shift = self.date_shift(dataset)
        identifiers = self.identifiers(dataset)
        ds = dataset if in_place else copy.deepcopy(dataset)
        self.anonymize_elements(ds, shift, trace, scope_of(ds))
        self._record(ds)
        if getattr(ds, "file_meta", None) is not None:  # only what Part 10 requires: no AE titles
            ds.file_meta = file_meta_for(ds.file_meta.get("MediaStorageSOPClassUID") or ds.get("SOPClassUID"),
                                         ds.get("SOPInstanceUID"), ds.file_meta.get("TransferSyntaxUID"))
        ds.preamble = None  # 128 bytes that another format (TIFF, a vendor's header) may fill
        self.finish(ds, identifiers, trace)
        return ds

    def identifiers(self, dataset: Dataset) -> Identifiers:
        """The identifying values of an input that the residual scan looks for."""
        return Identifiers.of(dataset, self.options)

    def finish(self, ds: Dataset, identifiers: Identifiers, trace: Trace) -> None:
        """The residual scan of an anonymized dataset, and its identifiers kept for ``check``."""
        trace.residual.extend(identifiers.scrub(ds))
        keep_identifiers(str(ds.get("SOPInstanceUID", "")), identifiers, trace)

    def date_shift(self, dataset: Dataset) -> int:
        """Days this patient's dates move under Modified Dates (by the original Patient ID)."""
        return self.key.date_shift_days(str(dataset.get("PatientID", "")))

    def anonymize_elements(self, ds: Dataset, shift: int, trace: Trace, scope: Scope = NO_SCOPE) -> None:
        """Apply the profile to the elements of ``ds`` in place, into ``trace``, without the
        record of what was done or the residual scan: for callers that anonymize a file piece by
        piece (:mod:`.rewrite`). ``scope``: where ``ds`` lies in its file (:func:`scope_of`,
        :func:`inside`)."""
        with self.recording(trace):
            self._walk(ds, shift, trace.counts, scope)

    def replace_uids(self, text: str, trace: Trace) -> str:
        """Replace each UID of a UI value (``\\``-separated), as the U action does."""
        with self.recording(trace):
            values = text.split("\\")
            return "\\".join(self._uids(values)) if len(values) > 1 else self._uids(text)

    @contextmanager
    def recording(self, trace: Trace):
        """While inside, pseudonyms made and attributes acted on are recorded in ``trace``."""
        previous, self._trace = self._trace, trace
        try:
            yield
        finally:
            self._trace = previous

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

    def local_code(self, designator: str | bytes | None) -> bool:
        """Whether a code of the scheme ``designator`` has its meaning replaced: a scheme
        private to a site (typed by people), under the Basic Profile without Clean Structured
        Content (with it, the residual scan reads the meaning)."""
        if designator is None or "clean_structured_content" in self.options:
            return False
        if isinstance(designator, bytes):
            designator = designator.decode("ascii", "replace")
        return self.profile.beyond.is_local_scheme(str(designator))

    def beyond_table(self, tag: int, local_code: bool = False) -> None:
        """Record that an attribute outside Table E.1-1 was acted on (``local_code``: a code
        meaning of a local coding scheme)."""
        if local_code:
            self._trace.beyond_table.add("CodeMeaning (local coding scheme)")
            return
        if tag not in self._beyond:
            rule = self.profile.rule(tag)
            self._beyond[tag] = (rule.keyword or rule.tag) if rule is not None and rule.beyond_table else None
        if self._beyond[tag]:
            self._trace.beyond_table.add(self._beyond[tag])

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
        local = CODE_MEANING in ds and CODING_SCHEME_DESIGNATOR in ds and self.local_code(
            ds[CODING_SCHEME_DESIGNATOR].value)
        for tag in list(ds.keys()):
            action = Action.DUMMY if local and tag == CODE_MEANING else self.action(tag, scope)
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
            self.beyond_table(tag, local and tag == CODE_MEANING)
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
        if self._trace.mappings is not None:
            self._trace.mappings.add(("uid", new, original))
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
        if self._trace.mappings is not None:
            self._trace.mappings.add((purpose, pseudonym, str(elem.value)))
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


def encode(ds: Dataset) -> bytes:
    """``ds`` as the bytes of a Part 10 file."""
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def keep_identifiers(sop_instance: str, identifiers: Identifiers, trace: Trace) -> None:
    """Add an output's input identifiers to the trace's mappings (for ``check``)."""
    if trace.mappings is not None and identifiers.values and sop_instance:
        trace.mappings.add(("identifiers", sop_instance, identifiers.to_json()))


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
