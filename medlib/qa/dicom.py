"""Saliency maps as DICOM: secondary captures in the source's study, so that a PACS viewer shows them.

Each map becomes one series of RGB secondary-capture images (highdicom's ``SCImage``), one per
source slice: the slice in a window, the map over it in a colour scale. Each image carries the
source slice's patient and study, its position, orientation and pixel spacing, and a Source Image
Sequence naming the slice it explains; files are written atomically.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ..datasets.series import Series
from .errors import QaError

#: The colour scale of the maps, and how much of the map shows over the slice at its strongest.
COLOURMAP, OPACITY = "inferno", 0.55


def fused(slice_values: np.ndarray, saliency: np.ndarray, low: float, high: float,
          scale: tuple[float, float]) -> np.ndarray:
    """An RGB uint8 image: the slice windowed to ``low``-``high``, the map (normalised by ``scale``) over it."""
    from matplotlib import colormaps

    gray = np.clip((slice_values - low) / (high - low), 0, 1)[..., None]
    weight = np.clip((saliency - scale[0]) / ((scale[1] - scale[0]) or 1.0), 0, 1)
    colour = colormaps[COLOURMAP](weight)[..., :3]
    alpha = OPACITY * weight[..., None]
    return np.round((gray * (1 - alpha) + colour * alpha) * 255).astype(np.uint8)


def patient_orientation(cosines) -> tuple[str, str]:
    """The Patient Orientation (0020,0020) of rows and columns from Image Orientation (Patient):
    each direction's letters by its components, largest first (LPS: +x left, +y posterior, +z head)."""
    letters = (("R", "L"), ("A", "P"), ("F", "H"))
    out = []
    for direction in (np.asarray(cosines[:3], float), np.asarray(cosines[3:], float)):
        order = np.argsort(-np.abs(direction))
        out.append("".join(letters[i][int(direction[i] > 0)] for i in order if abs(direction[i]) > 1e-3))
    return out[0], out[1]


def write_overlays(series: Series, maps: Mapping[str, np.ndarray], titles: Mapping[str, str], folder: Path, *,
                   window: tuple[float, float], manufacturer: str) -> list[Path]:
    """Write ``maps`` ((z, y, x) on the series' grid) over ``series`` into ``folder``/<method>/."""
    import highdicom as hd

    values = series.read().astype(np.float32)
    width, level = window
    low, high = level - width / 2, level + width / 2
    written = []
    for number, (method, saliency) in enumerate(maps.items(), start=1):
        if saliency.shape != values.shape:
            raise QaError(f"the {method} map is {saliency.shape}, the series {values.shape}: save maps made on the "
                          "series' own grid (a transform that keeps it)")
        scale = (float(np.percentile(saliency, 1)), float(np.percentile(saliency, 99.5)))
        target = folder / method
        target.mkdir(parents=True, exist_ok=True)
        series_uid = generate_uid()
        for k, source in enumerate(series.slices):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = pydicom.dcmread(source.path, stop_before_pixels=True)
            image = hd.sc.SCImage.from_ref_dataset(
                ref, fused(values[k], saliency[k], low, high, scale), photometric_interpretation="RGB",
                bits_allocated=8, coordinate_system="PATIENT", series_instance_uid=series_uid,
                series_number=9000 + number, sop_instance_uid=generate_uid(), instance_number=k + 1,
                manufacturer=manufacturer, pixel_spacing=tuple(float(v) for v in ref.PixelSpacing),
                patient_orientation=patient_orientation(ref.ImageOrientationPatient),
                transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian)
            image.SeriesDescription = f"{titles[method]} (medlib.qa)"[:64]
            image.ImagePositionPatient = ref.ImagePositionPatient
            image.ImageOrientationPatient = ref.ImageOrientationPatient
            if "SliceThickness" in ref:
                image.SliceThickness = ref.SliceThickness
            image.FrameOfReferenceUID = ref.get("FrameOfReferenceUID", "") or None
            image.DerivationDescription = f"{titles[method]} saliency map over the source image"[:1024]
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ref.SOPClassUID, ref.SOPInstanceUID
            image.SourceImageSequence = [item]
            path = target / f"SC{k + 1:06d}.dcm"
            tmp = target / f".{path.name}.{os.getpid()}"
            image.save_as(tmp, enforce_file_format=True)
            tmp.replace(path)
            written.append(path)
    return written
