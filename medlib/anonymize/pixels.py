"""Clean Pixel Data: blank the rectangles where a device burns text into its images.

Rules come from a small TOML file, in the spirit of RSNA CTP's pixel anonymizer scripts::

    [[rule]]
    name = "Acme Sono 800x600: patient banner"
    modality = "US"            # exact, case-insensitive; omitted: any
    manufacturer = "ACME*"     # glob, case-insensitive; omitted: any
    model = "*"                # glob on ManufacturerModelName
    rows = 600                 # omitted: any
    columns = 800
    rectangles = [[0, 0, 800, 60]]   # x (column), y (row), width, height; every frame

The first rule that matches a file applies, before OCR (:mod:`.ocr`) looks for the rest. A
file whose pixels cannot be decoded (no codec for its transfer syntax) is not cleaned: the
caller keeps it in quarantine.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from ..errors import MedlibError


class PixelRuleError(MedlibError):
    """The pixel rule file is malformed; the message names the rule and the key."""


@dataclass(frozen=True)
class PixelRule:
    name: str
    rectangles: tuple[tuple[int, int, int, int], ...]
    modality: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    rows: int | None = None
    columns: int | None = None

    def matches(self, ds: Dataset) -> bool:
        def glob(pattern: str | None, value) -> bool:
            return pattern is None or fnmatch.fnmatch(str(value or "").upper(), pattern.upper())

        return (
            (self.modality is None or str(ds.get("Modality", "")).upper() == self.modality.upper())
            and glob(self.manufacturer, ds.get("Manufacturer"))
            and glob(self.model, ds.get("ManufacturerModelName"))
            and (self.rows is None or ds.get("Rows") == self.rows)
            and (self.columns is None or ds.get("Columns") == self.columns)
        )


def load_rules(path: str | Path) -> tuple[PixelRule, ...]:
    """Read a pixel rule file (see the module docstring)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise PixelRuleError(f"cannot read pixel rules {path}: {e}") from None
    known = {"name", "modality", "manufacturer", "model", "rows", "columns", "rectangles"}
    rules = []
    for i, raw in enumerate(data.get("rule", [])):
        where = f"{path}: rule[{i}] ({raw.get('name', 'unnamed')})"
        unknown = set(raw) - known
        if unknown:
            raise PixelRuleError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        rectangles = raw.get("rectangles")
        if not rectangles or not all(isinstance(r, list) and len(r) == 4 and all(isinstance(v, int) and v >= 0 for v in r)
                                     for r in rectangles):
            raise PixelRuleError(f"{where}: rectangles must be a list of [x, y, width, height] of whole numbers")
        rules.append(PixelRule(
            name=raw.get("name", f"rule {i}"),
            rectangles=tuple(tuple(r) for r in rectangles),
            modality=raw.get("modality"),
            manufacturer=raw.get("manufacturer"),
            model=raw.get("model"),
            rows=raw.get("rows"),
            columns=raw.get("columns"),
        ))
    return tuple(rules)


def matching_rule(rules: tuple[PixelRule, ...], ds: Dataset) -> PixelRule | None:
    return next((r for r in rules if r.matches(ds)), None)


def decoded_frames(ds: Dataset) -> np.ndarray:
    """The pixel data as a writable array of frames (frames × rows × columns [× samples]).

    Raises whatever pydicom raises when it has no codec for the transfer syntax."""
    pixels = np.array(ds.pixel_array)  # decoded; a writable copy
    return pixels if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels[np.newaxis]


def blank(frames: np.ndarray, rectangles) -> None:
    """Set each rectangle (x, y, width, height) to 0 in every frame and sample, in place."""
    for x, y, width, height in rectangles:
        frames[:, y:y + height, x:x + width, ...] = 0


def store_frames(ds: Dataset, frames: np.ndarray) -> str | None:
    """Write cleaned ``frames`` back as the pixel data of ``ds`` and mark it free of burned-in
    text. Compressed pixel data is written uncompressed (Explicit VR Little Endian): returns
    what was done to the transfer syntax, or None."""
    note = None
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        note = f"decoded from {syntax.name} and written uncompressed"
    if str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
        ds.PhotometricInterpretation = "RGB"  # pydicom decodes YBR to RGB
    pixels = frames if int(ds.get("NumberOfFrames", 1) or 1) > 1 else frames[0]
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB" if ds.BitsAllocated <= 8 else "OW"
    if "PlanarConfiguration" in ds:
        ds.PlanarConfiguration = 0  # as decoded by pydicom
    ds.BurnedInAnnotation = "NO"
    return note
