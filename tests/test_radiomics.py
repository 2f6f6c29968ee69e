"""medlib.radiomics: the IBSI 1 digital phantom's reference values, batching, bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medlib.radiomics import RadiomicsError, Settings, extract, extract_batch, feature_table
from medlib.radiomics.extract import AGGREGATION_SUFFIX

IBSI = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ibsi"


def phantom() -> tuple[np.ndarray, np.ndarray]:
    """The digital phantom as z-y-x arrays (the NIfTI files are x-y-z)."""
    image = np.asarray(nib.load(IBSI / "digital_phantom" / "image.nii.gz").dataobj).transpose(2, 1, 0)
    mask = np.asarray(nib.load(IBSI / "digital_phantom" / "mask.nii.gz").dataobj).transpose(2, 1, 0)
    return image, mask


def tolerance(value: str, stated: str) -> float:
    """The reference's tolerance, or (where it gives none) half a unit of the last printed digit."""
    if stated not in ("—", ""):
        return float(stated)
    mantissa, _, exponent = value.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 0.5 * 10 ** ((int(exponent) if exponent else 0) - decimals)


def references() -> list[tuple[str, float, float]]:
    """(medlib column, reference value, tolerance) for every implemented feature the IBSI
    reference gives for the digital phantom.

    The reference table names features by IBSI name and id, except that it gives the NGTDM and
    NGLDM features whose names other families share (contrast; grey level non-uniformity, its
    normalised form, grey level variance) the other family's id. Those are told apart by their
    aggregation (2D, 2.5D, 3D for the neighbourhood families) and, among the zone and
    dependence families that share it, by order: NGLDM is the last family of the table."""
    table = feature_table()
    by_ibsi: dict[tuple[str, str], list[str]] = {}  # V10 and V90 (I10, I90) share a name: in table order
    for r in table:
        if r["family"] in ("stat", "ih", "ivh", "cm", "rlm"):
            by_ibsi.setdefault((r["ibsi_name"], r["ibsi_id"]), []).append(f"{r['family']}_{r['key']}")
    seen: dict[tuple, int] = {}
    by_name = {r["ibsi_name"]: f"{r['family']}_{r['key']}" for r in table if r["family"] in ("ngt", "ngl")}
    found: dict[str, tuple[float, float]] = {}
    with open(IBSI / "reference_values.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["data"] != "dig. phantom" or r["value"] in ("—", ""):
                continue
            value = r["value"].replace("- ", "-").replace("\u2212", "-").replace(" ", "")
            if r["aggregation"] in ("2D", "2.5D", "3D"):
                column = by_name.get(r["feature"])
                if column is None or (column.startswith("ngt_") and r["feature"] not in
                                      ("Coarseness", "Contrast", "Busyness", "Complexity", "Strength")):
                    continue
            else:
                columns = by_ibsi.get((r["feature"], r["ibsi_id"]))
                if columns is None or r["aggregation"] and r["aggregation"] not in AGGREGATION_SUFFIX:
                    continue
                key = (r["feature"], r["ibsi_id"], r["aggregation"])
                seen[key] = seen.get(key, -1) + 1
                column = columns[min(seen[key], len(columns) - 1)]
            if r["aggregation"]:
                column += "_" + AGGREGATION_SUFFIX[r["aggregation"]]
            found[column] = (float(value), tolerance(value, r["tolerance"]))  # the last occurrence wins
    return [(c, v, t) for c, (v, t) in found.items()]


def test_every_implemented_feature_matches_the_ibsi_digital_phantom():
    row = extract(*phantom(), Settings(discretisation="none")).iloc[0]
    checks = references()
    # 18 statistics + 23 histogram + 6 intensity-volume (no reference for the area under the IVH)
    # + 6 aggregations × (25 GLCM + 16 GLRLM) + 3 × (5 NGTDM + 17 NGLDM)
    assert len(checks) == 18 + 23 + 6 + 6 * 41 + 3 * 22
    assert {c for c, _, _ in checks} == set(row.index)  # every column has its reference
    misses = [f"{c}: {row[c]:.6g}, reference {v} ± {t}" for c, v, t in checks if not abs(row[c] - v) <= t + 1e-12]
    assert misses == []


def test_a_batch_gives_each_roi_what_it_gives_alone():
    rng = np.random.default_rng(0)
    image, mask = phantom()
    other = rng.normal(40, 120, size=(9, 14, 11))
    other_mask = np.zeros(other.shape, bool)
    other_mask[2:8, 3:12, 1:9] = rng.random((6, 9, 8)) > 0.2
    settings = Settings(discretisation="fixed_bin_number", bins=16)
    together = extract_batch([image, other], [mask, other_mask], settings)
    for n, (i, m) in enumerate([(image, mask), (other, other_mask)]):
        alone = extract(i, m, settings).iloc[0]
        np.testing.assert_allclose(together.iloc[n].to_numpy(float), alone.to_numpy(float), rtol=1e-9, equal_nan=True)


def test_fixed_bin_size_and_resegmentation():
    image = np.arange(60, dtype=float).reshape(3, 4, 5) * 10 - 200  # -200 .. 390
    mask = np.ones(image.shape, bool)
    row = extract(image, mask, Settings(discretisation="fixed_bin_size", bin_width=25,
                                        resegment_range=(-100, 300))).iloc[0]
    assert row["stat_minimum"] == -100 and row["stat_maximum"] == 300
    assert row["ih_minimum"] == 1 and row["ih_maximum"] == 17  # floor(400 / 25) + 1
    # 41 values -100, -90 .. 300 in 17 bins of 3, 2, 3, 2, ... voxels; the IVH speaks in bin
    # centres -87.5, -62.5, ...: 90% of the volume lies in bin 3 and above, 10% in bin 16 and above
    assert row["ivh_i90"] == -87.5 + 2 * 25 and row["ivh_i10"] == -87.5 + 15 * 25
    assert row["ivh_v10"] == pytest.approx(36 / 41) and row["ivh_v90"] == pytest.approx(3 / 41)


def test_bad_input_gives_a_clear_error_or_ibsi_nan():
    image, mask = phantom()
    with pytest.raises(RadiomicsError, match="the mask is empty"):
        extract(image, np.zeros_like(mask))
    with pytest.raises(RadiomicsError, match="does not match the image's"):
        extract(image, mask[:, :, :-1])
    with pytest.raises(RadiomicsError, match="grey levels 1, 2"):
        extract(image - 0.5, mask, Settings(discretisation="none"))
    single = np.zeros_like(mask)
    single[1, 1, 1] = 1
    row = extract(image, single).iloc[0]  # one voxel: statistics defined, no pairs or runs to count
    assert row["stat_variance"] == 0 and np.isnan(row["cm_contrast_3D_merged"])
    assert row["rlm_run_percentage_3D_merged"] == pytest.approx(1.0)
    constant = extract(np.full(image.shape, 7.0), mask).iloc[0]  # one grey level everywhere
    assert constant["ih_variance"] == 0 and constant["cm_joint_maximum_3D_merged"] == 1


def test_pyradiomics_names():
    table = extract(*phantom(), Settings(discretisation="none", names="pyradiomics"))
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
    bad = subprocess.run([sys.executable, "-m", "medlib.cli", "radiomics", str(IBSI / "digital_phantom" / "image.nii.gz"),
                          str(tmp_path / "mask.nrrd")], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "differs from the image's" in bad.stderr
    params.write_text("setting:\n  binWidth: 25\n  interpolator: sitkBSpline\n")
    refused = subprocess.run([sys.executable, "-m", "medlib.cli", "radiomics", str(paths[0].parent),
                              str(tmp_path / "mask.nrrd"), "--params", str(params)], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "interpolator are not implemented" in refused.stderr
