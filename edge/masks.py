"""The site's segmentations as masks on their image series: DICOM SEG and RT Structure Sets.

A SEG is read with highdicom (its frames mapped to the series' instances). An RTSTRUCT's closed
planar contours, in patient coordinates, are put on the series' grid and filled with
scikit-image (``skimage.draw.polygon``, pixel centres inside the polygon); contours on one slice
combine even-odd, so that an inner contour is a hole, as PS3.3 C.8.8.6 describes. (rt-utils, the
usual reader, pins opencv-python's GUI build and the ``dataclasses`` backport; its filling is the
same rule with OpenCV.)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom

from medlib.datasets.series import Series

#: Modalities of the segmentation objects that features harvests use.
MASK_MODALITIES = ("SEG", "RTSTRUCT")


class MaskError(ValueError):
    """A segmentation that cannot be put on its series; the message says why."""


def referenced_series(path: str | Path) -> str:
    """The Series Instance UID of the images a SEG or RTSTRUCT segments."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if ds.Modality == "SEG":
        return str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
    if ds.Modality == "RTSTRUCT":
        frame = ds.ReferencedFrameOfReferenceSequence[0]
        return str(frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID)
    raise MaskError(f"{Path(path).name} is a {ds.Modality}, not a SEG or an RTSTRUCT")


def masks(path: str | Path, series: Series, sops: list[str]) -> list[tuple[str, np.ndarray]]:
    """Each segment (SEG) or ROI (RTSTRUCT) of ``path`` as (label, boolean mask z-y-x on
    ``series``, whose slices are the instances ``sops`` in order)."""
    modality = pydicom.dcmread(path, stop_before_pixels=True).Modality
    return _seg(path, sops) if modality == "SEG" else _rtstruct(path, series)


def _seg(path: str | Path, sops: list[str]) -> list[tuple[str, np.ndarray]]:
    import highdicom as hd

    seg = hd.seg.segread(path)
    found = []
    for segment in seg.SegmentSequence:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = seg.get_pixels_by_source_instance(sops, segment_numbers=[int(segment.SegmentNumber)],
                                                       assert_missing_frames_are_empty=True)
        found.append((str(segment.SegmentLabel), pixels[..., 0] > 0))
    return found


def _rtstruct(path: str | Path, series: Series) -> list[tuple[str, np.ndarray]]:
    from skimage.draw import polygon

    ds = pydicom.dcmread(path)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    orientation = np.array(series.orientation, dtype=float)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    origin = np.array(series.slices[0].position, dtype=float)
    row_spacing, col_spacing = series.pixel_spacing
    positions = np.asarray(series.slice_positions)
    gap = float(np.median(np.diff(positions))) if len(positions) > 1 else 1.0
    found = []
    for roi in ds.get("ROIContourSequence", []):
        mask = np.zeros((len(positions), series.rows, series.columns), dtype=bool)
        for contour in roi.get("ContourSequence", []):
            if contour.get("ContourGeometricType", "CLOSED_PLANAR") != "CLOSED_PLANAR":
                continue  # points and open lines enclose nothing
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            along = points @ normal
            k = int(np.argmin(np.abs(positions - along.mean())))
            if abs(positions[k] - along.mean()) > abs(gap) / 2:
                raise MaskError(f"ROI {names.get(int(roi.ReferencedROINumber), '?')}: a contour lies between "
                                "the series' slices (another series, or a resampled grid?)")
            offset = points - origin
            columns, rows = offset @ row_dir / col_spacing, offset @ col_dir / row_spacing
            rr, cc = polygon(rows, columns, shape=mask.shape[1:])
            filled = np.zeros(mask.shape[1:], dtype=bool)
            filled[rr, cc] = True
            mask[k] ^= filled
        found.append((names.get(int(roi.ReferencedROINumber), str(roi.ReferencedROINumber)), mask))
    return found
