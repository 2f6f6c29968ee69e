"""Radiomic features: medlib.radiomics against PyRadiomics, same volume, same settings, same run.

A CT-like 256×256×128 volume (texture plus noise, 0.8 × 0.8 × 2 mm) with a spherical ROI of
radius 37 voxels (~212k voxels, about 60³), and 100 small spherical ROIs (radius 6) in the same
volume. Both tools compute the families both implement (shape, first order, GLCM, GLRLM, GLSZM,
NGTDM, GLDM) with a fixed bin width of 25 HU, bins aligned as PyRadiomics aligns them (from the multiple of the bin
width below the ROI's minimum), GLCM/GLRLM at distance 1 averaged over the 13 directions
(IBSI "3D, averaged", PyRadiomics' default). Timings are in-process after a warm-up: the big
ROI the median of 3 runs; the 100 small ROIs one batch for medlib, one call per ROI for
PyRadiomics. Feature values are compared where the definitions agree.

PyRadiomics lives in its own virtual environment (../shared/PEERS.md):

    python3 -m venv PEERS/pyradiomics && PEERS/pyradiomics/bin/pip install "numpy<2" setuptools wheel versioneer
    PEERS/pyradiomics/bin/pip install --no-build-isolation pyradiomics

    python benchmarks/radiomics.py --peers PEERS [--device cuda] [--record]
"""

from __future__ import annotations

import argparse
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
from medlib.radiomics.extract import pyradiomics_names
from results import append as record

SPACING = (2.0, 0.8, 0.8)  # z, y, x
BIN_WIDTH = 25.0
#: medlib's families for what PyRadiomics computes (it has no local intensity, IVH or GLDZM).
SHARED = ("morph", "stat", "ih", "cm", "rlm", "szm", "ngt", "ngl")
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


def write_nifti(path: Path, array: np.ndarray) -> None:
    import nibabel as nib

    affine = np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])
    nib.save(nib.Nifti1Image(array.transpose(2, 1, 0), affine), str(path))


def aligned(image: np.ndarray, mask: np.ndarray, device: str) -> Settings:
    """Fixed bin size with bins starting where PyRadiomics starts them."""
    origin = np.floor(image[mask].min() / BIN_WIDTH) * BIN_WIDTH
    return Settings(discretisation="fixed_bin_size", bin_width=BIN_WIDTH, resegment_range=(origin, np.inf),
                    families=SHARED, device=device)


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=Path, help="folder holding the pyradiomics virtual environment")
    p.add_argument("--device", default="cpu")
    p.add_argument("--record", action="store_true", help="append the result to benchmarks/README.md")
    args = p.parse_args()
    image, big, labels, n_small = volume()
    small_masks = [labels == n for n in range(1, n_small + 1)]

    big_seconds, ours = timed(lambda: extract(image, big, aligned(image, big, args.device), spacing=SPACING))
    small_settings = Settings(discretisation="fixed_bin_size", bin_width=BIN_WIDTH, families=SHARED, device=args.device)
    small_seconds, _ = timed(lambda: extract_batch([image] * n_small, small_masks, small_settings, spacing=SPACING))
    every_family = Settings(discretisation="fixed_bin_size", bin_width=BIN_WIDTH, device=args.device)
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
            f"\n\nmedlib with every family (adding local intensity, IVH and GLDZM) on the big ROI: {all_seconds:.3f} s.")
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
