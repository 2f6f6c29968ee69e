"""medlib.radiomics: the IBSI 1 digital phantom's reference values, batching, bad input."""

from __future__ import annotations

import csv
import multiprocessing
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
import xarray as xr

from conftest import shared_data
from medlib.radiomics import RadiomicsError, Settings, extract, extract_batch, feature_table
from medlib.radiomics.extract import AGGREGATION_SUFFIX

IBSI = Path(__file__).resolve().parent / "data" / "ibsi"  # CC BY 4.0, kept here (its README)
IBSI_CT = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ibsi" / "ct_phantom"  # CC BY-NC: not kept
SPACING = (2.0, 2.0, 2.0)  # the digital phantom's voxels, mm


def phantom() -> tuple[np.ndarray, np.ndarray]:
    """The digital phantom as z-y-x arrays (the NIfTI files are x-y-z)."""
    image = np.asarray(nib.load(IBSI / "digital_phantom" / "image.nii.gz").dataobj).transpose(2, 1, 0)
    mask = np.asarray(nib.load(IBSI / "digital_phantom" / "mask.nii.gz").dataobj).transpose(2, 1, 0)
    return image, mask


def tolerance(value: str, stated: str) -> float:
    """The reference's tolerance, or (where it gives none) half a unit of the last printed digit.
    The table renders the manual's a × 10^n as a float (1490.0 for 1.49 × 10³): such values
    carry the manual's three significant digits."""
    if stated not in ("—", ""):
        return float(stated)
    if re.fullmatch(r"-?\d{4,}\.0+", value):
        return 0.5 * 10 ** (len(value.split(".")[0].lstrip("-")) - 3)
    mantissa, _, exponent = value.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 0.5 * 10 ** ((int(exponent) if exponent else 0) - decimals)


def references(data: str = "dig. phantom") -> list[tuple[str, float, float]]:
    """(medlib column, reference value, tolerance) for every implemented feature the IBSI
    reference gives for ``data`` ("dig. phantom", "config. A" ... "config. E").

    The table lists families in IBSI order, feature by feature; features of different families
    share names (and, in the table, sometimes ids), so each row's family is the one whose first
    feature (as features.csv lists it) came last. Within a family, names are unique except the
    IVH's volume and intensity at a fraction (V10 and V90, I10 and I90), which come in order."""
    first_of: dict[str, str] = {}  # family → the name of its first feature
    columns: dict[tuple[str, str], list[str]] = {}
    for r in feature_table():
        first_of.setdefault(r["family"], r["ibsi_name"])
        columns.setdefault((r["family"], r["ibsi_name"]), []).append(f"{r['family']}_{r['key']}")
    family_of_first = {name: family for family, name in first_of.items()}
    family = None
    seen: dict[tuple, int] = {}
    found: dict[str, tuple[float, float]] = {}
    with open(IBSI / "reference_values.csv", newline="") as f:
        for r in csv.DictReader(f):
            family = family_of_first.get(r["feature"], family)
            names = columns.get((family, r["feature"]))
            if r["data"] != data or names is None:
                continue
            key = (family, r["feature"], r["aggregation"])
            seen[key] = seen.get(key, -1) + 1
            if r["value"] in ("—", ""):
                continue
            value = r["value"].replace("- ", "-").replace("\u2212", "-").replace(" ", "")
            column = names[min(seen[key], len(names) - 1)]
            if r["aggregation"]:
                column += "_" + AGGREGATION_SUFFIX[r["aggregation"]]
            found[column] = (float(value), tolerance(value, r["tolerance"]))
    return [(c, v, t) for c, (v, t) in found.items()]


def test_every_implemented_feature_matches_the_ibsi_digital_phantom():
    row = extract(*phantom(), Settings(discretisation="none"), spacing=SPACING).iloc[0]
    checks = references()
    # 25 morphological (no reference for the OMBB and MVEE densities) + 2 local intensity
    # + 18 statistics + 23 histogram + 6 intensity-volume (no reference for the area under the IVH)
    # + 6 aggregations × (25 GLCM + 16 GLRLM) + 3 × (16 GLSZM + 16 GLDZM + 5 NGTDM + 17 NGLDM)
    assert len(checks) == 25 + 2 + 18 + 23 + 6 + 6 * 41 + 3 * (16 + 16 + 5 + 17)
    assert {c for c, _, _ in checks} == set(row.index)  # every column has its reference
    misses = [f"{c}: {row[c]:.6g}, reference {v} ± {t}" for c, v, t in checks if not abs(row[c] - v) <= t + 1e-12]
    assert misses == []


