"""DICOM SEG objects for the tests, made with highdicom over real CT series."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes


def sphere(shape: tuple[int, int, int], radius: float) -> np.ndarray:
    """A ball in the middle of a (z, y, x) grid."""
    z, y, x = np.indices(shape)
    centre = [(n - 1) / 2 for n in shape]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius ** 2


def write_seg(series: list[Path], mask: np.ndarray, target: Path, label: str = "lesion") -> Path:
    """A binary SEG of ``mask`` (z, y, x, in the slice order of ``series``) on that series."""
    sources = [pydicom.dcmread(p) for p in series]
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label, segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[description],
        series_instance_uid=hd.UID(), series_number=100, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="medhub tests", manufacturer_model_name="sphere", software_versions="1",
        device_serial_number="1")
    target.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(target)
    return target
