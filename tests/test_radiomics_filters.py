"""medlib.radiomics.filters: the IBSI 2 phase 1 response maps and phase 2 feature values, the
filters inside the extraction (crop with the filter's reach, batches), bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import shared_data
from medlib.radiomics import RadiomicsError, Settings, extract, extract_batch
from medlib.radiomics.filters import Filter, FilterError, Gabor, Laws, LoG, Mean, Riesz, Simoncelli, Wavelet
from medlib.radiomics.io import settings_from_params

IBSI2 = Path(__file__).resolve().parent / "data" / "ibsi2"  # CC BY 4.0 phantoms and CC0 maps, kept here (its README)
IBSI2_CT = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ibsi2" / "ct_phantom"  # CC BY-NC: not kept
PHANTOM_SPACING = (2.0, 2.0, 2.0)

#: IBSI 2 phase 1: each test's phantom and filter, as the reference manual (arXiv 2006.05470)
#: defines them; MIRP's tests (oncoray/mirp, test/ibsi_2_response_map_test.py) encode the same.
PHASE1: dict[str, tuple[str, Filter]] = {
    "1_a_1": ("checkerboard", Mean(support=15, padding="constant")),
    "1_a_2": ("checkerboard", Mean(support=15, padding="nearest")),
    "1_a_3": ("checkerboard", Mean(support=15, padding="periodic")),
    "1_a_4": ("checkerboard", Mean(support=15, padding="mirror")),
    "1_b_1": ("impulse", Mean(support=15, padding="constant", dimensions=2)),
    "2_a": ("impulse", LoG(sigma=3.0, padding="constant")),
    "2_b": ("checkerboard", LoG(sigma=5.0, padding="mirror")),
    "2_c": ("checkerboard", LoG(sigma=5.0, padding="mirror", dimensions=2)),
    "3_a_1": ("impulse", Laws(kernels="E5L5S5", padding="constant")),
    "3_a_2": ("impulse", Laws(kernels="E5L5S5", padding="constant", rotation_invariant=True, pooling="max")),
    "3_a_3": ("impulse", Laws(kernels="E5L5S5", padding="constant", rotation_invariant=True, pooling="max",
                              energy_distance=7)),
    "3_b_1": ("checkerboard", Laws(kernels="E3W5R5", padding="mirror")),
    "3_b_2": ("checkerboard", Laws(kernels="E3W5R5", padding="mirror", rotation_invariant=True, pooling="max")),
    "3_b_3": ("checkerboard", Laws(kernels="E3W5R5", padding="mirror", rotation_invariant=True, pooling="max",
                                   energy_distance=7)),
    "3_c_1": ("checkerboard", Laws(kernels="L5S5", padding="mirror", dimensions=2)),
    "3_c_2": ("checkerboard", Laws(kernels="L5S5", padding="mirror", dimensions=2, rotation_invariant=True,
                                   pooling="max")),
    "3_c_3": ("checkerboard", Laws(kernels="L5S5", padding="mirror", dimensions=2, rotation_invariant=True,
                                   pooling="max", energy_distance=7)),
    "4_a_1": ("impulse", Gabor(sigma=10, wavelength=4, gamma=0.5, theta=60, padding="constant")),
    "4_a_2": ("impulse", Gabor(sigma=10, wavelength=4, gamma=0.5, theta=0, theta_step=45, padding="constant")),
    "4_b_1": ("sphere", Gabor(sigma=20, wavelength=8, gamma=2.5, theta=225, padding="mirror")),
    "4_b_2": ("sphere", Gabor(sigma=20, wavelength=8, gamma=2.5, theta=0, theta_step=22.5, padding="mirror")),
    "5_a_1": ("impulse", Wavelet(wavelet="db2", subband="LHL", padding="constant")),
    "5_a_2": ("impulse", Wavelet(wavelet="db2", subband="LHL", padding="constant", rotation_invariant=True)),
    "6_a_1": ("sphere", Wavelet(wavelet="coif1", subband="HHL", padding="periodic")),
    "6_a_2": ("sphere", Wavelet(wavelet="coif1", subband="HHL", padding="periodic", rotation_invariant=True)),
    "7_a_1": ("checkerboard", Wavelet(wavelet="haar", subband="LLL", level=2, padding="mirror", rotation_invariant=True)),
    "7_a_2": ("checkerboard", Wavelet(wavelet="haar", subband="HHH", level=2, padding="mirror", rotation_invariant=True)),
    "8_a_1": ("checkerboard", Simoncelli(level=1)),
    "8_a_2": ("checkerboard", Simoncelli(level=2)),
    "8_a_3": ("checkerboard", Simoncelli(level=3)),
    "9_a": ("impulse", Riesz(of=LoG(sigma=3.0, padding="constant"), order=(1, 0, 0))),
    "9_b_1": ("sphere", Riesz(of=LoG(sigma=3.0, padding="constant"), order=(0, 2, 0))),
    "10_b_1": ("pattern_1", Riesz(of=Simoncelli(level=1), order=(0, 2, 0))),
}


def volume(path: Path) -> np.ndarray:
    """A NIfTI volume as a z-y-x float64 array (the files are x-y-z)."""
    return np.asarray(nib.load(path).dataobj, dtype=np.float64).transpose(2, 1, 0)


def test_every_kept_reference_map_has_its_test():
    kept = {p.name.removesuffix("-ValidCRM.nii.gz") for p in (IBSI2 / "response_maps").glob("*.nii.gz")}
    assert kept == set(PHASE1)


@pytest.mark.parametrize("test_id", sorted(PHASE1))
def test_phase1_response_map_is_within_1_percent_of_the_reference_range(test_id: str):
    phantom, f = PHASE1[test_id]
    image = torch.from_numpy(volume(IBSI2 / "digital_phantom" / phantom / f"{phantom}.nii.gz"))
    reference = volume(IBSI2 / "response_maps" / f"{test_id}-ValidCRM.nii.gz")
    response = f(image[None], PHANTOM_SPACING)[0].numpy()
    assert response.shape == reference.shape
    error = np.abs(response - reference).max() / (reference.max() - reference.min())
    assert error <= 0.01, f"{test_id} ({f.name}): largest difference {error:.2%} of the reference's range"


def phase2_filter(number: int, dimensions: int) -> Filter | None:
    """The filter of IBSI 2 phase 2 configuration ``number`` (1-9), A (2D) or B (3D), mirror
    padding throughout."""
    two = dimensions == 2
    return {
        1: None,
        2: Mean(support=5, dimensions=dimensions),
        3: LoG(sigma=1.5, truncate=4.0, dimensions=dimensions),
        4: Laws(kernels="L5E5" if two else "L5E5E5", energy_distance=7, rotation_invariant=True, pooling="max",
                dimensions=dimensions),
        5: Gabor(sigma=5, wavelength=2, gamma=1.5, theta=0, theta_step=22.5, pooling="mean", dimensions=dimensions),
        6: Wavelet(wavelet="db3", subband="LH" if two else "LLH", level=1, rotation_invariant=True,
                   dimensions=dimensions),
        7: Wavelet(wavelet="db3", subband="HH" if two else "HHH", level=2, rotation_invariant=True,
                   dimensions=dimensions),
        8: Simoncelli(level=1, dimensions=dimensions),
        9: Simoncelli(level=2, dimensions=dimensions),
    }[number]


#: the reference file's tags → medlib's intensity statistics
STATISTICS = {"mean": "mean", "var": "variance", "skew": "skewness", "kurt": "kurtosis", "median": "median",
              "min": "minimum", "p10": "p10", "p90": "p90", "max": "maximum", "iqr": "interquartile_range",
              "range": "range", "mad": "mean_absolute_deviation", "rmad": "robust_mean_absolute_deviation",
              "medad": "median_absolute_deviation", "cov": "coefficient_of_variation",
              "qcod": "quartile_coefficient_of_dispersion", "energy": "energy", "rms": "root_mean_square"}


def phase2_references() -> dict[str, dict[str, tuple[float, float]]]:
    """filter id ("1.A" ...) → {medlib column: (reference value, tolerance)}, for every value the
    reference file gives."""
    found: dict[str, dict[str, tuple[float, float]]] = {}
    with open(IBSI2 / "reference_values.csv", newline="") as f:
        for r in csv.DictReader(f, delimiter=";"):
            if r["consensus_value"]:
                column = "stat_" + STATISTICS[r["feature_tag"].removeprefix("stat_")]
                found.setdefault(r["filter_id"], {})[column] = (float(r["consensus_value"]), float(r["tolerance"]))
    return found


@pytest.fixture(scope="module")
def ct_phantom() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The IBSI 2 CT phantom (from ../shared, not copied: CC BY-NC), z-y-x, and its spacing."""
    image = nib.load(shared_data(IBSI2_CT) / "image.nii.gz")
    x, y, z = (float(v) for v in image.header.get_zooms()[:3])
    return volume(IBSI2_CT / "image.nii.gz"), volume(IBSI2_CT / "mask.nii.gz"), (z, y, x)