#: IBSI 1 configurations A–E of the CT phantom (ibsi_reference_data_sets.rst, "Configurations").
CONFIGURATIONS = {
    "A": Settings(resegment_range=(-500, 400), discretisation="fixed_bin_size", bin_width=25,
                  ivh_discretisation="none"),
    "B": Settings(resample_spacing=(None, 2, 2), round_intensities=True, resegment_range=(-500, 400),
                  discretisation="fixed_bin_number", bins=32, ivh_discretisation="none"),
    "C": Settings(resample_spacing=(2, 2, 2), round_intensities=True, resegment_range=(-1000, 400),
                  discretisation="fixed_bin_size", bin_width=25, ivh_discretisation="fixed_bin_size", ivh_bin_width=2.5),
    "D": Settings(resample_spacing=(2, 2, 2), round_intensities=True, resegment_outliers=True,
                  discretisation="fixed_bin_number", bins=32, ivh_discretisation="none"),
    "E": Settings(resample_spacing=(2, 2, 2), interpolator="cubic", round_intensities=True,
                  resegment_range=(-1000, 400), resegment_outliers=True, discretisation="fixed_bin_number", bins=32,
                  ivh_discretisation="fixed_bin_number", ivh_bins=1000),
}


@pytest.fixture(scope="module")
def ct_phantom() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The IBSI CT phantom (read from ../shared, not copied: CC BY-NC), z-y-x, its intensities
    rounded to integers as the manual asks, and its spacing."""
    image = nib.load(shared_data(IBSI_CT) / "image.nii.gz")
    mask = nib.load(shared_data(IBSI_CT) / "mask.nii.gz")
    x, y, z = (float(v) for v in image.header.get_zooms()[:3])
    return (np.round(np.asarray(image.dataobj, dtype=np.float32)).transpose(2, 1, 0),
            np.asarray(mask.dataobj).transpose(2, 1, 0), (z, y, x))


@pytest.mark.parametrize("name", sorted(CONFIGURATIONS))
def test_every_implemented_feature_matches_the_ibsi_ct_phantom(ct_phantom, name: str):
    image, mask, spacing = ct_phantom
    row = extract(image, mask, CONFIGURATIONS[name], spacing=spacing).iloc[0]
    checks = references(f"config. {name}")
    assert len(checks) == {"A": 346, "B": 346, "C": 209, "D": 210, "E": 210}[name]  # 2D configs: 2D aggregations
    assert {c for c, _, _ in checks} <= set(row.index)
    misses = [f"{c}: {row[c]:.6g}, reference {v} ± {t}" for c, v, t in checks if not abs(row[c] - v) <= t + 1e-9]
    assert misses == []


def test_a_batch_gives_each_roi_what_it_gives_alone():
    rng = np.random.default_rng(0)
    image, mask = phantom()
    other = rng.normal(40, 120, size=(9, 14, 11))
    other_mask = np.zeros(other.shape, bool)
    other_mask[2:8, 3:12, 1:9] = rng.random((6, 9, 8)) > 0.2
    settings = Settings(discretisation="fixed_bin_number", bins=16)
    together = extract_batch([image, other], [mask, other_mask], settings, spacing=SPACING)
    for n, (i, m) in enumerate([(image, mask), (other, other_mask)]):
        alone = extract(i, m, settings, spacing=SPACING).iloc[0]
        np.testing.assert_allclose(together.iloc[n].to_numpy(float), alone.to_numpy(float), rtol=1e-9, equal_nan=True)


def test_families_run_side_by_side_as_they_run_one_after_another(monkeypatch):
    """The families of a batch run on worker threads, each with one torch thread: the values are
    those of one family after another in the caller's thread, whose torch thread count stays."""
    module = sys.modules["medlib.radiomics.extract"]
    image, mask = phantom()
    settings = Settings(discretisation="fixed_bin_number", bins=16)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        side_by_side = extract(image, mask, settings, spacing=SPACING)
        assert torch.get_num_threads() == 2
        assert module._workers().submit(torch.get_num_threads).result() == 1
    finally:
        torch.set_num_threads(previous)
    monkeypatch.setattr(module, "_workers", lambda: SimpleNamespace(map=map))
    one_after_another = extract(image, mask, settings, spacing=SPACING)
    assert list(side_by_side.columns) == list(one_after_another.columns)
    np.testing.assert_allclose(side_by_side.iloc[0].to_numpy(float), one_after_another.iloc[0].to_numpy(float),
                               rtol=1e-12, equal_nan=True)


