"""medlib.qa: validation, input checks, drift and explanations, with real models and DICOM made here."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tomli_w
import torch
from scipy.stats import norm

from conftest import events
from medhub.catalog import load_catalog
from medlib import qa
from medlib.datasets.series import find_series
from medlib.manifest import MANIFEST, write_manifest
from medlib.qa import metrics
from medlib.qa.cases import cases, weights_sha256
from medlib.qa.monitor import Profile, compare
from medlib.synthetic import write_cohort, write_ct_series
from medlib.train.examples import SyntheticSpheres, dice_loss, hu_input, small_unet

GROUPS = ("radiology-research",)
SHAPE, SPACING = (8, 32, 32), (2.5, 2.0, 2.0)


@pytest.fixture
def catalog(tmp_path: Path):
    """cohort-ct: ten phantom series from two scanners; in the last one a slice is missing."""
    root = tmp_path / "data" / "cohort-ct"
    last = write_cohort(root, 10, seed=1, shape=SHAPE, spacing=SPACING)[-1]
    (last / "CT000004.dcm").unlink()
    write_manifest(root)
    path = tmp_path / "datasets.toml"
    path.write_text(tomli_w.dumps({"dataset": [
        {"id": "cohort-ct", "title": "Cohort CT", "location": str(root), "groups": list(GROUPS), "owners": list(GROUPS),
         "sensitivity": "anonymized", "licence": "CC0-1.0", "modality": "CT"}]}))
    return load_catalog(path, GROUPS)


@pytest.fixture
def vera(as_user, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A researcher's server: cohort-ct granted, her home in tmp_path/home."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    as_user("vera", list(GROUPS))
    return home


class Threshold(torch.nn.Module):
    """A segmentation model of two parameters: logit = scale × (input - level)."""

    def __init__(self, level: float):
        super().__init__()
        self.level = torch.nn.Parameter(torch.tensor(level))
        self.scale = torch.nn.Parameter(torch.tensor(200.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (x - self.level)


class MeanScore(torch.nn.Module):
    """A classifier of ``outputs`` logits from the input's mean (one weight and bias each)."""

    def __init__(self, outputs: int = 1):
        super().__init__()
        self.linear = torch.nn.Linear(1, outputs)
        with torch.no_grad():
            self.linear.weight.fill_(40.0)
            self.linear.bias.fill_(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1).mean(1, keepdim=True) + 0.55)


def dense(series, volume: np.ndarray) -> np.ndarray:
    return volume > 30


# -- metrics -----------------------------------------------------------------------------------

def test_metrics_equal_hand_computed_values():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    scores = np.array([0.9, 0.7, 0.4, 0.6, 0.2, 0.1, 0.3, 0.8])
    found = metrics.classification(labels, scores, threshold=0.5, resamples=0)
    # AUC: of the 16 (positive, negative) pairs, the positive scores higher in 15 (0.4 < 0.6 only)
    assert found["auc"].value == pytest.approx(15 / 16)
    assert found["sensitivity"].value == pytest.approx(3 / 4) and found["specificity"].value == pytest.approx(3 / 4)
    assert found["brier"].value == pytest.approx(np.mean((scores - labels) ** 2))
    assert math.isnan(found["auc"].low)  # no resamples asked for: no interval

    calibration = metrics.Calibration(bins=4).add(scores, labels)
    # quarters: 0.1, 0.2 (no positive); 0.3, 0.4 (one); 0.6, 0.7 (one); 0.8, 0.9 (two): each 0.15 off
    assert [(b["count"], b["observed"]) for b in calibration.curve()] == [(2, 0.0), (2, 0.5), (2, 0.5), (2, 1.0)]
    assert calibration.ece() == pytest.approx(0.15, abs=1e-6)

    truth = np.zeros((6, 20, 20), bool)
    truth[1:5, 5:15, 5:15] = True
    shifted = np.roll(truth, 2, axis=2)  # two columns over: 4 × 10 × 8 voxels shared of 400 each
    case = metrics.segmentation_case(shifted.astype(float), truth, spacing=(3.0, 1.0, 0.5))
    assert case["dice"] == pytest.approx(2 * 320 / 800)
    assert case["hd95"] == pytest.approx(1.0)  # two columns of 0.5 mm
    assert 0 < case["surface_distance"] < 1.0
    empty = metrics.segmentation_case(np.zeros_like(truth, float), truth, spacing=(1, 1, 1))
    assert empty["dice"] == 0.0 and math.isnan(empty["hd95"])