def test_phase2_lists_every_configuration():
    assert sorted(phase2_references()) == [f"{n}.{d}" for n in range(1, 10) for d in "AB"]


@pytest.mark.parametrize("filter_id", sorted(phase2_references()))
def test_phase2_ct_phantom_features_meet_the_reference(ct_phantom, filter_id: str):
    """IBSI 2 phase 2: A is 2D without interpolation; B is 3D on 1 mm voxels (cubic B-spline,
    rounded to HU); re-segmentation to [-1000, 400] HU; intensity statistics of the response map."""
    image, mask, spacing = ct_phantom
    number, kind = filter_id.split(".")
    f = phase2_filter(int(number), 2 if kind == "A" else 3)
    settings = Settings(resample_spacing=(1.0, 1.0, 1.0) if kind == "B" else None, interpolator="cubic",
                        round_intensities=True, resegment_range=(-1000, 400), families=("stat",),
                        filters=(f,) if f else (), original=f is None)
    row = extract(image, mask, settings, spacing=spacing).iloc[0]
    prefix = f"{f.name}_" if f else ""
    references = phase2_references()[filter_id]
    misses = [f"{c}: {row[prefix + c]:.6g}, reference {v} ± {t}" for c, (v, t) in references.items()
              if not abs(row[prefix + c] - v) <= t]
    assert misses == []


