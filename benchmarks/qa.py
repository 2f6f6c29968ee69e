"""medlib.qa against the libraries' own loops: a validation over 200 volumes, and the saliency
maps of one 96³ volume.

1. Validation: MONAI's UNet (8-16-32) segmenting 200 synthetic CT series (32 slices of 96×96,
   DICOM files) against a threshold label. The libraries' loop: MONAI's ``LoadImage``
   (PydicomReader) per series, the model on one volume at a time, MONAI's Dice, HD95, surface
   distance and calibration error per case.
   medlib: ``qa.validate`` (medlib's series reader on threads while the model runs on batches of
   8, the same MONAI metrics, bootstrap intervals, calibration, strata, the stored report), with
   and without its input checks. Equal: every case's Dice.
2. Saliency of one 96³ volume for MONAI's ``Classifier`` (8-16-32 channels, strides 2): Grad-CAM
   (MONAI's ``GradCAM``), occlusion sensitivity (MONAI's ``OcclusionSensitivity`` with its
   defaults: 16³ box, overlap 0.6, batches of 16) and integrated gradients (Captum's defaults:
   50 steps, all in one batch), against ``qa.explain`` (the same computations, occluded images and
   integration steps in batches of ``--batch``). Equal: the maps (relative difference).

    python benchmarks/qa.py [--quick] [--volumes 200] [--device cpu|cuda] [--batch 64] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medlib import qa
from medlib.datasets.series import find_series
from medlib.train.examples import hu_input, small_unet
from results import append as record

SHAPE = (32, 96, 96)


def write_volumes(root: Path, n: int) -> None:
    from medlib.synthetic import write_ct_series

    for i in range(n):
        write_ct_series(root / f"s{i:03d}", patient_id=f"B{i}", shape=SHAPE, spacing=(2.5, 1.0, 1.0), seed=i)


def naive_validation(model: torch.nn.Module, root: Path, device: torch.device) -> dict[str, float]:
    """MONAI's loop: load each series, run the model on it alone, MONAI's metrics per case (Dice,
    HD95, mean symmetric surface distance, in mm) and its calibration error over the voxels."""
    from monai.metrics import CalibrationErrorMetric, DiceMetric, HausdorffDistanceMetric, SurfaceDistanceMetric
    from monai.transforms import LoadImage

    load = LoadImage(reader="PydicomReader", image_only=True)
    dice, hd95 = DiceMetric(include_background=True), HausdorffDistanceMetric(include_background=True, percentile=95)
    surface, calibration = SurfaceDistanceMetric(include_background=True, symmetric=True), CalibrationErrorMetric()
    out = {}
    with torch.no_grad():
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            image = load(str(folder))
            spacing = [float(s) for s in image.pixdim[:3]][::-1]
            volume = np.asarray(image).transpose(2, 1, 0).astype(np.float32)  # x-y-z → z-y-x
            x = torch.from_numpy(hu_input(volume))[None].to(device)
            probability = torch.sigmoid(model(x))
            predicted = (probability >= 0.5).float()
            label = torch.from_numpy(volume > 30)[None, None].float().to(device)
            out[folder.name] = float(dice(predicted, label)[0, 0])
            hd95(predicted, label, spacing=spacing)
            surface(predicted, label, spacing=spacing)
            calibration(probability, label)
    return out


def medlib_validation(model: torch.nn.Module, root: Path, device: torch.device, check: bool,
                      report_to: Path) -> qa.ValidationReport:
    return qa.validate(model, root, task="segmentation", labels=lambda s, v: v > 30, transform=hu_input,
                       batch_size=8, device=device, check=check, folder=report_to, progress=False)


def dice_by_folder(report: qa.ValidationReport, root: Path) -> dict[str, float]:
    names = {s.uid: Path(s.slices[0].path).parent.name for s in find_series(root)}
    return {names[c["series"]]: c["dice"] for c in report.document["cases"]}


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def saliency(device: torch.device, batch: int, size: int) -> list[dict]:
    from captum.attr import IntegratedGradients
    from monai.networks.nets import Classifier
    from monai.visualize import GradCAM, OcclusionSensitivity

    from medlib.qa.cases import coarsest_layer
    from medlib.qa.saliency import score_of

    torch.manual_seed(0)
    model = Classifier(in_shape=(1, size, size, size), classes=1, channels=(8, 16, 32), strides=(2, 2, 2)).to(device)
    model.eval()
    x = torch.rand(1, 1, size, size, size, device=device)
    layer = coarsest_layer(model, x)  # what qa.explain chooses
    score = score_of(model, x, "classification")
    rows = []

    seconds, theirs = timed(lambda: GradCAM(score, target_layers=f"model.{layer}", postprocessing=lambda m: m)(
        x.clone(), class_idx=0)[0, 0].detach().cpu().numpy())
    mine_s, mine = timed(qa.explain, model, x, task="classification", methods=("gradcam",), layer=layer)
    rows.append(("Grad-CAM", seconds, mine_s, theirs, mine.maps["gradcam"]))

    def occlusion():
        value = float(score(x)[0, 0])
        occluded, _ = OcclusionSensitivity(score, activate=False, verbose=False)(x)
        return (value - occluded[0, 0]).cpu().numpy()

    seconds, theirs = timed(occlusion)
    mine_s, mine = timed(qa.explain, model, x, task="classification", methods=("occlusion",), batch_size=batch)
    rows.append(("occlusion (16³ box, overlap 0.6)", seconds, mine_s, theirs, mine.maps["occlusion"]))

    seconds, theirs = timed(lambda: IntegratedGradients(score).attribute(x, baselines=0.0, target=0)[0].sum(0)
                            .detach().cpu().numpy())
    mine_s, mine = timed(qa.explain, model, x, task="classification", methods=("integrated_gradients",),
                         batch_size=batch)
    rows.append(("integrated gradients (50 steps)", seconds, mine_s, theirs, mine.maps["integrated_gradients"]))
    return [{"method": name, "library_s": a, "medlib_s": b, "speedup": a / b,
             "max_relative_difference": float(np.abs(t - m).max() / (np.abs(t).max() or 1.0))}
            for name, a, b, t, m in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, default=200)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64, help="medlib's batch of occluded images and steps")
    parser.add_argument("--quick", action="store_true", help="20 volumes, maps of a 48³ volume")
    parser.add_argument("--record", action="store_true", help="append the results to benchmarks/README.md")
    args = parser.parse_args()
    if args.quick:
        args.volumes = 20
    size = 48 if args.quick else 96
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "volumes"
        os.environ.setdefault("MEDHUB_AUDIT_BUFFER", str(Path(tmp) / "audit.jsonl"))  # no audit service here
        write_volumes(root, args.volumes)
        torch.manual_seed(0)
        model = small_unet().to(device).eval()
        naive_s, naive = timed(naive_validation, model, root, device)
        checked_s, report = timed(medlib_validation, model, root, device, True, Path(tmp) / "r1")
        checked = dice_by_folder(report, root)
        unchecked_s, report = timed(medlib_validation, model, root, device, False, Path(tmp) / "r2")
        unchecked = dice_by_folder(report, root)
        differences = [abs(naive[k] - unchecked[k]) for k in naive] + [abs(naive[k] - checked[k]) for k in naive]
    validation = {"volumes": args.volumes, "library_s": naive_s, "medlib_s": unchecked_s, "medlib_checked_s": checked_s,
                  "speedup": naive_s / unchecked_s, "speedup_checked": naive_s / checked_s,
                  "max_dice_difference": max(differences), "dice": report.metrics["dice"]}
    maps = saliency(device, args.batch, size)
    print(json.dumps({"device": str(device), "validation": validation, "saliency": maps}, indent=1))
    if args.record:
        text = (f"device {device}; {args.volumes} series of {'×'.join(map(str, SHAPE))} for the validation, one "
                f"{size}³ volume for the maps\n\n"
                "| work | libraries' loop, s | medlib, s | × faster | results |\n|---|---|---|---|---|\n"
                f"| validation, {args.volumes} volumes (medlib without its input checks) | {naive_s:.1f} | "
                f"{unchecked_s:.1f} | {naive_s / unchecked_s:.1f} | Dice per case equal (max diff "
                f"{max(differences):.1e}) |\n"
                f"| validation, with medlib's input checks | {naive_s:.1f} | {checked_s:.1f} | "
                f"{naive_s / checked_s:.1f} | |\n"
                + "".join(f"| {m['method']} | {m['library_s']:.2f} | {m['medlib_s']:.2f} | {m['speedup']:.1f} | "
                          f"max relative difference {m['max_relative_difference']:.1e} |\n" for m in maps))
        record("medlib.qa: validation and saliency against the libraries' loops", " ".join(["python", *sys.argv]), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