def test_bootstrap_intervals_cover_the_known_value():
    """Positives' logits N(1, 1), negatives' N(0, 1): the AUC is Φ(1/√2); the 95% intervals of
    40 independent studies of 60 + 60 cases cover it (and the sensitivity at probability 0.5, Φ(1))
    as often as 95% intervals do."""
    true_auc, true_sensitivity = norm.cdf(1 / math.sqrt(2)), norm.cdf(1.0)
    rng = np.random.default_rng(3)
    covered_auc = covered_sensitivity = 0
    for study in range(40):
        scores = norm.cdf(np.concatenate([rng.normal(1, 1, 60), rng.normal(0, 1, 60)]))
        labels = np.repeat([1, 0], 60)
        found = metrics.classification(labels, scores, threshold=0.5, resamples=1000, seed=study)
        covered_auc += found["auc"].low <= true_auc <= found["auc"].high
        covered_sensitivity += found["sensitivity"].low <= true_sensitivity <= found["sensitivity"].high
    # 95% coverage gives 38 of 40 on average; 34 or fewer has a chance of about 1%
    assert covered_auc >= 35 and covered_sensitivity >= 35, (covered_auc, covered_sensitivity)


# -- validation --------------------------------------------------------------------------------

def test_a_validation_is_stratified_carries_a_model_card_and_is_the_same_report_twice(vera: Path, tmp_path: Path):
    model = Threshold(level=0.1)  # finds the 900 HU sphere, misses the 60 HU one: Dice below 1, known by hand
    report = qa.validate(model, "cohort-ct", task="segmentation", labels=dense, transform=hu_input, resamples=500,
                         trained_on=[("phantoms", "v000001")], code_version="test-1", progress=False)

    series = {s.uid: s for s in find_series(tmp_path / "data" / "cohort-ct")}
    broken = next(uid for uid, s in series.items() if "series-010" in s.slices[0].path)
    assert list(report.document["excluded"]) == [broken]
    assert report.document["excluded"][broken][0].startswith("1 missing slice(s)")
    assert len(report.document["cases"]) == 9
    for case in report.document["cases"]:
        volume = np.stack([pydicom.dcmread(s.path).pixel_array for s in series[case["series"]].slices]) - 1024.0
        found, truth = volume > 100, volume > 30
        assert case["dice"] == pytest.approx(2 * (found & truth).sum() / (found.sum() + truth.sum()), abs=1e-6)
    dice = report.metrics["dice"]
    assert dice["value"] == pytest.approx(np.mean([c["dice"] for c in report.document["cases"]]), abs=1e-6)
    assert dice["low"] <= dice["value"] <= dice["high"] and dice["n"] == 9
    assert 0.05 < report.document["calibration"]["ece"] < 0.5  # confident where it misses a sphere

    scanners = report.document["strata"]["ManufacturerModelName"]
    assert {k: v["cases"] for k, v in scanners.items()} == {"Phantom CT": 5, "Phantom CT 2": 4}
    assert set(report.document["strata"]["ConvolutionKernel"]) == {"STANDARD", "SOFT"}

    card, data = report.document["model"], report.document["data"]
    assert card["weights_sha256"] == weights_sha256(model) and card["trained_on"] == [
        {"dataset": "phantoms", "version": "v000001"}]
    manifest = tmp_path / "data" / "cohort-ct" / MANIFEST
    assert data["dataset"] == "cohort-ct" and data["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert report.document["code"]["user"] == "test-1" and "monai" in report.document["code"]

    # stored, and its creation audited
    assert report.folder.parent == vera / "qa-reports"
    assert (report.folder / "report.json").read_text() == report.to_json()
    page = (report.folder / "report.html").read_text()
    assert "Model card" in page and card["weights_sha256"] in page and page.count("<svg") >= 3
    stored = [e for e in events(tmp_path) if e["action"] == "qa-report"]
    assert stored[-1]["object"] == {"kind": "validation", "report_sha256": report.sha256, "dataset": "cohort-ct",
                                    "manifest_sha256": data["manifest_sha256"], "model_sha256": card["weights_sha256"]}
    assert any(e["action"] == "dataset-open" and e["details"].get("via") == "qa-validate" for e in events(tmp_path))

    again = qa.validate(model, "cohort-ct", task="segmentation", labels=dense, transform=hu_input, resamples=500,
                        trained_on=[("phantoms", "v000001")], code_version="test-1", progress=False)
    assert again.to_json() == report.to_json() and again.to_html() == report.to_html()


def test_a_classifier_is_validated_with_its_roc_and_operating_point(vera: Path):
    uids = [s.uid for s in cases("cohort-ct").series][:9]
    labels = {uid: i % 2 for i, uid in enumerate(uids)}
    report = qa.validate(MeanScore(), "cohort-ct", select=uids, task="classification", labels=labels,
                         transform=hu_input, threshold=0.5, resamples=200, progress=False, save=False)
    from sklearn.metrics import roc_auc_score

    rows = report.document["cases"]
    assert [c["label"] for c in rows] == [labels[u] for u in uids]
    scores = [c["probability"] for c in rows]
    assert report.metrics["auc"]["value"] == pytest.approx(roc_auc_score([c["label"] for c in rows], scores), abs=1e-6)
    positives = [c["probability"] >= 0.5 for c in rows if c["label"] == 1]
    assert report.metrics["sensitivity"]["value"] == pytest.approx(np.mean(positives))
    assert report.document["roc"]["fpr"][0] == 0.0 and report.document["roc"]["tpr"][-1] == 1.0
    assert report.document["data"]["selected"] == uids


def test_bad_input_gets_errors_that_say_what_to_do(vera: Path):
    with pytest.raises(qa.QaError, match="is a map, not one score per case: evaluate it with task='segmentation'"):
        qa.validate(Threshold(0.1), "cohort-ct", task="classification", labels=lambda s, v: 1, progress=False)
    with pytest.raises(qa.QaError, match="gives 3 classes: name the one to use with positive="):
        qa.validate(MeanScore(3), "cohort-ct", task="classification", labels=lambda s, v: 1, transform=hu_input,
                    progress=False)
    uids = [s.uid for s in cases("cohort-ct").series]
    with pytest.raises(qa.QaError, match=r"8 of 9 case\(s\) have no label .* every metric of a validation needs one"):
        qa.validate(MeanScore(), "cohort-ct", task="classification", labels={uids[0]: 1}, progress=False)

    class Halves(torch.nn.Module):  # a segmentation at half the resolution
        def forward(self, x):
            return torch.nn.functional.avg_pool3d(x, 2)

    with pytest.raises(qa.QaError, match=r"does not have the input's spatial shape \(8, 32, 32\): a segmentation"):
        qa.validate(Halves(), "cohort-ct", task="segmentation", labels=dense, progress=False)
    reference = qa.profile(Threshold(0.1), "cohort-ct", task="segmentation", transform=hu_input, layer=None,
                           progress=False)
    with pytest.raises(qa.QaError, match="made with another model .* make a reference with this model"):
        qa.drift(reference, "cohort-ct", model=Threshold(0.2), transform=hu_input, progress=False)
    with pytest.raises(qa.QaError, match="has no series 1.2.3"):
        qa.validate(MeanScore(), "cohort-ct", select=["1.2.3"], task="classification", labels={}, progress=False)


# -- input checks ------------------------------------------------------------------------------

def edit(path: Path, **values) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def test_input_checks_find_values_body_parts_and_acquisitions_outside_the_training_set(vera: Path, tmp_path: Path):
    reference = qa.profile(None, "cohort-ct", progress=False)  # the training set: 120 kV, STANDARD and SOFT, CHEST
    folder = tmp_path / "incoming"
    files = write_ct_series(folder / "a", shape=SHAPE, spacing=SPACING, kernel="B70f")
    assert qa.check_series(folder / "a", reference=reference).problems == [
        "ConvolutionKernel 'B70f' is not in the training set (SOFT, STANDARD)"]
    for path in files:
        edit(path, KVP=80, BodyPartExamined="HEAD")
    edit(files[2], RescaleIntercept=-3024)  # a sign or rescale error: values far below air
    problems = qa.check_series(find_series(folder / "a")[0], reference=reference).problems
    assert problems[0] == "body part 'HEAD' (expected CHEST)"
    assert problems[1].startswith("1024 voxel(s) (12.5%) below the physical minimum -1024 HU of CT")
    assert "KVP 80 kV outside the training set's 120–120 kV" in problems

    # the same from a terminal: exit 1, each problem printed
    run = subprocess.run([sys.executable, "-m", "medlib.cli", "qa", "check", "cohort-ct"], capture_output=True,
                         text=True, cwd=tmp_path, env=os.environ)
    assert run.returncode == 1, run.stderr
    assert "9 of 10 series passed" in run.stdout and "1 missing slice(s)" in run.stdout


# -- drift -------------------------------------------------------------------------------------

def synthetic_profile(rng: np.random.Generator, n: int, shift: float = 0.0) -> Profile:
    """Cases with three scalars, one category and an 8-feature embedding; ``shift`` moves the
    first scalar and the embedding by that many standard deviations."""
    return Profile(cases=[str(i) for i in range(n)],
                   scalars={"image:a": list(rng.normal(shift, 1, n)), "image:b": list(rng.normal(0, 1, n)),
                            "acquisition:c": list(rng.gamma(2, 1, n))},
                   categories={"acquisition:kernel": list(rng.choice(["A", "B", "C"], n, p=[0.5, 0.3, 0.2]))},
                   embeddings={"layer": (rng.normal(0, 1, (n, 8)) + shift).tolist()})


def test_drift_is_flagged_on_a_shifted_batch_and_false_alarms_stay_within_the_level():
    rng = np.random.default_rng(11)
    reference = synthetic_profile(rng, 60)
    shifted = compare(reference, synthetic_profile(rng, 60, shift=1.0), permutations=200)
    assert shifted.drifted == ["image:a", "embedding:layer"] and shifted.exit_code == 1
    with pytest.raises(qa.DriftDetected, match="2 variable.* image:a, embedding:layer"):
        shifted.raise_for_drift()

    alarms = sum(bool(compare(reference, synthetic_profile(rng, 60), permutations=200).drifted) for _ in range(200))
    # Benjamini-Hochberg at 0.05 over five true null hypotheses: at most 5% of batches raise an alarm
    # (binomial 200 × 0.05: 10 expected, 18 or more has a chance of about 1%)
    assert alarms <= 17, alarms


def test_a_noisier_batch_drifts_and_a_resampled_reference_batch_does_not(vera: Path, tmp_path: Path):
    torch.manual_seed(0)
    model = small_unet()
    reference = qa.profile(model, tmp_path / "data" / "cohort-ct", task="segmentation", transform=hu_input,
                           progress=False)
    assert reference.model["layer"] == "model.1.submodule.1.submodule.conv.unit0.conv"  # the bottleneck
    reference = qa.Profile.load(reference.save(tmp_path / "reference.json"))

    write_cohort(tmp_path / "later", 10, seed=2, shape=SHAPE, spacing=SPACING)  # more of the same
    same = qa.drift(reference, tmp_path / "later", model=model, transform=hu_input, progress=False)
    assert same.drifted == [], same.document["tests"]
    # a sharper kernel, a lower dose
    write_cohort(tmp_path / "noisy", 10, seed=3, shape=SHAPE, spacing=SPACING, noise=40.0)
    noisy = qa.drift(reference, tmp_path / "noisy", model=model, transform=hu_input, progress=False)
    assert "image:noise" in noisy.drifted and not any(v.startswith("acquisition:") for v in noisy.drifted)
    tested = {r["variable"]: r for r in noisy.document["tests"]}
    assert tested["embedding:model.1.submodule.1.submodule.conv.unit0.conv"]["test"].startswith("maximum mean")
    assert tested["image:noise"]["effect_batch_mean"] > 5 * tested["image:noise"]["effect_reference_mean"]
    page = (noisy.folder / "report.html").read_text()
    assert "Drift in" in page and page.count("<svg") >= 3

    # from a terminal, without the model: the acquisition and image variables, exit 1 on drift
    run = subprocess.run([sys.executable, "-m", "medlib.cli", "qa", "drift", str(tmp_path / "reference.json"),
                          "--folder", str(tmp_path / "noisy"), "--report", str(tmp_path / "cli-report")],
                         capture_output=True, text=True, cwd=tmp_path, env=os.environ)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "DRIFT image:noise" in run.stdout and "not tested: embedding:" in run.stdout
    assert json.loads((tmp_path / "cli-report" / "report.json").read_text())["drifted"]


# -- explanations ------------------------------------------------------------------------------

class LooksAt(torch.nn.Module):
    """A classifier that looks at one box of its input only: the input outside ``box`` is
    multiplied by zero, then a convolution (no bias), ReLU, the mean, a linear head."""

    def __init__(self, shape: tuple[int, int, int], box: tuple[slice, slice, slice]):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 4, 3, padding=1)
        mask = torch.zeros(shape)
        mask[box] = 1.0
        self.register_buffer("mask", mask)
        self.head = torch.nn.Linear(4, 1)
        with torch.no_grad():
            self.conv.weight.abs_()
            self.conv.bias.zero_()
            self.head.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(x * self.mask))
        return self.head(features.flatten(2).mean(-1))