def roi_near_the_edge(rng, shape=(14, 30, 26)):
    image = rng.normal(0, 100, size=shape)
    mask = np.zeros(shape, bool)
    mask[:5, 20:, 3:12] = True  # touches the image's first slice and last rows
    return image, mask


@pytest.mark.parametrize("f", [LoG(sigma=3.0), Laws(kernels="E5S5R5", energy_distance=2, rotation_invariant=True),
                               Wavelet(wavelet="db2", subband="HLH", level=2, padding="periodic"),
                               Gabor(sigma=4, wavelength=3, theta=30, padding="nearest"),
                               Riesz(of=Simoncelli(level=2), order=(1, 1, 0))], ids=lambda f: f.name)
def test_a_response_map_inside_the_roi_is_the_whole_image_s(f: Filter):
    """Extraction filters only the ROI's crop widened by the filter's reach; inside the ROI that
    must equal filtering the whole image (padding at the image's edges, not the crop's)."""
    rng = np.random.default_rng(1)
    image, mask = roi_near_the_edge(rng)
    spacing = (2.0, 1.0, 1.0)
    whole = f(torch.from_numpy(image)[None], spacing)[0].numpy()
    statistics = Settings(families=("stat",))
    direct = extract(whole, mask, statistics, spacing=spacing).iloc[0]
    cropped = extract(image, mask, Settings(families=("stat",), filters=(f,), original=False), spacing=spacing).iloc[0]
    assert list(cropped.index) == [f"{f.name}_{c}" for c in direct.index]
    np.testing.assert_allclose(cropped.to_numpy(float), direct.to_numpy(float), rtol=1e-9)


@pytest.mark.parametrize("f", [Simoncelli(level=1), Riesz(of=Simoncelli(level=1), order=(0, 1, 1)),
                               Riesz(of=LoG(sigma=2.0), order=(2, 0, 0))], ids=lambda f: f.name)
def test_a_fourier_filter_on_an_odd_grid_is_finite_and_keeps_no_constant(f: Filter):
    """On an odd number of voxels the Fourier grid holds the zero frequency itself, where the
    Riesz transform's ``ω / |ω|`` is 0/0: the response must stay finite, and a band-pass filter
    must remove a constant offset."""
    image = torch.from_numpy(np.random.default_rng(4).normal(0, 1, size=(9, 15, 13)))[None]
    response = f(image, (2.0, 1.0, 1.0))
    assert torch.isfinite(response).all()
    if not isinstance(f.of if isinstance(f, Riesz) else f, LoG):
        np.testing.assert_allclose(f(image + 100, (2.0, 1.0, 1.0)).numpy(), response.numpy(), atol=1e-9)


