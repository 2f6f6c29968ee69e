"""Radiomic features: medlib.radiomics against PyRadiomics, same volume, same settings, same run.

A CT-like 256×256×128 volume (texture plus noise, 0.8 × 0.8 × 2 mm) with a spherical ROI of
radius 37 voxels (~212k voxels, about 60³), and 100 small spherical ROIs (radius 6) in the same
volume. Both tools compute the families both implement (shape, first order, GLCM, GLRLM, GLSZM,
NGTDM, GLDM) with a fixed bin width of 25 HU under PyRadiomics' conventions (``conventions=
"pyradiomics"``: bins from the multiple of the bin width below each ROI's minimum, the axis
lengths from the population covariance), and the one texture aggregation PyRadiomics computes
by default: GLCM/GLRLM at distance 1 averaged over the 13 directions (IBSI "3D, averaged"),
zones and neighbourhoods in 3D. medlib with every IBSI aggregation, and with every family, is
timed too (same conventions). Timings are in-process after a warm-up: the big ROI the median of
3 runs; the 100 small ROIs one batch for medlib, one call per ROI for PyRadiomics. Feature
values are compared where the definitions agree.

PyRadiomics lives in its own virtual environment (../shared/PEERS.md):

    python3 -m venv PEERS/pyradiomics && PEERS/pyradiomics/bin/pip install "numpy<2" setuptools wheel versioneer
    PEERS/pyradiomics/bin/pip install --no-build-isolation pyradiomics

    python benchmarks/radiomics.py --peers PEERS [--device cuda] [--record]

``--filtered``: derived images instead, on a real CT (STS_001 of the IBSI validation set, from
../shared): the PyRadiomics parameter file of the usual published signature (Original, LoG σ 1, 2
and 3 mm, the 8 wavelet sub-bands of coif1; PyRadiomics' feature classes; bin width 25) through
medlib (``--params``' conventions and image types) and PyRadiomics, and the same filters as IBSI 2
defines them (LoG, undecimated coif1, every IBSI family) through medlib and MIRP (its own
virtual environment, PEERS/mirp: ``pip install mirp``); on the patient's GTV (117k voxels) and on
100 small ROIs (~150 voxels) in the same image; re-segmentation to [-1000, 400] HU for the IBSI
run (MIRP's fixed bin size needs a lower bound). PyRadiomics and MIRP take one call per ROI (each
filters the image again, as they are used); medlib batches of ``--batch`` (25). MIRP on the small ROIs is timed
over ``--mirp-rois`` of them (default 10) and given per ROI and scaled to 100, said so.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medlib.radiomics import Settings, extract, extract_batch
from medlib.radiomics.extract import FAMILIES, pyradiomics_names, pyradiomics_table
from results import append as record

SPACING = (2.0, 0.8, 0.8)  # z, y, x
BIN_WIDTH = 25.0
#: medlib's families for what PyRadiomics computes (it has no local intensity, IVH or GLDZM).
SHARED = ("morph", "stat", "ih", "cm", "rlm", "szm", "ngt", "ngl")
#: The texture aggregations PyRadiomics computes by default, by family.
MATCHED = tuple(sorted(set(pyradiomics_table()["aggregations"]["3D"].values())))
#: PyRadiomics features whose definitions differ from IBSI's (not compared).
DIFFERENT = {"original_glcm_Idn", "original_glcm_Idmn"}  # PyRadiomics normalises by its own Ng

PEER_SCRIPT = r"""
import json, sys, time, statistics
import SimpleITK as sitk
from radiomics import featureextractor, logger
logger.setLevel(40)
image, big, small, n_small = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
settings = {"binWidth": 25, "force2D": False, "label": 1, "additionalInfo": False}
extractor = featureextractor.RadiomicsFeatureExtractor(**settings)
extractor.disableAllFeatures()
for name in ("shape", "firstorder", "glcm", "glrlm", "glszm", "ngtdm", "gldm"):
    extractor.enableFeatureClassByName(name)
img, big_mask, small_masks = sitk.ReadImage(image), sitk.ReadImage(big), sitk.ReadImage(small)
extractor.execute(img, big_mask)  # warm-up
times = []
for _ in range(3):
    t0 = time.perf_counter(); values = extractor.execute(img, big_mask); times.append(time.perf_counter() - t0)
t0 = time.perf_counter()
for label in range(1, n_small + 1):
    extractor.execute(img, small_masks, label=label)
small_time = time.perf_counter() - t0
print(json.dumps({"big": statistics.median(times), "small": small_time,
                  "values": {k: float(v) for k, v in values.items() if k.startswith("original_")}}))
