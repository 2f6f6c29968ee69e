"""medlib.radiomics under PyRadiomics' conventions, against PyRadiomics' own baseline: its test
cases brain1, brain2 and breast1 under each configuration medlib implements, with the settings
the baseline records."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import numpy as np
import pytest

from medlib.radiomics import RadiomicsError, Settings, extract
from medlib.radiomics.extract import pyradiomics_names, pyradiomics_table
from medlib.radiomics.io import read_volume, settings_from_params, settings_from_pyradiomics

DATA = Path(__file__).resolve().parent / "data" / "pyradiomics"  # BSD-3, kept here (its README)
CLASSES = ("firstorder", "glcm", "gldm", "glrlm", "glszm", "ngtdm", "shape")
#: what medlib's table says PyRadiomics defines otherwise (medlib/radiomics/pyradiomics.json)
DIFFERS = pyradiomics_table()["differs"]


def baseline() -> dict[str, dict[str, str]]:
    """configuration ("brain1", "brain1_resegmentation", ...) → {row name: value}."""
    found: dict[str, dict[str, str]] = {}
    for name in CLASSES:
        with open(DATA / "baseline" / f"baseline_{name}.csv", newline="") as f:
            rows = list(csv.reader(f))
        for row in rows[1:]:
            for configuration, value in zip(rows[0][1:], row[1:]):
                found.setdefault(configuration, {})[row[0]] = value
    return found


BASELINE = baseline()
CASES = ("brain1", "brain2", "breast1")
IMPLEMENTED = [c for c in BASELINE if c.split("_")[0] in CASES]


def test_every_configuration_of_the_baseline_is_tested():
    kinds = {c.partition("_")[2] for c in BASELINE if c.split("_")[0] in CASES}
    assert kinds == {"", "2d", "FBN", "combined", "flatRegion", "resegmentation", "normalization", "resampling"}
    assert len(IMPLEMENTED) == 3 * 8


@pytest.mark.parametrize("configuration", IMPLEMENTED)
def test_every_feature_of_the_baseline_is_met_within_0_1_percent(configuration: str):
    expected = BASELINE[configuration]
    setting = ast.literal_eval(expected["diagnostics_Configuration_Settings"])
    settings, label = settings_from_pyradiomics({"setting": setting}, configuration, names="pyradiomics")
    case = configuration.split("_")[0]
    image, spacing = read_volume(DATA / f"{case}_image.nrrd")
    labels, _ = read_volume(DATA / f"{case}_label.nrrd")
    row = extract(image, labels == label, settings, spacing=spacing).iloc[0]
    defined = set(pyradiomics_names(settings.pyradiomics_aggregation).values())
    asked = {name for name in expected if name.startswith("original_")}
    shared = sorted(asked & defined)
    assert set(row.index) >= set(shared) and len(shared) >= 39  # every baseline feature medlib defines is computed
    off = {name: f"{row[name]:.8g} vs {expected[name]}" for name in shared
           if not np.isclose(row[name], float(expected[name]), rtol=1e-3, atol=1e-12)}
    named = {f"original_{k}" for k in DIFFERS} & set(shared)
    assert set(off) <= named, f"beyond the named differences: {sorted(set(off) - named)}"
    for name in named:  # the named differences are as small as the table says
        assert np.isclose(row[name], float(expected[name]), rtol=5e-3), f"{name}: {off.get(name)}"


def test_a_parameter_file_means_pyradiomics_conventions(tmp_path: Path):
    params = tmp_path / "params.yaml"
    params.write_text("setting:\n  binWidth: 25\n  voxelArrayShift: 1000\n  distances: [1]\n  additionalInfo: true\n")
    settings, _ = settings_from_params(params)
    assert (settings.conventions, settings.energy_shift, settings.minimum_dimensions) == ("pyradiomics", 1000.0, 2)
    params.write_text("setting:\n  distances: [1, 2]\n")
    with pytest.raises(RadiomicsError, match=r"distances: \[1, 2\] are implemented by medlib only"):
        settings_from_params(params)
    params.write_text("setting:\n  binWidth: 25\n")
    flat = np.zeros((3, 8, 8), bool)
    flat[1, 2:6, 2:6] = True
    line = np.zeros((3, 8, 8), bool)
    line[1, 3, 1:7] = True
    settings, _ = settings_from_params(params)
    image = np.arange(3 * 8 * 8, dtype=float).reshape(3, 8, 8)
    assert extract(image, flat, settings, spacing=(1, 1, 1)).shape[0] == 1  # a slice has 2 dimensions
    with pytest.raises(RadiomicsError, match="extends over 1 axes"):
        extract(image, line, settings, spacing=(1, 1, 1))


def test_pyradiomics_bins_start_at_a_multiple_of_the_width():
    image = np.full((4, 6, 6), 40.0)
    image[2:] = 60.0
    mask = np.ones(image.shape, bool)
    ibsi = extract(image, mask, Settings(discretisation="fixed_bin_size", bin_width=25, families=("ih",)),
                   spacing=(1, 1, 1)).iloc[0]
    aligned = extract(image, mask, Settings(discretisation="fixed_bin_size", bin_width=25, families=("ih",),
                                            conventions="pyradiomics"), spacing=(1, 1, 1)).iloc[0]
    assert (ibsi["ih_minimum"], ibsi["ih_maximum"]) == (1, 1)  # from 40: both in [40, 65)
    assert (aligned["ih_minimum"], aligned["ih_maximum"]) == (1, 2)  # from 25: [25, 50) and [50, 75)


#: the parameter file filtered.csv was made with (make_filtered.py)
FILTERED = {"setting": {"binWidth": 25, "label": 1, "additionalInfo": False, "voxelArrayShift": 0},
            "imageType": {"Original": {}, "LoG": {"sigma": [1.0, 3.0]}, "Wavelet": {}, "Square": {"voxelArrayShift": 1000},
                          "SquareRoot": {}, "Logarithm": {}, "Exponential": {}, "Gradient": {"binCount": 16}, "LBP2D": {},
                          "LBP3D": {"binWidth": 0.25}},
            "featureClass": {c: None for c in ("firstorder", "glcm", "glrlm", "glszm", "ngtdm", "gldm")}}


@pytest.mark.parametrize("case", ["brain1", "breast1"])
def test_every_pyradiomics_image_type_matches_pyradiomics_within_0_1_percent(case: str):
    with open(DATA / "filtered.csv", newline="") as f:
        expected = {r["featureName"]: float(r[case]) for r in csv.DictReader(f)}
    settings, label = settings_from_pyradiomics(FILTERED, names="pyradiomics")
    image, spacing = read_volume(DATA / f"{case}_image.nrrd")
    labels, _ = read_volume(DATA / f"{case}_label.nrrd")
    row = extract(image, labels == label, settings, spacing=spacing).iloc[0]
    types = {name.split("_")[0] for name in expected}
    assert len(types) == 20  # original, 2 LoG, 8 wavelet sub-bands, 6 voxel-wise and local, 3 of LBP3D
    missing = {name for name in expected if name not in row.index}
    assert {name.split("_", 1)[1] for name in missing} == {k for k in pyradiomics_table()["missing"]
                                                          if not k.startswith("shape_")}  # no shape asked
    off = {name: f"{row[name]:.8g} vs {value:.8g}" for name, value in expected.items()
           if name in row.index and not np.isclose(row[name], value, rtol=1e-3, atol=1e-12)}
    assert len(expected) - len(missing) == 20 * 92 and off == {}


def test_normalisation_clips_outliers_before_it_scales():
    image = np.random.default_rng(8).normal(100, 10, size=(6, 12, 12))
    image[3, 6, 6] = 1000  # 60 standard deviations out
    mask = np.zeros(image.shape, bool)
    mask[2:5, 4:9, 4:9] = True
    row = extract(image, mask, Settings(families=("stat",), normalize=50, normalize_outliers=3, conventions="pyradiomics"),
                  spacing=(1, 1, 1)).iloc[0]
    assert row["stat_maximum"] == pytest.approx(150)  # clipped at 3 SD, then × 50
    plain = extract(image, mask, Settings(families=("stat",), normalize=50), spacing=(1, 1, 1)).iloc[0]
    assert plain["stat_maximum"] > 150 and plain["stat_median"] == pytest.approx(row["stat_median"])
