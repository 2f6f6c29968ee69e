"""Segmentations on their image series (medlib.radiomics.masks): DICOM SEG with highdicom, RT
Structure Set contours filled on the series' grid; the three real patients' RTSTRUCTs against the
IBSI's voxel masks, and features from an RTSTRUCT on the command line and over a dataset."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import shared_data
from segmentations import sphere, write_rtstruct, write_seg

from medlib.datasets.series import find_series
from medlib.radiomics import Settings, extract
from medlib.radiomics.extract import pyradiomics_table
from medlib.radiomics.masks import Grid, MaskError, mask, masks, referenced_series
from medlib.synthetic import write_ct_series


def ct(tmp_path: Path, slices: int = 6, size: int = 20):
    files = write_ct_series(tmp_path / "ct", shape=(slices, size, size))
    (series,) = find_series(tmp_path / "ct")
    return files, series


def test_a_seg_gives_back_the_mask_it_was_made_of(tmp_path: Path):
    files, series = ct(tmp_path)
    expected = sphere((6, 20, 20), 3)
    path = write_seg(files, expected, tmp_path / "seg.dcm")
    assert referenced_series(path) == series.uid
    ((label, mask),) = masks(path, Grid.of(series))
    assert label == "lesion" and np.array_equal(mask, expected)


def test_rtstruct_contours_fill_the_pixels_inside_with_holes_where_contours_nest(tmp_path: Path):
    files, series = ct(tmp_path)
    square = np.array([[4, 4], [4, 12], [12, 12], [12, 4]], dtype=float)  # rows 4-12, columns 4-12: 9 × 9
    path = write_rtstruct(files, {2: square, 3: square}, tmp_path / "rs.dcm")
    assert referenced_series(path) == series.uid
    ((label, mask),) = masks(path, Grid.of(series))
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
    ((_, holed),) = masks(ring, Grid.of(series))
    assert 0 < holed[1].sum() < mask[2].sum() and not holed[1, 8, 8]  # the middle is out


def test_a_circle_covers_about_its_area(tmp_path: Path):
    files, series = ct(tmp_path, size=64)
    angles = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    circle = np.stack([31.5 + 12 * np.sin(angles), 31.5 + 12 * np.cos(angles)], axis=1)
    ((_, mask),) = masks(write_rtstruct(files, {0: circle}, tmp_path / "rs.dcm"), Grid.of(series))
    assert abs(mask[0].sum() - np.pi * 12 ** 2) < 0.03 * np.pi * 12 ** 2


PATIENTS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ibsi_validation" / "dicom"  # CC BY 3.0
REFERENCE_MASKS = Path(__file__).resolve().parent / "data" / "ibsi_validation"  # the IBSI's voxel masks (its README)
SCANS = [(p, m) for p in ("STS_001", "STS_002", "STS_003") for m in ("CT", "MR_T1", "PET")]


def on_grid(nifti: Path, grid: Grid) -> np.ndarray:
    """A NIfTI mask put on ``grid`` through the two affines (NIfTI: RAS; DICOM: LPS)."""
    image = nib.load(nifti)
    inside = np.argwhere(np.asarray(image.dataobj) > 0)
    lps = (image.affine[:3, :3] @ inside.T + image.affine[:3, 3:]) * np.array([[-1], [-1], [1]])
    to_index = np.linalg.inv(grid.affine)
    index = np.rint(to_index[:3, :3] @ lps + to_index[:3, 3:]).astype(int)
    assert np.abs(to_index[:3, :3] @ lps + to_index[:3, 3:] - index).max() < 1e-3  # the same grid
    out = np.zeros(grid.shape, bool)
    out[tuple(index)] = True
    return out


@pytest.mark.parametrize("patient, modality", SCANS)
def test_a_real_patient_s_rtstruct_gives_the_ibsi_s_voxel_mask(patient: str, modality: str):
    folder = shared_data(PATIENTS) / patient / modality
    (series,) = find_series(folder / "image")
    grid = Grid.of(series)
    assert referenced_series(folder / "mask" / "RS.dcm") == series.uid
    found = mask(folder / "mask" / "RS.dcm", grid, f"GTV_Mass_{modality}")
    reference = on_grid(REFERENCE_MASKS / f"{patient}_{modality}_mask.nii.gz", grid)
    assert found.sum() == reference.sum() > 0
    assert np.array_equal(found, reference)


def test_features_of_a_real_patient_from_its_rtstruct_on_the_command_line(tmp_path: Path):
    folder = shared_data(PATIENTS) / "STS_002" / "CT"
    env = {"MEDHUB_AUDIT_BUFFER": str(tmp_path / "audit.jsonl"), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "medlib.cli", "radiomics", str(folder / "image"), str(folder / "mask" / "RS.dcm")]
    run = subprocess.run(command + ["--roi", "GTV_Mass_CT", "-o", str(tmp_path / "f.csv")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    row = pd.read_csv(tmp_path / "f.csv").iloc[0]
    (series,) = find_series(folder / "image")
    reference = on_grid(REFERENCE_MASKS / "STS_002_CT_mask.nii.gz", Grid.of(series))
    expected = extract(series.read(), reference, Settings(), spacing=series.spacing).iloc[0]
    np.testing.assert_allclose(row[expected.index].to_numpy(float), expected.to_numpy(float), rtol=1e-9,
                               equal_nan=True)
    assert row["morph_approximate_volume"] == pytest.approx(17090 * np.prod(series.spacing), rel=1e-6)
    wrong = subprocess.run(command + ["--roi", "GTV"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert wrong.returncode == 2 and "holds GTV_Mass_CT" in wrong.stderr and "'GTV' is not among them" in wrong.stderr
    other = subprocess.run([*command[:4], str(PATIENTS / "STS_002" / "PET" / "image"), command[-1]],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert other.returncode == 2 and "not the image's" in other.stderr


def test_a_segmentation_of_another_series_or_a_name_not_in_it_is_refused(tmp_path: Path):
    files, series = ct(tmp_path)
    square = np.array([[4, 4], [4, 12], [12, 12], [12, 4]], dtype=float)
    path = write_rtstruct(files, {2: square}, tmp_path / "rs.dcm")
    with pytest.raises(MaskError, match="holds GTV: 'Liver' is not among them; name one"):
        mask(path, Grid.of(series), "Liver")
    affine = Grid.of(series).affine.copy()
    affine[:3, 3] += 0.5 * affine[:3, 0]  # the grid moved by half a slice along its normal
    with pytest.raises(MaskError, match="between the series' slices, 0.50 of a slice"):
        mask(path, Grid(affine, (6, 20, 20)))
    affine[:3, 3] -= 0.4 * affine[:3, 0]  # a tenth of a slice off: drawn on the nearest slice
    assert np.array_equal(mask(path, Grid(affine, (6, 20, 20))), mask(path, Grid.of(series)))
    with pytest.raises(MaskError, match="not a SEG or an RTSTRUCT"):
        mask(files[0], Grid.of(series))


#: bin widths of make_pyradiomics.py: HU, normalised MR, SUV
BIN_WIDTH = {"CT": 25, "MR_T1": 50, "PET": 0.25}


@pytest.mark.parametrize("patient, modality", SCANS)
def test_a_real_patient_s_features_from_its_rtstruct_match_pyradiomics(patient: str, modality: str):
    """Original, LoG (σ 2 and 4 mm) and wavelet features, medlib from the RTSTRUCT, PyRadiomics
    from the IBSI's voxel mask (pyradiomics.csv, made by make_pyradiomics.py): every one within
    0.1%."""
    from medlib.radiomics.io import read_roi, settings_from_pyradiomics

    with open(REFERENCE_MASKS / "pyradiomics.csv", newline="") as f:
        expected = {r["featureName"]: float(r[f"{patient}_{modality}"]) for r in csv.DictReader(f)}
    params = {"setting": {"binWidth": BIN_WIDTH[modality], "label": 1, "additionalInfo": False},
              "imageType": {"Original": {}, "LoG": {"sigma": [2.0, 4.0]}, "Wavelet": {}}}
    settings, _ = settings_from_pyradiomics(params, names="pyradiomics")
    folder = shared_data(PATIENTS) / patient / modality
    image, roi, spacing = read_roi(folder / "image", folder / "mask" / "RS.dcm", f"GTV_Mass_{modality}")
    row = extract(image, roi, settings, spacing=spacing).iloc[0]
    shared = [name for name in expected if name in row.index]
    missing = {name.split("_", 1)[1] for name in expected if name not in row.index}
    assert missing == set(pyradiomics_table()["missing"]) and len(shared) == 1023  # what the table says is missing
    off = {name: f"{row[name]:.8g} vs {expected[name]:.8g}" for name in shared
           if not np.isclose(row[name], expected[name], rtol=1e-3, atol=1e-9)}
    assert off == {}