"""


def volume() -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    rng = np.random.default_rng(7)
    z, y, x = np.mgrid[:128, :256, :256]
    image = (40 + 300 * np.sin(x / 17.0) * np.cos(y / 23.0) + 80 * np.sin(z / 9.0) + rng.normal(0, 30, z.shape))
    image = image.astype(np.float32)
    big = (z - 64) ** 2 + (y - 128) ** 2 + (x - 128) ** 2 <= 37 ** 2
    labels = np.zeros(image.shape, np.uint8)
    centres = [(cz, cy, cx) for cz in (20, 50, 80, 110) for cy in range(20, 240, 45) for cx in range(20, 240, 45)][:100]
    for n, (cz, cy, cx) in enumerate(centres, 1):
        labels[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= 36] = n
    return image, big, labels, len(centres)


def write_nifti(path: Path, array: np.ndarray, spacing=SPACING) -> None:
    import nibabel as nib

    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    nib.save(nib.Nifti1Image(array.transpose(2, 1, 0), affine), str(path))


def matched(device: str) -> Settings:
    """PyRadiomics' settings in medlib's terms: fixed bin size, bins from the multiple of the bin
    width below the ROI's minimum and PyRadiomics' other conventions, the families and the
    texture aggregation both compute."""
    return Settings(discretisation="fixed_bin_size", bin_width=BIN_WIDTH, conventions="pyradiomics",
                    families=SHARED, aggregations=MATCHED, device=device)


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    fn()  # warm-up
    times, result = [], None
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


PATIENT = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ibsi_validation" / "dicom" / "STS_001" / "CT"
#: the PyRadiomics parameter file of --filtered
SIGNATURE = {"setting": {"binWidth": 25, "label": 1, "additionalInfo": False},
             "imageType": {"Original": {}, "LoG": {"sigma": [1.0, 2.0, 3.0]}, "Wavelet": {}},
             "featureClass": {c: None for c in ("shape", "firstorder", "glcm", "glrlm", "glszm", "ngtdm", "gldm")}}

PYRADIOMICS_FILTERED = r"""
import json, sys, time
import SimpleITK as sitk
from radiomics import featureextractor, logger
logger.setLevel(40)
params, image, big, small, n_small = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
extractor = featureextractor.RadiomicsFeatureExtractor(params)
img, big_mask, small_masks = sitk.ReadImage(image), sitk.ReadImage(big), sitk.ReadImage(small)
extractor.execute(img, small_masks, label=1)  # warm-up
t0 = time.perf_counter(); values = extractor.execute(img, big_mask); big_time = time.perf_counter() - t0
t0 = time.perf_counter()
for label in range(1, n_small + 1):
    extractor.execute(img, small_masks, label=label)
print(json.dumps({"big": big_time, "small": time.perf_counter() - t0,
                  "values": {k: float(v) for k, v in values.items() if not k.startswith("diagnostics")}}))
"""

MIRP_FILTERED = r"""
import json, sys, time, warnings, logging
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
from mirp import extract_features
image, big, small_files = sys.argv[1], sys.argv[2], sys.argv[3:]
settings = dict(image_modality="CT", base_feature_families="all", base_discretisation_method="fixed_bin_size",
                base_discretisation_bin_width=25.0, resegmentation_intensity_range=[-1000.0, 400.0],
                filter_kernels=["laplacian_of_gaussian", "separable_wavelet"], laplacian_of_gaussian_sigma=[1.0, 2.0, 3.0],
                separable_wavelet_families="coif1", separable_wavelet_set="all", response_map_feature_families="all",
                response_map_discretisation_method="fixed_bin_size", response_map_discretisation_bin_width=25.0,
                export_features=True, write_features=False, num_cpus=1)
t0 = time.perf_counter(); extract_features(image=image, mask=big, **settings); big_time = time.perf_counter() - t0
t0 = time.perf_counter()
for mask in small_files:
    extract_features(image=image, mask=mask, **settings)
