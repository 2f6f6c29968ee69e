"""Segmentations on their image series (medhub_edge.masks): DICOM SEG with highdicom, RT
Structure Set contours filled on the series' grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from segmentations import sphere, write_rtstruct, write_seg

from medhub_edge.masks import masks, referenced_series
from medlib.datasets.series import find_series
from medlib.synthetic import write_ct_series


def ct(tmp_path: Path, slices: int = 6, size: int = 20):
    files = write_ct_series(tmp_path / "ct", shape=(slices, size, size))
    (series,) = find_series(tmp_path / "ct")
    sops = [str(pydicom.dcmread(s.path, stop_before_pixels=True).SOPInstanceUID) for s in series.slices]
    return files, series, sops


def test_a_seg_gives_back_the_mask_it_was_made_of(tmp_path: Path):
    files, series, sops = ct(tmp_path)
    expected = sphere((6, 20, 20), 3)
    path = write_seg(files, expected, tmp_path / "seg.dcm")
    assert referenced_series(path) == series.uid
    ((label, mask),) = masks(path, series, sops)
    assert label == "lesion" and np.array_equal(mask, expected)


def test_rtstruct_contours_fill_the_pixels_inside_with_holes_where_contours_nest(tmp_path: Path):
    files, series, sops = ct(tmp_path)
    square = np.array([[4, 4], [4, 12], [12, 12], [12, 4]], dtype=float)  # rows 4-12, columns 4-12: 9 × 9
    path = write_rtstruct(files, {2: square, 3: square}, tmp_path / "rs.dcm")
    assert referenced_series(path) == series.uid
    ((label, mask),) = masks(path, series, sops)
    assert label == "GTV" and mask.shape == (6, 20, 20)
    assert mask[2].sum() == mask[3].sum() and mask.sum() == 2 * mask[2].sum() and not mask[[0, 1, 4, 5]].any()
    assert mask[2, 5:12, 5:12].all() and not mask[2, :3].any() and not mask[2, :, 14:].any()

    ring = write_rtstruct(files, {1: square}, tmp_path / "ring.dcm")
    ds = pydicom.dcmread(ring)  # a second contour inside the first, on the same slice: a hole
    inner = pydicom.Dataset()
    inner.ContourGeometricType, inner.NumberOfContourPoints = "CLOSED_PLANAR", 4
    outer = ds.ROIContourSequence[0].ContourSequence[0]
    points = np.asarray(outer.ContourData, dtype=float).reshape(-1, 3)
    centre = points.mean(axis=0)
    inner.ContourData = [round(float(v), 4) for v in (centre + (points - centre) * 0.4).ravel()]
    ds.ROIContourSequence[0].ContourSequence.append(inner)
    ds.save_as(ring)
    ((_, holed),) = masks(ring, series, sops)
    assert 0 < holed[1].sum() < mask[2].sum() and not holed[1, 8, 8]  # the middle is out


def test_a_circle_covers_about_its_area(tmp_path: Path):
    files, series, sops = ct(tmp_path, size=64)
    angles = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    circle = np.stack([31.5 + 12 * np.sin(angles), 31.5 + 12 * np.cos(angles)], axis=1)
    ((_, mask),) = masks(write_rtstruct(files, {0: circle}, tmp_path / "rs.dcm"), series, sops)
    assert abs(mask[0].sum() - np.pi * 12 ** 2) < 0.03 * np.pi * 12 ** 2
