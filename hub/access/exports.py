"""What an output holds, looked at before its owners decide whether it may leave: DICOM files,
identifying values of the datasets it may come from, small counts in tables; and a preview of
images and tables for the people who review it.

The checks flag; they do not decide. A flag is a reason for the reviewing owner to look, and
its absence proves nothing (a pixel can show a name that no text search finds).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from html import escape
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from medlib.anonymize.residual import Identifiers, identifying_tags

#: Previewed as images, with the type they are served as (never SVG: it may carry script).
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
#: Read as tables, with their delimiter.
TABLE_TYPES = {".csv": ",", ".tsv": "\t"}
PREVIEW_ROWS = 20


def is_dicom(data: bytes) -> bool:
    """Whether ``data`` is a DICOM file: a Part 10 preamble, or a data set pydicom reads."""
    if data[128:132] == b"DICM":
        return True
    try:
        pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, Exception):  # noqa: BLE001 - anything unreadable is not DICOM here
        return False
    return True


def identifiers_of(files: Iterable[Path]) -> Identifiers:
    """The identifying values (:mod:`medlib.anonymize.residual`) in the headers of every DICOM
    file of ``files``."""
    values: set[tuple[str, str]] = set()
    tags = list(identifying_tags())
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
        except (InvalidDicomError, OSError, Exception):  # noqa: BLE001 - not DICOM, or unreadable: no values
            continue
        values.update(Identifiers.of(ds).values)
    return Identifiers(tuple(sorted(values)))


def found_identifiers(data: bytes, identifiers: Identifiers) -> list[str]:
    """What of ``identifiers`` ``data`` holds (by kind, never the values), as whole words, any case."""
    if not identifiers.in_bytes(data, "utf-8") and not identifiers.in_bytes(data, "latin-1"):
        return []
    pattern = identifiers.pattern
    text = data.decode("utf-8", errors="replace")
    return sorted({identifiers.what(m.group(0)) for m in pattern.finditer(text)})


def small_cells(data: bytes, delimiter: str, threshold: int) -> list[str]:
    """Columns of a table holding counts from 1 to ``threshold - 1`` (whole numbers, the column
    entirely so), each with how many such cells: a small cell can single a patient out."""
    rows = list(csv.reader(io.StringIO(data.decode("utf-8", errors="replace")), delimiter=delimiter))
    if len(rows) < 2:
        return []
    header, body = rows[0], rows[1:]
    out = []
    for i, name in enumerate(header):
        cells = [r[i].strip() for r in body if i < len(r) and r[i].strip()]
        if not cells or not all(c.lstrip("-").isdigit() for c in cells):
            continue
        small = sum(1 for c in cells if 0 < int(c) < threshold)
        if small:
            out.append(f"{name}: {small} count(s) below {threshold}")
    return out


@dataclass(frozen=True)
class Inspection:
    """What the checks found: the file's kind and the flags a reviewer should look at."""

    kind: str  # dicom, image, table, text or binary
    flags: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "flags": list(self.flags)}


def inspect(name: str, data: bytes, identifiers: dict[str, Identifiers], threshold: int) -> Inspection:
    """The checks of one output named ``name``: ``identifiers`` are those of each dataset the
    requester's servers could read."""
    suffix = Path(name).suffix.lower()
    flags = []
    if is_dicom(data):
        kind = "dicom"
        flags.append("a DICOM file: images with their headers leave as they are")
    elif suffix in IMAGE_TYPES:
        kind = "image"
    elif suffix in TABLE_TYPES:
        kind = "table"
        flags += [f"small cells: {line}" for line in small_cells(data, TABLE_TYPES[suffix], threshold)]
    else:
        kind = "text" if b"\0" not in data[:8192] else "binary"
    for dataset, found in identifiers.items():
        hits = found_identifiers(data, found)
        if hits:
            flags.append(f"identifiers of {dataset}: {', '.join(hits)}")
    return Inspection(kind, tuple(flags))


def preview(name: str, data: bytes) -> tuple[str, bytes]:
    """A preview for a reviewer: (content type, body): the image itself, the first rows of a
    table as HTML, the start of a text; nothing for other files."""
    suffix = Path(name).suffix.lower()
    if suffix in IMAGE_TYPES and not is_dicom(data):
        return IMAGE_TYPES[suffix], data
    if suffix in TABLE_TYPES:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8", errors="replace")), delimiter=TABLE_TYPES[suffix]))
        head, body = (rows[0], rows[1:PREVIEW_ROWS + 1]) if rows else ([], [])
        html = ("<table class='table table-sm'><thead><tr>" + "".join(f"<th>{escape(c)}</th>" for c in head) +
                "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>"
                                                 for r in body) + f"</tbody></table><p>{len(rows) - 1} row(s)</p>")
        return "text/html; charset=utf-8", html.encode()
    if b"\0" not in data[:8192] and not is_dicom(data):
        return "text/plain; charset=utf-8", data[:4096]
    return "text/plain; charset=utf-8", b"(no preview: a binary file)"
