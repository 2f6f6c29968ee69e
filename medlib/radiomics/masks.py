"""Segmentations as voxel masks on their image series: DICOM SEG and RT Structure Sets.

A mask is put on a :class:`Grid`: the affine from (slice, row, column) indices to patient
coordinates (LPS, mm) and the shape of the image series it segments, as
:class:`medlib.datasets.series.Series` and the datasets' trees (``attrs["affine"]``) give them.

- A SEG is read with highdicom; its segment's volume is matched to the grid
  (``Volume.match_geometry``: permuted, flipped, padded or cropped, never resampled; a SEG on
  another grid is refused).
- An RTSTRUCT's closed planar contours, in patient coordinates, are mapped onto the grid and
  filled with scikit-image (``skimage.draw.polygon``: the pixels whose centres are inside the
  polygon, the usual rule, as rt-utils fills with OpenCV); contours on one slice combine
  even-odd, so that an inner contour is a hole, as PS3.3 C.8.8.6 describes. A contour more than
  a quarter of a slice from the grid's nearest slice is refused (another series, or a resampled
  grid); contours beyond the grid's first or last slice (a cropped series) are left out.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

#: Modalities of the segmentation objects read here.
MASK_MODALITIES = ("SEG", "RTSTRUCT")
#: How far (in slices) a contour's plane may lie from the slice it is drawn on.
PLANE_TOLERANCE = 0.25


class MaskError(ValueError):
    """A segmentation that cannot be put on its series; the message says why."""


@dataclass(frozen=True)
class Grid:
    """An image series' voxels in patient space.

    Attributes:
        affine: 4×4, (slice, row, column) indices → patient coordinates (LPS, mm).
        shape: (slices, rows, columns).
    """

    affine: np.ndarray
    shape: tuple[int, int, int]

    @classmethod
    def of(cls, image) -> Grid:
        """The grid of a :class:`~medlib.datasets.series.Series`, or of a series of a dataset's
        tree (an ``xarray.Dataset`` or ``DataTree`` node with ``attrs["affine"]`` and ``image``)."""
        if hasattr(image, "slices"):
            return cls(np.asarray(image.affine, dtype=float), (len(image.slices), image.rows, image.columns))
        if "affine" not in getattr(image, "attrs", {}):
            raise MaskError("give a medlib series, or a series of a dataset (medlib.datasets.open(...)[uid]), "
                            "whose attrs hold its affine")
        return cls(np.asarray(image.attrs["affine"], dtype=float), tuple(int(n) for n in image["image"].shape))


def referenced_series(path: str | os.PathLike[str]) -> str:
    """The Series Instance UID of the images a SEG or RTSTRUCT segments."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if ds.Modality == "SEG":
        return str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
    if ds.Modality == "RTSTRUCT":
        frame = ds.ReferencedFrameOfReferenceSequence[0]
        return str(frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID)
    raise MaskError(f"{Path(path).name} is a {ds.Modality}, not a SEG or an RTSTRUCT")


def masks(path: str | os.PathLike[str], grid: Grid) -> list[tuple[str, np.ndarray]]:
    """Each segment (SEG) or ROI (RTSTRUCT) of ``path`` as (label, boolean mask z-y-x on ``grid``)."""
    modality = pydicom.dcmread(path, stop_before_pixels=True).Modality
    if modality not in MASK_MODALITIES:
        raise MaskError(f"{Path(path).name} is a {modality}, not a SEG or an RTSTRUCT")
    return _seg(path, grid) if modality == "SEG" else _rtstruct(path, grid)


def mask(path: str | os.PathLike[str], grid: Grid, roi: str | None = None) -> np.ndarray:
    """The segment or ROI named ``roi`` (its SegmentLabel or ROIName; None: the only one) of a
    SEG or RTSTRUCT, as a boolean mask z-y-x on ``grid``."""
    found = masks(path, grid)
    names = [label for label, _ in found]
    if roi is None and len(found) == 1:
        return found[0][1]
    chosen = [m for label, m in found if label == roi]
    if roi is None or not chosen:
        missing = "" if roi is None else f"{roi!r} is not among them; "
        raise MaskError(f"{Path(path).name} holds {', '.join(names) or 'no segments'}: {missing}name one with roi= "
                        "(--roi on the command line)")
    if len(chosen) > 1:
        raise MaskError(f"{Path(path).name} holds {len(chosen)} segments named {roi!r}; they cannot be told apart")
    return chosen[0]


def _seg(path, grid: Grid) -> list[tuple[str, np.ndarray]]:
    import highdicom as hd

    seg = hd.seg.segread(path)
    geometry = hd.VolumeGeometry(grid.affine, grid.shape, coordinate_system="PATIENT")
    found = []
    for segment in seg.SegmentSequence:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            volume = seg.get_volume(segment_numbers=[int(segment.SegmentNumber)], combine_segments=True)
        try:
            matched = volume.match_geometry(geometry)
        except RuntimeError as e:
            raise MaskError(f"{Path(path).name}: segment {segment.SegmentLabel!r} is not on the series' grid "
                            f"({e}); resample it onto the series first") from None
        found.append((str(segment.SegmentLabel), np.asarray(matched.array) > 0))
    return found


def _rtstruct(path, grid: Grid) -> list[tuple[str, np.ndarray]]:
    from skimage.draw import polygon

    ds = pydicom.dcmread(path)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    to_index = np.linalg.inv(grid.affine)
    found = []
    for roi in ds.get("ROIContourSequence", []):
        name = names.get(int(roi.ReferencedROINumber), str(roi.ReferencedROINumber))
        voxels = np.zeros(grid.shape, dtype=bool)
        for contour in roi.get("ContourSequence", []):
            if contour.get("ContourGeometricType", "CLOSED_PLANAR") != "CLOSED_PLANAR":
                continue  # points and open lines enclose nothing
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            k, rows, columns = (to_index[:3, :3] @ points.T + to_index[:3, 3:]).reshape(3, -1)
            plane = int(np.rint(k.mean()))
            if np.abs(k - plane).max() > PLANE_TOLERANCE:
                raise MaskError(f"ROI {name}: a contour lies between the series' slices, {np.abs(k - plane).max():.2f} "
                                "of a slice from the nearest (another series, or a resampled grid?)")
            if not 0 <= plane < grid.shape[0]:
                continue  # beyond the series' slices (a cropped series)
            filled = np.zeros(grid.shape[1:], dtype=bool)
            filled[polygon(rows, columns, shape=grid.shape[1:])] = True
            voxels[plane] ^= filled
        found.append((name, voxels))
    return found