@pytest.mark.parametrize("wavelet, subband, level", [("haar", "HLH", 1), ("db2", "LLH", 2), ("coif1", "HHL", 3)])
def test_a_decimated_wavelet_holds_pywavelets_coefficients_over_their_blocks(wavelet: str, subband: str, level: int):
    import pywt

    image = np.random.default_rng(5).normal(0, 1, size=(48, 40, 56))
    f = Wavelet(wavelet=wavelet, subband=subband, level=level, padding="periodic", decimated=True)
    response = f(torch.from_numpy(image)[None], (1.0, 1.0, 1.0))[0].numpy()
    coefficients = pywt.wavedecn(image, wavelet, mode="periodization", level=level)
    key = "".join("d" if letter == "H" else "a" for letter in reversed(subband))  # z, y, x
    expected = coefficients[1][key] if key != "aaa" else coefficients[0]
    block = 2 ** level
    sampled = response[::block, ::block, ::block]
    np.testing.assert_allclose(sampled, expected, atol=1e-9 * np.abs(expected).max())
    np.testing.assert_array_equal(response, np.repeat(np.repeat(np.repeat(sampled, block, 0), block, 1), block, 2))
    assert f.reach((1.0, 1.0, 1.0)) is None  # anchored at the image's first voxel: never a crop


def test_a_batch_with_filters_gives_each_roi_what_it_gives_alone():
    rng = np.random.default_rng(2)
    first, first_mask = roi_near_the_edge(rng)
    second = rng.normal(50, 20, size=(9, 17, 12))
    second_mask = np.zeros(second.shape, bool)
    second_mask[2:7, 4:13, 3:9] = True
    elsewhere = np.zeros(first.shape, bool)  # a second ROI of the first image: shares its whole-image maps
    elsewhere[6:12, 2:9, 14:22] = True
    settings = Settings(families=("stat", "ih", "cm"), discretisation="fixed_bin_number", bins=8,
                        filters=(Mean(support=3), LoG(sigma=2.0, dimensions=2), Simoncelli(level=1)))
    together = extract_batch([first, second, first], [first_mask, second_mask, elsewhere], settings,
                             spacing=(1.0, 1.0, 1.0))
    plain = extract(first, first_mask, Settings(families=("stat", "ih", "cm"), discretisation="fixed_bin_number",
                                                bins=8), spacing=(1.0, 1.0, 1.0)).iloc[0]
    assert {"stat_mean", "mean_d3_3d_stat_mean", "log_s2_2d_cm_joint_maximum_3D_averaged"} <= set(together.columns)
    for n, (image, mask) in enumerate([(first, first_mask), (second, second_mask), (first, elsewhere)]):
        alone = extract(image, mask, settings, spacing=(1.0, 1.0, 1.0)).iloc[0]
        np.testing.assert_allclose(together.iloc[n].to_numpy(float), alone.to_numpy(float), rtol=1e-9, equal_nan=True)
    # the original image's features do not change when filters are added
    np.testing.assert_allclose(together.iloc[0][plain.index].to_numpy(float), plain.to_numpy(float), rtol=1e-12)


def test_a_response_map_is_discretised_over_its_own_range_and_keeps_the_original_s_roi():
    """Re-segmentation uses the original intensities; the response map of a LoG (values around 0)
    is then binned from its own minimum, not from the re-segmentation range's lower bound."""
    rng = np.random.default_rng(3)
    image = rng.normal(100, 30, size=(10, 20, 20))
    mask = np.ones(image.shape, bool)
    f = LoG(sigma=1.0)
    settings = Settings(families=("stat", "ih"), discretisation="fixed_bin_size", bin_width=5,
                        resegment_range=(80, 400), filters=(f,))
    row = extract(image, mask, settings, spacing=(1.0, 1.0, 1.0)).iloc[0]
    kept = (image >= 80) & (image <= 400)
    response = f(torch.from_numpy(image)[None], (1.0, 1.0, 1.0))[0].numpy()[kept]
    assert row[f"{f.name}_stat_mean"] == pytest.approx(response.mean(), rel=1e-9)
    assert row["stat_mean"] == pytest.approx(image[kept].mean(), rel=1e-9)
    levels = np.floor((response - response.min()) / 5) + 1
    assert row[f"{f.name}_ih_maximum"] == levels.max()