def _extract_phantom_features() -> int:
    image, mask = phantom()
    return extract(image, mask, Settings(discretisation="fixed_bin_number", bins=16), spacing=SPACING).shape[1]


def test_a_process_forked_after_an_extraction_extracts_too():
    """A forked child (a multiprocessing pool, a data loader's workers) has none of its parent's
    worker threads: it must start its own rather than wait for them for ever."""
    columns = _extract_phantom_features()
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_extract_phantom_features).get(timeout=60) == columns


def test_fixed_bin_size_and_resegmentation():
    image = np.arange(60, dtype=float).reshape(3, 4, 5) * 10 - 200  # -200 .. 390
    mask = np.ones(image.shape, bool)
    row = extract(image, mask, Settings(discretisation="fixed_bin_size", bin_width=25,
                                        resegment_range=(-100, 300)), spacing=(1, 1, 1)).iloc[0]
    assert row["stat_minimum"] == -100 and row["stat_maximum"] == 300
    assert row["ih_minimum"] == 1 and row["ih_maximum"] == 17  # floor(400 / 25) + 1
    # 41 values -100, -90 .. 300 in 17 bins of 3, 2, 3, 2, ... voxels; the IVH speaks in bin
    # centres -87.5, -62.5, ...: 90% of the volume lies in bin 3 and above, 10% in bin 16 and above
    assert row["ivh_i90"] == -87.5 + 2 * 25 and row["ivh_i10"] == -87.5 + 15 * 25
    # its range G is [-87.5, 287.5] (IBSI 3.5): intensity fraction 0.1 is reached at bin 3
    # (-37.5), 0.9 at bin 15 (262.5), which hold the values from -50 and from 250 up
    assert row["ivh_v10"] == pytest.approx(36 / 41) and row["ivh_v90"] == pytest.approx(6 / 41)


def test_bad_input_gives_a_clear_error_or_ibsi_nan():
    image, mask = phantom()
    with pytest.raises(RadiomicsError, match="the mask is empty"):
        extract(image, np.zeros_like(mask), spacing=SPACING)
    with pytest.raises(RadiomicsError, match="does not match the image's"):
        extract(image, mask[:, :, :-1], spacing=SPACING)
    with pytest.raises(RadiomicsError, match="grey levels 1, 2"):
        extract(image - 0.5, mask, Settings(discretisation="none"), spacing=SPACING)
    single = np.zeros_like(mask)
    single[1, 1, 1] = 1
    row = extract(image, single, spacing=SPACING).iloc[0]  # one voxel: statistics defined, no pairs or runs to count
    assert row["stat_variance"] == 0 and np.isnan(row["cm_contrast_3D_merged"])
    assert row["rlm_run_percentage_3D_merged"] == pytest.approx(1.0)
    constant = extract(np.full(image.shape, 7.0), mask, spacing=SPACING).iloc[0]  # one grey level everywhere
    assert constant["ih_variance"] == 0 and constant["cm_joint_maximum_3D_merged"] == 1
    assert np.isnan(constant["morph_morans_i"]) and constant["szm_zone_percentage_3D"] == pytest.approx(1 / mask.sum())
    # re-segmentation leaves no voxel: the shape is still there, every intensity feature is NaN
    gone = extract_batch([image, image], [mask, mask], Settings(resegment_range=(100, 200)), spacing=SPACING)
    assert gone.iloc[0]["morph_volume"] == pytest.approx(556, abs=4)
    intensity_columns = [c for c in gone if not c.startswith("morph_")]
    assert gone[intensity_columns].isna().all().all() and np.isnan(gone.iloc[1]["morph_integrated_intensity"])
    with pytest.raises(RadiomicsError, match="give the voxel spacing"):
        extract(image, mask)
    with pytest.raises(RadiomicsError, match="different voxel spacings"):
        extract_batch([image, xr.DataArray(image, dims=("z", "y", "x"), coords={d: np.arange(n) * 3.0 for d, n in
                                                                                zip("zyx", image.shape)})],
                      [mask, mask], spacing=SPACING)


def test_pyradiomics_names():
    table = extract(*phantom(), Settings(discretisation="none", names="pyradiomics"), spacing=SPACING)
    assert "original_firstorder_Mean" in table and "original_glcm_Idmn" in table
    assert "original_glrlm_RunPercentage" in table and not any(c.startswith("cm_") for c in table)