def test_every_map_of_a_model_that_looks_at_one_region_peaks_there():
    torch.manual_seed(0)
    shape, box = (16, 32, 32), (slice(4, 10), slice(18, 28), slice(6, 14))
    model = LooksAt(shape, box)
    x = torch.rand(1, 1, *shape) + 0.5
    explanation = qa.explain(model, x, task="classification", mask_size=4, overlap=0.5, steps=20)
    assert explanation.settings["layer"] == "conv"
    inside, reach = np.zeros(shape, bool), np.zeros(shape, bool)
    inside[box] = True
    reach[tuple(slice(b.start - 1, b.stop + 1) for b in box)] = True  # the box and the convolution's reach beyond it
    for method, saliency in explanation.maps.items():
        weight = np.abs(saliency)
        assert inside[np.unravel_index(np.argmax(weight), shape)], method
        assert weight[reach].sum() / weight.sum() > 0.95, (method, weight[reach].sum() / weight.sum())
    with pytest.raises(qa.QaError, match="unknown method"):
        qa.explain(model, x, task="classification", methods=("lime",))
    with pytest.raises(qa.QaError, match=r"add the batch axis"):
        qa.explain(model, x[0], task="classification")
    with pytest.raises(qa.QaError, match="has no layer 'head.conv'; its convolutions are: conv"):
        qa.explain(model, x, task="classification", methods=("gradcam",), layer="head.conv")