@pytest.mark.parametrize("make, says", [
    (lambda: Mean(support=4), "odd number"),
    (lambda: Mean(padding="reflect"), "constant, nearest, periodic, mirror"),
    (lambda: LoG(sigma=0), "positive"),
    (lambda: Laws(kernels="E5L5"), "give 3 of"),
    (lambda: Laws(kernels="E5L5Q5"), "give 3 of"),
    (lambda: Laws(kernels="E5L5S5", pooling="median"), "mean, max"),
    (lambda: Wavelet(wavelet="nope"), "PyWavelets"),
    (lambda: Wavelet(subband="LL"), "L or H for each of x, y, z"),
    (lambda: Simoncelli(padding="mirror"), "periodic"),
    (lambda: Riesz(of=LoG(), order=(0, 0, 0)), "not all 0"),
    (lambda: Riesz(of=Mean(), order=(1, 0, 0)), "LoG filter or a Simoncelli wavelet"),
    (lambda: Gabor(theta_step=0), "positive step"),
])
def test_a_filter_the_standard_does_not_define_is_refused(make, says: str):
    with pytest.raises(FilterError, match=says):
        make()


def test_settings_refuse_what_is_not_a_filter():
    with pytest.raises(RadiomicsError, match="medlib.radiomics.filters"):
        Settings(filters=("log",))
    with pytest.raises(RadiomicsError, match="nothing to describe"):
        Settings(original=False)
    with pytest.raises(RadiomicsError, match="PyRadiomics has no names for IBSI 2's filters \\(log_s1_3d\\)"):
        Settings(filters=(LoG(),), names="pyradiomics")
    with pytest.raises(RadiomicsError, match="filter_settings for 'mean_5_3d', which is not among the filters"):
        Settings(filters=(LoG(),), filter_settings={"mean_5_3d": {"bins": 8}})
    with pytest.raises(RadiomicsError, match="resegment_range cannot differ per filter"):
        Settings(filters=(LoG(),), filter_settings={LoG().name: {"resegment_range": (0, 1)}})
    with pytest.raises(RadiomicsError, match="discretisation 'rounded'"):
        Settings(filters=(LoG(),), filter_settings={LoG().name: {"discretisation": "rounded"}})


def test_a_filter_s_own_settings_discretise_its_response_map_and_only_its():
    rng = np.random.default_rng(6)
    image, mask = roi_near_the_edge(rng)
    spacing = (2.0, 1.0, 1.0)
    f = LoG(sigma=2.0)
    families = ("stat", "ih", "cm")
    own = {"discretisation": "fixed_bin_size", "bin_width": 7.0, "energy_shift": 50.0}
    row = extract(image, mask, Settings(families=families, filters=(f,), filter_settings={f.name: own}),
                  spacing=spacing).iloc[0]
    whole = f(torch.from_numpy(image)[None], spacing)[0].numpy()
    response = extract(whole, mask, Settings(families=families, **own), spacing=spacing).iloc[0]
    original = extract(image, mask, Settings(families=families), spacing=spacing).iloc[0]
    np.testing.assert_allclose(row[[f"{f.name}_{c}" for c in response.index]].to_numpy(float),
                               response.to_numpy(float), rtol=1e-9)
    np.testing.assert_allclose(row[list(original.index)].to_numpy(float), original.to_numpy(float), rtol=1e-12)


