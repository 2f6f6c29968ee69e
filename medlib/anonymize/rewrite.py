"""Anonymize a Part 10 file at the byte level: what the profile leaves alone is copied as read.

Decoding every element into Python objects and encoding it again is where a pydicom-based
de-identifier spends its time, yet most elements of an image (pixel data, geometry, acquisition
parameters) are kept as they are. :class:`PartialFile` scans the file's element headers only,
and sorts each top-level element by what the profile does with it:

- kept (no rule, or K): its bytes are copied unchanged;
- removed (X) and group lengths: dropped; zero-length (Z): a bare header is written;
- a UID replaced (U): the value is mapped with the site key in place;
- everything else (dummies, cleaning, pseudonyms, sequences, private attributes under Retain
  Safe Private) and the few attributes a tree run looks at (:data:`CONTEXT`): decoded by
  pydicom into a small dataset that :class:`~medlib.anonymize.Anonymizer` anonymizes exactly as
  it would the whole file.

The residual scan first looks for the input's identifying values in the bytes of the values it
would read (text, private binary, and every value the anonymizer made); only a file where one
turns up is decoded whole, scanned and written again.

The output is the same dataset as :meth:`Anonymizer.anonymize` makes of the whole file (a test
holds them equal on every pydicom test file). Anything the scanner does not expect (big endian,
deflate, a bare dataset without the Part 10 header, an explicit-VR file whose VRs do not parse,
a truncated element) raises :class:`NotRewritable`, and the caller reads the file the ordinary
way instead.
"""

from __future__ import annotations

import struct
from io import BytesIO

import pydicom

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_data_element
from pydicom.uid import UID

from .anonymizer import (CODE_MEANING, CODING_SCHEME_DESIGNATOR, DUMMY_BY_VR, IMPLEMENTATION_CLASS_UID,
                         IMPLEMENTATION_VERSION_NAME, PSEUDONYMS, Anonymizer, Scope, Trace, encode, inside,
                         keep_identifiers, scope_of)
from .profile import Action, creator_tag
from .residual import identifying_tags, reads

#: Also decoded (into :attr:`PartialFile.dataset`, as read): what a tree run reads from every
#: file (to name the output, find missing UIDs, truncated pixel data and burned-in candidates)
#: and what the walk needs (the character set, the patient whose date shift applies, the
#: identifying values the residual scan looks for).
CONTEXT = frozenset({
    0x00080005, 0x00080016, 0x00080018, 0x00080060, 0x0020000D, 0x0020000E, 0x00100020,
    0x00280002, 0x00280004, 0x00280008, 0x00280010, 0x00280011, 0x00280100, 0x00280301,
}) | frozenset(identifying_tags())
_PSEUDONYM_TAGS = frozenset(tag_for_keyword(keyword) for keyword in PSEUDONYMS)

PIXEL_DATA = 0x7FE00010
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"))
SHORT_VRS = frozenset((b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
                       b"PN", b"SH", b"SL", b"SS", b"ST", b"SV", b"TM", b"UI", b"UL", b"US", b"UV"))
_EXPLICIT = struct.Struct("<HH2sH").unpack_from
_IMPLICIT = struct.Struct("<HHL").unpack_from
_LENGTH = struct.Struct("<L").unpack_from
_GROUP = struct.Struct("<H").unpack_from
_PACK_EXPLICIT_SHORT = struct.Struct("<HH2sH").pack
_PACK_EXPLICIT_LONG = struct.Struct("<HH2s2xL").pack
_PACK_IMPLICIT = struct.Struct("<HHL").pack


#: An element as the scanner finds it: (tag, explicit VR or None, start, value start, value
#: end, next element); the value end differs from the next element's start after a delimiter.
Element = tuple[int, "bytes | None", int, int, int, int]


_DUMMIES: dict[tuple[int, bytes, bool], bytes] = {}
_RECORDS: dict[tuple[Anonymizer, bool], dict[int, bytes]] = {}


class NotRewritable(Exception):
    """This file needs the ordinary (whole-dataset) path; the message says why."""


def _vr_of(tag: int, vr: bytes | None, undefined: bool) -> bytes:
    """The VR of an element: explicit, else (implicit VR, or UN as pydicom reads it) the
    dictionary's."""
    if vr is not None and vr != b"UN":
        return vr
    if undefined:
        return b"SQ"
    try:
        return _DICTIONARY_VRS[tag]
    except KeyError:
        try:
            vr = dictionary_VR(tag).encode()[:2]  # "US or SS" and the like: only SQ and UI matter here
        except KeyError:
            vr = b"UN"
        _DICTIONARY_VRS[tag] = vr
        return vr


