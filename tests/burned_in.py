"""Burned-in text as scanners draw it, with the truth: for the OCR tests.

:func:`ultrasound` and :func:`angiography` make DICOM datasets whose frames look like the real
thing at the scale that matters to a text detector (a speckled sector on black, 8-bit, grey or
RGB; a noisy 10-bit field with dark vessels), with a patient banner, IDs, dates and an
institution drawn at the brightest value in the fonts and sizes scanners use (DejaVu Sans and
Sans Mono, Liberation Sans, Pillow's own; 11–16 px), single- or multi-frame. Each returns the
dataset, the strings it drew, and the mask of every pixel a glyph touched.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

FONT_FILES = ("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
              "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf")
US_IMAGE, US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.3.1"
XA_IMAGE, SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.12.1", "1.2.840.10008.5.1.4.1.1.7"


def font(size: int, index: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The ``index``-th of the scanner-like fonts installed here (Pillow's own when none is)."""
    available = [f for f in FONT_FILES if Path(f).exists()]
    if index < len(available):
        return ImageFont.truetype(available[index], size)
    return ImageFont.load_default(size=size)


@dataclass
class Patient:
    name: str = "DOE^JOHN"
    id: str = "MRN4815162"
    birth: dt.date = dt.date(1956, 3, 14)
    accession: str = "ACC77812"
    institution: str = "St Elsewhere Hospital"
    physician: str = "HOUSE^GREGORY"

    def lines(self, style: int) -> list[str]:
        """The banner a scanner of ``style`` draws (a few vendors' layouts)."""
        family, given = self.name.split("^")
        if style % 3 == 0:
            return [f"{family}, {given}", f"ID: {self.id}", f"DOB: {self.birth:%d.%m.%Y}", self.institution]
        if style % 3 == 1:
            return [f"{self.name}  {self.id}", f"{self.birth:%d-%b-%Y}".upper(), f"Acc {self.accession}",
                    f"Dr. {self.physician.split('^')[0].title()}"]
        return [f"{given} {family}", f"{self.id}  {self.birth:%m/%d/%Y}", self.institution.upper()]

    def identifiers(self) -> list[str]:
        """Every identifying token drawn, as OCR would read it (upper case)."""
        family, given = self.name.split("^")
        return [family, given, self.id, self.accession, f"{self.birth:%d.%m.%Y}", f"{self.birth:%m/%d/%Y}",
                f"{self.birth:%d-%b-%Y}".upper(), self.physician.split("^")[0]]


def _draw(frames: np.ndarray, lines: list[str], corner: str, size: int, style: int, level) -> np.ndarray:
    """Draw ``lines`` in a corner of every frame at ``level``; return the glyph mask."""
    rows, columns = frames.shape[1:3]
    mask_image = Image.new("L", (columns, rows), 0)
    draw = ImageDraw.Draw(mask_image)
    face = font(size, style)
    y = 8 if corner.startswith("top") else rows - 8 - len(lines) * (size + 4)
    for line in lines:
        width = draw.textbbox((0, 0), line, font=face)[2]
        x = 10 if corner.endswith("left") else columns - 10 - width
        draw.text((x, y), line, fill=255, font=face)
        y += size + 4
    mask = np.array(mask_image) > 96
    frames[:, mask] = level
    return mask


def _speckle(rng: np.random.Generator, rows: int, columns: int) -> np.ndarray:
    """An ultrasound sector: Rayleigh speckle fading with depth, black outside the fan."""
    y, x = np.mgrid[0:rows, 0:columns]
    apex_x, apex_y = columns / 2, 40
    radius = np.hypot(x - apex_x, y - apex_y)
    angle = np.arctan2(x - apex_x, y - apex_y)
    fan = (np.abs(angle) < 0.6) & (radius > 30) & (radius < rows - 70)
    tissue = rng.rayleigh(45, (rows, columns)) * np.exp(-radius / (2.5 * rows))
    tissue += 60 * np.exp(-((x - apex_x - 40) ** 2 + (y - rows / 2) ** 2) / 3000)  # a bright structure
    return np.where(fan, np.clip(tissue, 0, 200), 0)


def ultrasound(rng: np.random.Generator, patient: Patient, frames: int = 1, rgb: bool = False,
               size: int = 13, style: int = 0) -> tuple[Dataset, np.ndarray]:
    """An ultrasound image (or cine loop) with the patient's banner; returns (dataset, glyph mask)."""
    rows, columns = 480, 640
    pixels = np.stack([_speckle(rng, rows, columns) for _ in range(frames)]).astype(np.uint8)
    mask = _draw(pixels, patient.lines(style)[:2], "top-left", size, style, 255)
    mask |= _draw(pixels, patient.lines(style)[2:], "bottom-right", size - 1, style + 1, 255)
    if rgb:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    ds = _dataset(US_MULTIFRAME if frames > 1 else US_IMAGE, "US", patient, pixels, bits=8)
    return ds, mask


def angiography(rng: np.random.Generator, patient: Patient, frames: int = 3, size: int = 14,
                style: int = 1) -> tuple[Dataset, np.ndarray]:
    """A 10-bit X-ray angiography run: noisy field, dark vessels, text at the top value."""
    rows = columns = 512
    y, x = np.mgrid[0:rows, 0:columns]
    field = 620 - 0.3 * np.hypot(x - 256, y - 256)
    vessels = sum(np.exp(-((x - 180 - 60 * k - 40 * np.sin(y / (50 + 10 * k))) ** 2) / 60) for k in range(4))
    pixels = np.stack([field - 250 * vessels * (0.5 + 0.2 * f) + rng.normal(0, 12, (rows, columns))
                       for f in range(frames)])
    pixels = np.clip(pixels, 0, 900).astype(np.uint16)
    mask = _draw(pixels, patient.lines(style)[:2], "top-left", size, style, 1023)
    mask |= _draw(pixels, patient.lines(style)[2:], "top-right", size, style + 1, 1023)
    ds = _dataset(XA_IMAGE, "XA", patient, pixels, bits=10)
    return ds, mask


def instance(sop_class: str, modality: str) -> Dataset:
    """A new instance of ``sop_class``: file meta information, fresh UIDs, the modality."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    return ds


def _dataset(sop_class: str, modality: str, patient: Patient, pixels: np.ndarray, bits: int) -> Dataset:
    ds = instance(sop_class, modality)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient.name, patient.id, f"{patient.birth:%Y%m%d}"
    ds.AccessionNumber, ds.InstitutionName, ds.ReferringPhysicianName = (patient.accession, patient.institution,
                                                                         patient.physician)
    ds.BurnedInAnnotation = "YES"
    frames, rows, columns = pixels.shape[:3]
    ds.Rows, ds.Columns = rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    rgb = pixels.ndim == 4
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.PixelData = (pixels if frames > 1 else pixels[0]).tobytes()
    return ds