def test_cli_reads_nifti_nrrd_and_dicom_with_a_pyradiomics_parameter_file(tmp_path: Path):
    import subprocess
    import sys

    import nrrd
    import pandas as pd

    from medlib.synthetic import write_ct_series

    params = tmp_path / "params.yaml"
    params.write_text("setting:\n  binWidth: 25\n  label: 1\nfeatureClass:\n  firstorder:\n  glcm:\n")
    paths = write_ct_series(tmp_path / "ct", shape=(6, 16, 16))
    mask = np.zeros((6, 16, 16), np.uint8)
    mask[1:5, 4:12, 4:12] = 1
    nrrd.write(str(tmp_path / "mask.nrrd"), mask.transpose(2, 1, 0),
               {"space directions": np.diag([0.8, 0.8, 2.5]), "space": "left-posterior-superior"})
    env = {"MEDHUB_AUDIT_BUFFER": str(tmp_path / "audit.jsonl"), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-m", "medlib.cli", "radiomics", str(paths[0].parent), str(tmp_path / "mask.nrrd"),
                          "--params", str(params), "--names", "pyradiomics", "-o", str(tmp_path / "f.csv")],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    row = pd.read_csv(tmp_path / "f.csv").iloc[0]
    assert "original_glcm_Idmn" in row and "original_glrlm_RunPercentage" not in row  # only the classes asked for
    image = IBSI / "digital_phantom" / "image.nii.gz"
    bad = subprocess.run([sys.executable, "-m", "medlib.cli", "radiomics", str(image), str(tmp_path / "mask.nrrd")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "differs from the image's" in bad.stderr
    params.write_text("setting:\n  binWidth: 25\n  symmetricalGLCM: false\n")
    refused = subprocess.run([sys.executable, "-m", "medlib.cli", "radiomics", str(paths[0].parent),
                              str(tmp_path / "mask.nrrd"), "--params", str(params)], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "symmetricalGLCM: False are implemented by medlib only at PyRadiomics' defaults" in refused.stderr


def test_zones_are_the_connected_components_scipy_finds():
    from scipy import ndimage

    from medlib.radiomics.zones import Zones

    rng = np.random.default_rng(3)
    levels = rng.integers(1, 4, size=(2, 6, 9, 11)) * (rng.random((2, 6, 9, 11)) > 0.15)
    zones = Zones(torch.from_numpy(levels))
    in_slice = np.zeros((3, 3, 3))
    in_slice[1] = 1
    for name, structure in (("2D", in_slice), ("3D", np.ones((3, 3, 3)))):
        expected = []
        for roi in levels:
            for g in (1, 2, 3):
                labels, n = ndimage.label(roi == g, structure=structure)
                expected += sorted(np.bincount(labels.ravel())[1:].tolist())
        level, cell, size = zones.found(name)
        ours = []
        for roi in range(2):
            for g in (1, 2, 3):
                chosen = (cell // 6 == roi) & (level == g)  # cell: ROI × 6 slices + slice
                ours += sorted(size[chosen].tolist())
        assert ours == expected


@pytest.mark.parametrize("seed", [5, 6])
def test_the_compiled_kernels_give_what_the_tensor_versions_give(seed: int):
    """The CPU's kernels (medlib.radiomics.kernels) and the whole-tensor versions other devices
    run: the same zones, neighbours, co-occurrences and runs, voxel for voxel, and the same
    spectral sums."""
    from medlib.radiomics import kernels
    from medlib.radiomics.morphology import _spectral_sums
    from medlib.radiomics.neighbourhood import _neighbours_in_tensors
    from medlib.radiomics.texture import _flat, _pairs_in_tensors, _rows, _runs_in_tensors, _steps
    from medlib.radiomics.zones import _components_in_tensors

    rng = np.random.default_rng(seed)
    levels = torch.from_numpy(rng.integers(1, 4, size=(3, 7, 10, 12)) * (rng.random((3, 7, 10, 12)) > 0.2))
    flat, strides, volume = _flat(levels)
    voxels = torch.nonzero(flat).flatten()
    steps = _steps(strides, levels.device).tolist()
    for linked in (steps[:4], steps):
        assert torch.equal(kernels.components(flat, voxels, linked), _components_in_tensors(flat, voxels, linked))
    assert torch.equal(kernels.neighbours(flat, voxels, steps[:4], steps[4:]),
                       _neighbours_in_tensors(flat, voxels, steps[:4], steps[4:]))
    rows, per_direction = _rows(flat, voxels, strides, volume, 7, 3), 7 * 3
    n_rows = 3 * len(steps) * per_direction
    size = n_rows * 3
    pairs = kernels.pairs(flat, voxels, rows, steps, per_direction, 3, size)
    assert torch.equal(pairs, _pairs_in_tensors(flat, voxels, rows, steps, per_direction, 3, size))
    assert int(pairs.sum()) == sum(int((flat[voxels + step] > 0).sum()) for step in steps)
    runs = kernels.runs(flat, voxels, rows, steps, per_direction, n_rows, 12)
    assert torch.equal(runs, _runs_in_tensors(flat, voxels, rows, steps, per_direction, n_rows, 12))
    lengths = torch.arange(1, runs.shape[1] + 1)
    assert int((runs * lengths).sum()) == len(voxels) * len(steps)  # every voxel is in one run per direction
    spectra = [torch.from_numpy(rng.normal(size=(3, 50, 2))) for _ in range(3)]
    weights = torch.from_numpy(rng.normal(size=50))
    torch.testing.assert_close(kernels.spectral_sums(*spectra, weights), _spectral_sums(*spectra, weights),
                               rtol=1e-12, atol=0)


def test_morans_i_and_gearys_c_equal_the_pairwise_sums():
    from medlib.radiomics.morphology import spatial_autocorrelation

    rng = np.random.default_rng(4)
    values = rng.normal(size=(5, 6, 7)).cumsum(2)
    inside = rng.random(values.shape) > 0.3
    spacing = (2.5, 0.8, 1.1)
    points = np.argwhere(inside) * spacing
    x = values[inside]
    d = x - x.mean()
    distance = np.linalg.norm(points[:, None] - points[None], axis=-1)
    w = np.where(distance > 0, 1 / np.where(distance > 0, distance, 1), 0)
    n = len(x)
    moran = n / w.sum() * (w * d[:, None] * d[None]).sum() / (d ** 2).sum()
    geary = (n - 1) / (2 * w.sum()) * (w * (x[:, None] - x[None]) ** 2).sum() / (d ** 2).sum()
    ours = spatial_autocorrelation(torch.from_numpy(values)[None], torch.from_numpy(inside)[None], spacing)
    assert float(ours["morans_i"][0]) == pytest.approx(moran, rel=1e-9)
    assert float(ours["gearys_c"][0]) == pytest.approx(geary, rel=1e-9)


def test_grey_level_quantiles_from_the_histogram_equal_those_from_a_sort():
    """The intensity histogram's quantiles are read off the cumulative counts; they must be the
    sorted values' quantiles, bit for bit, for any counts (an empty ROI, one voxel, ties)."""
    from medlib.radiomics.first_order import QUANTILES, _level_quantiles, _quantiles

    rng = np.random.default_rng(5)
    n_levels = 7
    levels = torch.from_numpy(rng.integers(1, n_levels + 1, size=(6, 41)))
    valid = torch.from_numpy(rng.random((6, 41)) > 0.4)
    valid[0] = False  # an empty ROI
    valid[1] = False
    valid[1, 3] = True  # one voxel
    levels[2] = 4  # one level only
    hist = torch.zeros(6, n_levels + 1, dtype=torch.float64).scatter_add_(
        1, torch.where(valid, levels, 0), valid.to(torch.float64))[:, 1:]
    from_counts = _level_quantiles(hist, QUANTILES)
    from_sort = _quantiles(levels.to(torch.float64), valid, QUANTILES)
    for a, b in zip(from_counts, from_sort):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a[~a.isnan()], b[~b.isnan()])
    assert from_counts[2][2] == 4 and from_counts[0][0].isnan()


def test_resampling_aligns_grid_centres_and_extrapolates_the_boundary():
    from medlib.radiomics.resample import axis_matrix

    ramp = torch.arange(5, dtype=torch.float64) * 3.0  # 5 voxels of 3 mm → ceil(15 / 2) = 8 of 2 mm
    m = axis_matrix(5, 3.0, 2.0, "linear")
    # centres: old 0..12 mm, new 6 ± 7 mm in steps of 2: -1, 1, ..., 13; beyond the ends, the boundary value
    assert (m @ ramp).tolist() == pytest.approx([0, 1, 3, 5, 7, 9, 11, 12])
    smooth = torch.tensor([0.0, 1, 4, 9, 16, 25, 36, 49, 64, 81], dtype=torch.float64) / 81
    cubic = axis_matrix(10, 1.0, 1.0, "cubic") @ smooth  # the spline passes through its samples
    assert cubic.tolist() == pytest.approx(smooth.tolist(), abs=1e-9)