_DICTIONARY_VRS: dict[int, bytes] = {}
#: Explicit VRs that need a look at the dictionary or the items.
_NOT_PLAIN = frozenset((b"SQ", b"UN"))
#: The VRs whose values the residual scan reads (:func:`.residual.reads`), in a standard (0) and
#: a private (1) element.
_READ_BY_SCAN = {private: frozenset(vr for vr in LONG_VRS | SHORT_VRS if reads(vr.decode(), bool(private)))
                 for private in (0, 1)}


def _text(raw: bytes | None) -> str:
    return raw.decode("ascii", "replace").rstrip("\0 ") if raw else ""


class _Scanner:
    """Element headers of a little-endian dataset, explicit or implicit VR."""

    def __init__(self, buf: bytes, implicit: bool):
        self.buf, self.implicit, self.end = buf, implicit, len(buf)
        #: undefined-length values found so far: value start → (value end, next, items)
        self._undefined: dict[int, tuple[int, int, list[tuple[int, int]]]] = {}
        #: the elements of undefined-length items: contents start → (contents end, elements)
        self._contents: dict[int, tuple[int, list[Element]]] = {}

    def header(self, pos: int) -> tuple[int, bytes | None, int, int]:
        """(tag, explicit VR or None, value length, value start) of the element at ``pos``."""
        if pos + 8 > self.end:
            raise NotRewritable("an element header is cut off")
        if self.implicit:
            group, element, length = _IMPLICIT(self.buf, pos)
            return group << 16 | element, None, length, pos + 8
        group, element, vr, length = _EXPLICIT(self.buf, pos)
        if group == 0xFFFE:  # items and delimiters have no VR
            return group << 16 | element, None, _LENGTH(self.buf, pos + 4)[0], pos + 8
        if vr in LONG_VRS:
            if pos + 12 > self.end:
                raise NotRewritable("an element header is cut off")
            return group << 16 | element, vr, _LENGTH(self.buf, pos + 8)[0], pos + 12
        if vr not in SHORT_VRS:
            raise NotRewritable(f"({group:04X},{element:04X}) has no valid explicit VR")
        return group << 16 | element, vr, length, pos + 8

    def elements(self, pos: int, end: int, stop_group: int | None = None) -> list[Element]:
        """The elements from ``pos`` to ``end`` (or up to the first of another group than
        ``stop_group``): (tag, VR or None, start, value start, value end, next element)."""
        found = self._contents.get(pos)
        if found is not None and found[0] == end:  # an undefined-length item, read when its end was sought
            return found[1]
        return self._scan(pos, end, stop_group)[0]

    def _scan(self, pos: int, end: int, stop_group: int | None = None,
              delimited: bool = False) -> tuple[list[Element], int]:
        """The elements from ``pos`` (see :meth:`elements`) and where they end; ``delimited``:
        up to an item delimiter, returning the position after it."""
        out, buf, implicit = [], self.buf, self.implicit
        while pos < end:
            if stop_group is not None and (pos + 2 > end or _GROUP(buf, pos)[0] != stop_group):
                break
            if not implicit and pos + 12 <= end:  # the common case, inline: explicit VR, short form
                group, element, vr, length = _EXPLICIT(buf, pos)
                if vr in SHORT_VRS and group != 0xFFFE:
                    following = pos + 8 + length
                    if following > end:
                        raise NotRewritable(f"({group:04X},{element:04X}) is cut off")
                    out.append((group << 16 | element, vr, pos, pos + 8, following, following))
                    pos = following
                    continue
            tag, vr, length, start = self.header(pos)
            if tag >> 16 == 0xFFFE:
                if delimited and tag == ITEM_END:
                    return out, start
                raise NotRewritable("an item tag outside a sequence")
            if length == UNDEFINED:
                value_end, following = self._undefined_end(start, vr)
            else:
                value_end = following = start + length
            if following > end:
                raise NotRewritable(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is cut off")
            out.append((tag, vr, pos, start, value_end, following))
            pos = following
        if delimited:
            raise NotRewritable("a sequence item has no delimiter")
        return out, pos

    def items(self, pos: int, end: int) -> list[tuple[int, int]]:
        """(start, end) of the contents of each item of the sequence value from ``pos`` to ``end``."""
        if pos in self._undefined:
            return self._undefined[pos][2]
        out = []
        while pos < end:
            start, content_end, pos = self._item_at(pos)
            out.append((start, content_end))
        if pos != end:
            raise NotRewritable("a sequence item overruns its sequence")
        return out

    def _undefined_end(self, pos: int, vr: bytes | None) -> tuple[int, int]:
        """(value end, next element) of an undefined-length sequence or encapsulated pixel data."""
        if pos in self._undefined:
            return self._undefined[pos][:2]
        if vr == b"UN":  # implicit VR inside explicit (PS3.5 6.2.2): rare, left to pydicom
            raise NotRewritable("an undefined-length UN element")
        value_start, items = pos, []
        while True:
            if self.header(pos)[0] == SEQUENCE_END:
                self._undefined[value_start] = (pos, pos + 8, items)
                return pos, pos + 8
            start, content_end, pos = self._item_at(pos)
            items.append((start, content_end))

    def _item_at(self, pos: int) -> tuple[int, int, int]:
        """(contents start, contents end, next) of the sequence item at ``pos``."""
        tag, _, length, start = self.header(pos)
        if tag != ITEM:
            raise NotRewritable("a sequence holds something other than items")
        if length == UNDEFINED:  # its elements are read to find its end: kept for :meth:`elements`
            found, following = self._scan(start, self.end, delimited=True)
            self._contents[start] = (following - 8, found)
            return start, following - 8, following
        if start + length > self.end:
            raise NotRewritable("a sequence item is cut off")
        return start, start + length, start + length


class PartialFile:
    """A Part 10 file, anonymized element by element at the byte level.

    Args:
        data: the whole file.
        anonymizer: the anonymizer to apply.

    Attributes:
        dataset: the :data:`CONTEXT` attributes as read (original values), with ``file_meta``
            holding the transfer syntax and SOP class.
        pixel_length: the length of native (defined-length) Pixel Data, or None.

    Raises:
        NotRewritable: the file needs the ordinary path.
    """

    def __init__(self, data: bytes, anonymizer: Anonymizer):
        if len(data) < 132 or data[128:132] != b"DICM":
            raise NotRewritable("no Part 10 header")
        self.data, self.anonymizer = data, anonymizer
        meta_scan = _Scanner(data, implicit=False).elements(132, len(data), stop_group=0x0002)
        meta = {tag: data[value_start:value_end] for tag, _, _, value_start, value_end, _ in meta_scan}
        self.syntax = UID(_text(meta.get(0x00020010)))
        if not self.syntax.is_transfer_syntax or not self.syntax.is_little_endian or self.syntax.is_deflated:
            raise NotRewritable(f"transfer syntax {self.syntax or 'missing'}")
        self.implicit = self.syntax.is_implicit_VR
        self._scanner = _Scanner(data, self.implicit)
        self._elements = self._scanner.elements(meta_scan[-1][5] if meta_scan else 132, len(data))
        if any(a[0] >= b[0] for a, b in zip(self._elements, self._elements[1:])):
            raise NotRewritable("attributes out of order or repeated")
        self.pixel_length: int | None = None
        context = []
        for tag, _, start, value_start, value_end, following in self._elements:
            if tag in CONTEXT:
                context.append(data[start:following])
            elif tag == PIXEL_DATA and value_end == following:
                self.pixel_length = value_end - value_start
        self.dataset = read_dataset(BytesIO(b"".join(context)), self.implicit, True)
        self.sop_class = _text(meta.get(0x00020002)) or str(self.dataset.get("SOPClassUID", ""))
        self.dataset.file_meta = FileMetaDataset()
        self.dataset.file_meta.TransferSyntaxUID = self.syntax
        if self.sop_class:
            self.dataset.file_meta.MediaStorageSOPClassUID = self.sop_class
        self._encodings = convert_encodings(self.dataset.get("SpecificCharacterSet", "ISO_IR 6"))
        self._replaced: dict[int, str] = {}
        #: the output's values the residual scan reads (:meth:`_rewrite` fills it)
        self._scanned: list[bytes] = []

    def anonymize(self, trace: Trace | None = None) -> bytes:
        """The anonymized file; ``trace`` as for :meth:`Anonymizer.anonymize`."""
        trace = Trace() if trace is None else trace
        anonymizer = self.anonymizer
        shift = anonymizer.date_shift(self.dataset)
        identifiers = anonymizer.identifiers(self.dataset)
        record = self._record()
        scope = scope_of(self.dataset)
        self._scanned = list(record.values())
        with anonymizer.recording(trace):
            parts = [p for p in self._rewrite(self._elements, shift, trace, scope, top=True) if p[0] not in record]
        present = {tag for tag, _ in parts}
        parts += record.items()
        for tag, vr in ((0x00100010, b"PN"), (0x00100020, b"LO")):  # Type 2 everywhere: present, empty
            if tag not in present:
                parts.append((tag, self._header(tag, vr, 0)))
        parts.sort(key=_first)
        meta = _encode_file_meta(self.sop_class, self.output_uid(0x00080018), self.syntax)
        data = b"\0" * 128 + b"DICM" + meta + b"".join(p for _, p in parts)
        if identifiers.in_bytes(b"".join(self._scanned), self._encodings[0]):
            ds = pydicom.dcmread(BytesIO(data))  # rare: decode, scan, write again
            anonymizer.finish(ds, identifiers, trace)
            return encode(ds)
        keep_identifiers(self.output_uid(0x00080018), identifiers, trace)
        return data

    def output_uid(self, tag: int) -> str:
        """A top-level UID of the output (after :meth:`anonymize`): replaced, or kept."""
        return self._replaced.get(tag) or str(self.dataset.get(tag, ""))

    def _record(self) -> dict[int, bytes]:
        """The record of what was done, encoded (the same for every file of one anonymizer)."""
        key = (self.anonymizer, self.implicit)
        if key not in _RECORDS:
            if len(_RECORDS) > 16:
                _RECORDS.clear()
            _RECORDS[key] = dict(self._encode(self.anonymizer.record_elements()))
        return _RECORDS[key]

    def _rewrite(self, elements: list[Element], shift: int, trace: Trace, scope: Scope,
                 top: bool = False) -> list[tuple[int, bytes]]:
        """The anonymized elements, as (tag, bytes): the walk of :class:`Anonymizer`, with
        decoding only where a value must be made."""
        data, anonymizer, out, counts, scanned = self.data, self.anonymizer, [], trace.counts, self._scanned
        action_of = anonymizer.action
        creators: dict[int, str] | None = None
        for tag, raw_vr, start, value_start, value_end, following in elements:
            action = action_of(tag, scope)
            # the meaning of a code of a local coding scheme is replaced
            local = tag == CODE_MEANING and anonymizer.local_code(
                next((data[e[3]:e[4]] for e in elements if e[0] == CODING_SCHEME_DESIGNATOR), None))
            if local:
                action = Action.DUMMY
            if action is None and raw_vr is not None and raw_vr not in _NOT_PLAIN and tag & 0xFFFF:
                out.append((tag, data[start:following]))  # the common case: kept as read
                if raw_vr in _READ_BY_SCAN[tag >> 16 & 1]:
                    scanned.append(data[value_start:value_end])
                continue
            if action is not None and action is not Action.KEEP:
                anonymizer.beyond_table(tag, local)
            vr = _vr_of(tag, raw_vr, value_end != following)
            if action is Action.CLEAN and tag >> 16 & 1:  # Retain Safe Private: keep the listed ones
                counts["C"] += 1
                if creators is None:
                    creators = {e[0]: data[e[3]:e[4]].decode("latin-1") for e in elements
                                if e[0] >> 16 & 1 and 0x10 <= e[0] & 0xFFFF <= 0xFF}
                if anonymizer.safe_private.keeps(tag, creators.get(creator_tag(tag))):
                    if vr == b"SQ":
                        out.append((tag, self._sequence(tag, value_start, value_end, shift, trace, scope)))
                    else:
                        out.append((tag, data[start:following]))
                        if vr in _READ_BY_SCAN[1]:
                            scanned.append(data[value_start:value_end])
                continue
            if vr == b"SQ" and raw_vr == b"UN":  # an implicit-VR sequence inside: pydicom reads it
                out.extend(self._decode(data[start:following], shift, trace, scope))
                continue
            if tag & 0xFFFF == 0 or action is Action.REMOVE:  # group lengths: as pydicom's writer
                if action is not None:
                    counts[action.value] += 1
                continue
            if vr == b"SQ":
                if action is not None:
                    counts["K" if action is Action.KEEP else action.value] += 1
                if action is Action.ZERO:
                    out.append((tag, self._header(tag, vr, 0)))
                else:  # its items follow the profile
                    out.append((tag, self._sequence(tag, value_start, value_end, shift, trace, scope)))
            elif action is None or action is Action.KEEP:
                if action is Action.KEEP:
                    counts["K"] += 1
                out.append((tag, data[start:following]))
                if vr in _READ_BY_SCAN[tag >> 16 & 1]:
                    scanned.append(data[value_start:value_end])
            elif action is Action.ZERO and tag not in _PSEUDONYM_TAGS:
                counts["Z"] += 1
                out.append((tag, self._header(tag, vr, 0)))
            elif action in (Action.UID, Action.UID_IN_SEQUENCE, Action.DUMMY) and vr == b"UI":
                counts[action.value] += 1
                text = anonymizer.replace_uids(_text(data[value_start:value_end]), trace)
                if top:
                    self._replaced[tag] = text
                value = text.encode("ascii")
                value += b"\0" * (len(value) % 2)
                out.append((tag, self._header(tag, vr, len(value)) + value))
            elif action is Action.DUMMY and tag not in _PSEUDONYM_TAGS:
                counts["D"] += 1
                out.append((tag, self._dummy(tag, vr)))
                scanned.append(out[-1][1])
            else:  # a cleaned value or a pseudonym: pydicom decodes, the anonymizer makes it
                out.extend(self._decode(data[start:following], shift, trace, scope))
        return out

    def _sequence(self, tag: int, start: int, end: int, shift: int, trace: Trace, scope: Scope) -> bytes:
        """A sequence whose items follow the profile."""
        scope = inside(scope, tag)
        items = b"".join(self._item(item_start, item_end, shift, trace, scope)
                         for item_start, item_end in self._scanner.items(start, end))
        return self._header(tag, b"SQ", len(items)) + items

    def _item(self, start: int, end: int, shift: int, trace: Trace, scope: Scope) -> bytes:
        parts = self._rewrite(self._scanner.elements(start, end), shift, trace, scope)
        body = b"".join(p for _, p in sorted(parts, key=_first))
        return _PACK_IMPLICIT(0xFFFE, 0xE000, len(body)) + body

    def _decode(self, raw: bytes, shift: int, trace: Trace, scope: Scope) -> list[tuple[int, bytes]]:
        """Elements through pydicom and the anonymizer's walk."""
        ds = read_dataset(BytesIO(raw), self.implicit, True, parent_encoding=self._encodings)
        self.anonymizer.anonymize_elements(ds, shift, trace, scope)
        made = self._encode(ds)
        self._scanned.extend(p for _, p in made)  # made values are read whole
        return made

    def _encode(self, ds: Dataset) -> list[tuple[int, bytes]]:
        out = DicomBytesIO()
        out.is_little_endian, out.is_implicit_VR = True, self.implicit
        spans = []
        for tag in ds.keys():
            if tag.element != 0:  # group lengths, as pydicom's writer
                start = out.tell()
                write_data_element(out, ds.get_item(tag), self._encodings)
                spans.append((tag, start, out.tell()))
        written = out.getvalue()
        return [(tag, written[start:end]) for tag, start, end in spans]

    def _dummy(self, tag: int, vr: bytes) -> bytes:
        """The element with its dummy value, encoded as pydicom encodes it (ASCII: the same in
        every character set)."""
        key = (tag, vr, self.implicit)
        if key not in _DUMMIES:
            out = DicomBytesIO()
            out.is_little_endian, out.is_implicit_VR = True, self.implicit
            write_data_element(out, DataElement(tag, vr.decode(), DUMMY_BY_VR.get(vr.decode(), b"")))
            _DUMMIES[key] = out.getvalue()
        return _DUMMIES[key]

    def _header(self, tag: int, vr: bytes, length: int) -> bytes:
        if self.implicit:
            return _PACK_IMPLICIT(tag >> 16, tag & 0xFFFF, length)
        if vr in LONG_VRS:
            return _PACK_EXPLICIT_LONG(tag >> 16, tag & 0xFFFF, vr, length)
        return _PACK_EXPLICIT_SHORT(tag >> 16, tag & 0xFFFF, vr, length)


def _encode_file_meta(sop_class: str, sop_instance: str, syntax: str) -> bytes:
    """The file meta information of :func:`file_meta_for`, as pydicom's ``write_file_meta_info``
    writes it (group length and version added)."""
    body = _PACK_EXPLICIT_LONG(0x0002, 0x0001, b"OB", 2) + b"\0\1"
    for element, vr, text in ((0x0002, b"UI", sop_class), (0x0003, b"UI", sop_instance), (0x0010, b"UI", syntax),
                              (0x0012, b"UI", IMPLEMENTATION_CLASS_UID), (0x0013, b"SH", IMPLEMENTATION_VERSION_NAME)):
        if text:
            value = text.encode("ascii")
            value += (b"\0" if vr == b"UI" else b" ") * (len(value) % 2)
            body += _PACK_EXPLICIT_SHORT(0x0002, element, vr, len(value)) + value
    return _PACK_EXPLICIT_SHORT(0x0002, 0x0000, b"UL", 4) + struct.pack("<L", len(body)) + body


def _first(part: tuple[int, bytes]) -> int:
    return part[0]