def test_a_pyradiomics_parameter_file_s_image_types_are_read_or_refused_by_name(tmp_path):
    from medlib.radiomics.image_types import RecursiveLoG, StationaryWavelet

    params = tmp_path / "params.yaml"
    params.write_text("imageType:\n  Original: {}\n  LoG: {sigma: [1.0, 2.0]}\n  Wavelet: {level: 2}\n"
                      "setting:\n  binWidth: 25\n")
    settings, _ = settings_from_params(params)
    assert settings.original and [f.pyradiomics_name for f in settings.filters[:2]] == [
        "log-sigma-1-0-mm-3D", "log-sigma-2-0-mm-3D"]
    wavelets = [f.pyradiomics_name for f in settings.filters if isinstance(f, StationaryWavelet)]
    assert len(wavelets) == 7 + 8 and "wavelet2-LLL" in wavelets and "wavelet-LLL" not in wavelets
    assert all(isinstance(f, RecursiveLoG) for f in settings.filters[:2])
    params.write_text("imageType:\n  LBP3D: {lbp3DLevels: 3, binWidth: 0.5}\n  LoG: {sigma: [1.0], binCount: 8}\n"
                      "setting:\n  binWidth: 25\n")
    settings, _ = settings_from_params(params)
    assert [f.pyradiomics_name for f in settings.filters] == [
        "lbp-3D-m1", "lbp-3D-m2", "lbp-3D-m3", "lbp-3D-k", "log-sigma-1-0-mm-3D"]
    assert settings.filter_settings["lbp_3d_m3"] == {"discretisation": "fixed_bin_size", "bin_width": 0.5,
                                                     "energy_shift": 0.0}
    assert settings.filter_settings["log_sigma_1_0_mm_3d"]["bins"] == 8
    assert (settings.discretisation, settings.bin_width) == ("fixed_bin_size", 25)  # the original's unchanged
    params.write_text("imageType:\n  LoG: {sigma: [1.0], resegmentRange: [0, 5]}\n")
    with pytest.raises(RadiomicsError, match="resegmentRange of image type LoG"):
        settings_from_params(params)
    params.write_text("imageType:\n  Original: {binWidth: 5}\n")
    with pytest.raises(RadiomicsError, match="binWidth of the original image in the setting section"):
        settings_from_params(params)
    params.write_text("imageType:\n  LBP4D: {}\n")
    with pytest.raises(RadiomicsError, match="image type LBP4D is not implemented"):
        settings_from_params(params)
    params.write_text("imageType:\n  LoG: {}\n")
    with pytest.raises(RadiomicsError, match="LoG needs sigma"):
        settings_from_params(params)


def test_the_command_line_describes_the_filters_it_is_given_as_the_api_does(tmp_path):
    import subprocess
    import sys

    import pandas as pd

    rng = np.random.default_rng(7)
    image, mask = roi_near_the_edge(rng)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])  # x, y, z: spacing (z, y, x) = (2, 1, 1)
    nib.save(nib.Nifti1Image(image.transpose(2, 1, 0), affine), tmp_path / "image.nii.gz")
    nib.save(nib.Nifti1Image(mask.transpose(2, 1, 0).astype(np.uint8), affine), tmp_path / "mask.nii.gz")
    given = ["LoG(sigma=2)", "Riesz(of=Simoncelli(level=1), order=(0, 2, 0))"]
    env = {"MEDHUB_AUDIT_BUFFER": str(tmp_path / "audit.jsonl"), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "medlib.cli", "radiomics", str(tmp_path / "image.nii.gz"),
               str(tmp_path / "mask.nii.gz")]
    run = subprocess.run(command + [a for f in given for a in ("--filter", f)] + ["-o", str(tmp_path / "f.csv")],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    row = pd.read_csv(tmp_path / "f.csv").iloc[0]
    api = extract(image, mask, Settings(filters=(LoG(sigma=2), Riesz(of=Simoncelli(level=1), order=(0, 2, 0)))),
                  spacing=(2.0, 1.0, 1.0)).iloc[0]
    assert "riesz020_simoncelli_level1_3d_stat_mean" in api.index
    np.testing.assert_allclose(row[list(api.index)].to_numpy(float), api.to_numpy(float), rtol=1e-9)
    bad = subprocess.run(command + ["--filter", "LoG(sigma=2, width=3)"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "LoG has no parameter width; its parameters: padding, dimensions, sigma" in bad.stderr


@pytest.mark.parametrize("text, says", [
    ("__import__('os').system('true')", "give a filter as Name"),
    ("LoG(sigma=__import__('os'))", "give a filter as Name"),
    ("LoG(3)", "by name"),
    ("LoG(sigma=x)", "is not a number, string, tuple or filter"),
    ("LoG(", "give a filter as Name"),
])
def test_a_filter_s_text_is_read_not_run(text: str, says: str):
    from medlib.radiomics.filters import parse

    with pytest.raises(FilterError, match=says):
        parse(text)