def train_spheres(permute: bool = False, steps: int = 60) -> torch.nn.Module:
    """The small UNet trained on synthetic spheres (with labels permuted over voxels: nothing to learn)."""
    torch.manual_seed(0)
    model, data = small_unet(), SyntheticSpheres(16, 32)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        batch = [data[(step * 4 + i) % len(data)] for i in range(4)]
        x, y = torch.stack([b["image"] for b in batch]), torch.stack([b["label"] for b in batch])
        if permute:
            y = y.flatten()[torch.randperm(y.numel(), generator=generator)].reshape(y.shape)
        optimizer.zero_grad()
        dice_loss(model(x), y).backward()
        optimizer.step()
    return model.eval()


def test_the_randomisation_tests_separate_a_trained_model_from_a_randomised_one(vera: Path):
    model = train_spheres()
    x = SyntheticSpheres(16, 32)[3]["image"][None]
    image_itself = ("image", lambda _model, inputs: inputs[0, 0].cpu().numpy())  # an "explanation" blind to the model
    report = qa.sanity_checks(model, x, task="segmentation", methods=("gradcam", "occlusion", image_itself),
                              trainer=lambda: train_spheres(permute=True), mask_size=8, progress=False)
    cascade = report.document["cascade"]
    assert [s["randomised_layers"] for s in cascade["gradcam"]] == report.document["stages"]
    for method in ("gradcam", "occlusion"):
        assert cascade[method][-1]["similarity"]["spearman"] < 0.5, cascade[method]
        assert report.document["data"][method]["spearman"] < 0.5, report.document["data"]
    assert cascade["image"][-1]["similarity"]["spearman"] == pytest.approx(1.0)
    assert report.passed == {"gradcam": True, "occlusion": True, "image": False}
    page = (report.folder / "report.html").read_text()
    assert "Cascading randomisation" in page and page.count("<svg") == 2


def test_maps_are_saved_as_secondary_captures_a_pacs_shows_in_the_study(tmp_path: Path):
    write_ct_series(tmp_path / "ct", shape=(6, 24, 24))
    (source,) = find_series(tmp_path / "ct")
    model = Threshold(level=0.1)
    x = torch.from_numpy(hu_input(source.read().astype(np.float32)))[None]
    explanation = qa.explain(model, x, task="segmentation", methods=("integrated_gradients",), steps=8, series=source)
    assert explanation.region_voxels > 0
    written = explanation.save_dicom(tmp_path / "maps")
    assert len(written) == 6
    for path, item in zip(written, source.slices):
        made, original = pydicom.dcmread(path), pydicom.dcmread(item.path)
        assert made.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert (made.StudyInstanceUID, made.PatientID) == (original.StudyInstanceUID, original.PatientID)
        assert made.SourceImageSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
        assert made.ImagePositionPatient == original.ImagePositionPatient and made.PatientOrientation == ["L", "P"]
        assert made.pixel_array.shape == (24, 24, 3) and made.SeriesDescription == "Integrated gradients (medlib.qa)"
    viewer = explanation.show()
    assert list(viewer.overlays) == ["Integrated gradients"]