print(json.dumps({"big": big_time, "small_each": (time.perf_counter() - t0) / len(small_files)}))
"""


def small_rois(shape: tuple[int, int, int], spacing, n: int = 100) -> np.ndarray:
    """Labels 1..n: balls of radius 5 mm on a grid inside the volume."""
    z, y, x = np.indices(shape)
    labels = np.zeros(shape, np.uint8)
    centres = [(cz, cy, cx) for cz in np.linspace(6, shape[0] - 7, 5).astype(int)
               for cy in np.linspace(15, shape[1] - 16, 5).astype(int)
               for cx in np.linspace(15, shape[2] - 16, 5).astype(int)][:n]
    for label, (cz, cy, cx) in enumerate(centres, 1):
        ball = ((z - cz) * spacing[0]) ** 2 + ((y - cy) * spacing[1]) ** 2 + ((x - cx) * spacing[2]) ** 2 <= 25
        labels[ball] = label
    return labels


def filtered(args) -> str:
    """The --filtered benchmark: its table as text."""
    from medlib.radiomics import filters as ibsi
    from medlib.radiomics.io import read_roi, settings_from_pyradiomics

    if not PATIENT.exists():
        raise SystemExit(f"{PATIENT} is missing: --filtered reads a real CT from ../shared (see ../shared/README.md)")
    image, gtv, spacing = read_roi(PATIENT / "image", PATIENT / "mask" / "RS.dcm", "GTV_Mass_CT")
    image = image.astype(np.float64)
    labels = small_rois(image.shape, spacing)
    n = int(labels.max())
    small = [labels == k for k in range(1, n + 1)]
    ours, _ = settings_from_pyradiomics(SIGNATURE, names="pyradiomics", device=args.device)
    bands = ["".join(b) for b in itertools.product("LH", repeat=3)]
    as_ibsi = Settings(discretisation="fixed_bin_size", bin_width=25.0, resegment_range=(-1000.0, 400.0),
                       device=args.device, filters=tuple(ibsi.LoG(sigma=s) for s in (1.0, 2.0, 3.0)) + tuple(
                           ibsi.Wavelet(wavelet="coif1", subband=b) for b in bands))
    extract_batch([image] * 2, small[:2], ours, spacing=spacing)  # warm-up
    timings = {}
    for name, settings in (("pyradiomics", ours), ("ibsi", as_ibsi)):
        t0 = time.perf_counter()
        row = extract(image, gtv, settings, spacing=spacing).iloc[0]
        timings[name, "big"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for start in range(0, n, args.batch):
            extract_batch([image] * len(small[start:start + args.batch]), small[start:start + args.batch], settings,
                          spacing=spacing)
        timings[name, "small"] = time.perf_counter() - t0
        if name == "pyradiomics":
            values = row
    peer, mirp = None, None
    with tempfile.TemporaryDirectory(prefix="medlib-radiomics-filtered-") as tmp:
        tmp = Path(tmp)
        for name, array in (("image", image.astype(np.float32)), ("big", gtv.astype(np.uint8)), ("small", labels)):
            write_nifti(tmp / f"{name}.nii.gz", array, spacing)
        if args.peers and (args.peers / "pyradiomics").exists():
            run = subprocess.run([str(args.peers.resolve() / "pyradiomics/bin/python"), "-c", PYRADIOMICS_FILTERED,
                                  json.dumps(SIGNATURE), *(str(tmp / f"{k}.nii.gz") for k in ("image", "big", "small")),
                                  str(n)], capture_output=True, text=True)
            if run.returncode:
                print(f"pyradiomics failed: {run.stderr[-1000:]}", file=sys.stderr)
            else:
                peer = json.loads(run.stdout.strip().splitlines()[-1])
        if args.peers and (args.peers / "mirp").exists():
            files = []
            for k in range(1, args.mirp_rois + 1):
                write_nifti(tmp / f"small{k}.nii.gz", (labels == k).astype(np.uint8), spacing)
                files.append(str(tmp / f"small{k}.nii.gz"))
            run = subprocess.run([str(args.peers.resolve() / "mirp/bin/python"), "-c", MIRP_FILTERED,
                                  str(tmp / "image.nii.gz"), str(tmp / "big.nii.gz"), *files],
                                 capture_output=True, text=True, cwd=tmp)
            if run.returncode:
                print(f"mirp failed: {run.stderr[-1000:]}", file=sys.stderr)
            else:
                mirp = json.loads(run.stdout.strip().splitlines()[-1])
    big_case = f"1 real CT ROI ({int(gtv.sum())} voxels, {'×'.join(map(str, image.shape))} image)"
    small_case = f"{n} ROIs of ~{int(np.mean([m.sum() for m in small]))} voxels, same image (medlib: batches of {args.batch})"
    rows = ["| parameters | case | medlib | peer | × faster |", "|---|---|---|---|---|"]
    for case, key in ((big_case, "big"), (small_case, "small")):
        theirs = peer and peer[key]
        rows.append(f"| PyRadiomics file (12 images, PyRadiomics' classes) | {case} | {timings['pyradiomics', key]:.2f} s | "
                    + (f"PyRadiomics {theirs:.2f} s | {theirs / timings['pyradiomics', key]:.1f} |" if theirs else "— | — |"))
    for case, key in ((big_case, "big"), (small_case, "small")):
        theirs = mirp and (mirp["big"] if key == "big" else mirp["small_each"] * n)
        label = ("MIRP {:.2f} s" if key == "big" else f"MIRP {{:.2f}} s ({args.mirp_rois} ROIs timed, ×{n / args.mirp_rois:g})")
        rows.append(f"| IBSI 2 filters (12 images, every IBSI family) | {case} | {timings['ibsi', key]:.2f} s | "
                    + (f"{label.format(theirs)} | {theirs / timings['ibsi', key]:.1f} |" if theirs else "— | — |"))
    text = f"device: {args.device} ({torch.get_num_threads()} CPU threads)\n\n" + "\n".join(rows)
    if peer:
        shared = [k for k in values.index if k in peer["values"]]
        agree = sum(bool(np.isclose(values[k], peer["values"][k], rtol=1e-3, atol=1e-9)) for k in shared)
        text += f"\n\nFeature values, PyRadiomics file on the real ROI: {agree} of {len(shared)} shared features within 0.1%."
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=Path, help="folder holding the pyradiomics (and, for --filtered, mirp) environments")
    p.add_argument("--device", default="cpu")
    p.add_argument("--filtered", action="store_true", help="derived images on a real CT (see the docstring)")
    p.add_argument("--mirp-rois", type=int, default=10, help="--filtered: small ROIs MIRP is timed over")
    p.add_argument("--batch", type=int, default=25, help="--filtered: medlib's ROIs per batch (memory: every family "
                                                         "of 12 images at once)")
    p.add_argument("--record", action="store_true", help="append the result to benchmarks/README.md")
    args = p.parse_args()
    if args.filtered:
        text = filtered(args)
        print(text)
        if args.record:
            record("Radiomics with derived images, medlib vs PyRadiomics and MIRP",
                   f"python benchmarks/radiomics.py --filtered --peers PEERS --device {args.device} "
                   f"--mirp-rois {args.mirp_rois} --batch {args.batch}", text)
        return 0
    image, big, labels, n_small = volume()
    small_masks = [labels == n for n in range(1, n_small + 1)]

    settings = matched(args.device)
    big_seconds, ours = timed(lambda: extract(image, big, settings, spacing=SPACING))
    small_seconds, _ = timed(lambda: extract_batch([image] * n_small, small_masks, settings, spacing=SPACING))
    every_aggregation = dataclasses.replace(settings, aggregations=None)
    aggregations_seconds, _ = timed(lambda: extract(image, big, every_aggregation, spacing=SPACING))
    every_family = dataclasses.replace(every_aggregation, families=FAMILIES)
    all_seconds, _ = timed(lambda: extract(image, big, every_family, spacing=SPACING), repeat=1)
    rows = ["| case | medlib | PyRadiomics | × faster |", "|---|---|---|---|"]
    peer = None
    if args.peers:
        with tempfile.TemporaryDirectory(prefix="medlib-radiomics-bench-") as tmp:
            tmp = Path(tmp)
            for name, array in (("image", image), ("big", big.astype(np.uint8)), ("small", labels)):
                write_nifti(tmp / f"{name}.nii.gz", array)
            run = subprocess.run([str(args.peers.resolve() / "pyradiomics/bin/python"), "-c", PEER_SCRIPT,
                                  *(str(tmp / f"{n}.nii.gz") for n in ("image", "big", "small")), str(n_small)],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                print(f"pyradiomics failed: {run.stderr[-1000:]}", file=sys.stderr)
            else:
                peer = json.loads(run.stdout.strip().splitlines()[-1])
    cases = (("1 ROI of 212k voxels (256×256×128 volume)", big_seconds, peer and peer["big"]),
             (f"{n_small} ROIs of ~900 voxels", small_seconds, peer and peer["small"]))
    for case, mine, theirs in cases:
        rows.append(f"| {case} | {mine:.3f} s | {theirs:.3f} s | {theirs / mine:.1f} |" if theirs else
                    f"| {case} | {mine:.3f} s | — | — |")
    text = (f"device: {args.device} ({torch.get_num_threads()} CPU threads)\n\n" + "\n".join(rows) +
            f"\n\nmedlib on the big ROI with every IBSI texture aggregation (GLCM and GLRLM six, the "
            f"others three; PyRadiomics computes one): "
            f"{aggregations_seconds:.3f} s; with every family too (adding local intensity, IVH and GLDZM): "
            f"{all_seconds:.3f} s.")
    if peer:
        names = pyradiomics_names()
        row = ours.iloc[0]
        diffs = {theirs: abs(row[mine] - peer["values"][theirs]) / max(abs(peer["values"][theirs]), 1e-12)
                 for mine, theirs in names.items() if theirs in peer["values"] and theirs not in DIFFERENT}
        worst = max(diffs, key=diffs.get)
        agree = sum(d <= 1e-3 for d in diffs.values())
        text += (f"\n\nFeature values: {agree} of {len(diffs)} compared features agree within 0.1% "
                 f"(largest relative difference {diffs[worst]:.2e}, {worst}); not compared, as defined "
                 f"differently: {', '.join(sorted(DIFFERENT))}.")
    print(text)
    if args.record:
        record("Radiomics, medlib vs PyRadiomics", f"python benchmarks/radiomics.py --peers PEERS --device {args.device}",
               text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
