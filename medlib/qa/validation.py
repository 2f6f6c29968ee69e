"""The validation protocol: a trained model evaluated on a dataset version of the site's own.

    report = qa.validate(model, "lung-ct-2024", version="v000003", task="segmentation",
                         labels=lambda series, volume: masks[series.uid], trained_on=[("lung-ct-2023", "v000002")])
    report.folder                   # ~/qa-reports/validation-<digest>/report.{html,json}, its creation audited

Each case (series) is first checked (:mod:`.series`): a case with problems is left out and listed.
The model runs over the rest in batches (:mod:`.cases`); the metrics (:mod:`.metrics`) are given
over all cases and per stratum (site, scanner, kernel, slice thickness, tube voltage: read from
the DICOM headers), each with its bootstrap interval, with the reliability curve and the ECE. The
report carries a model card: the weights' SHA-256, the training data named, the code's versions,
the evaluation data's version and manifest digest.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ..datasets.series import Series
from . import metrics as m
from .cases import Cases, Result, Transform, cases as make_cases, identity, run, weights_sha256
from .errors import QaError
from .report import Report, estimate, figure, model_card, software, svg, table
from .series import screen

#: The strata of a validation unless others are asked for: the site, then acquisition parameters.
STRATA = ("site", "Manufacturer", "ManufacturerModelName", "ConvolutionKernel", "SliceThickness", "KVP")
#: The metrics of each task, the first one the headline of the strata's plot.
METRICS = {"classification": ("auc", "sensitivity", "specificity", "brier"),
           "segmentation": ("dice", "hd95", "surface_distance")}
#: Labels: {Series Instance UID: label} or ``labels(series, volume) -> label``; a label is 0/1 for a
#: classification, a (z, y, x) mask on the model's input grid for a segmentation.
Labels = Mapping[str, Any] | Callable[[Series, np.ndarray], Any]


class ValidationReport(Report):
    """What :func:`validate` found: ``metrics``, ``strata``, ``calibration``, ``cases``, ``excluded``."""

    kind = "validation"
    title = "Validation report"

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        return self.document["metrics"]

    def audit_object(self) -> dict[str, Any]:
        data = self.document["data"]
        return {k: data[k] for k in ("dataset", "version", "folder", "manifest_sha256") if data.get(k)} | \
            {"model_sha256": self.document["model"]["weights_sha256"]}

    def sections(self):
        d = self.document
        yield model_card(d)
        settings = d["settings"]
        yield (f"<h2>Metrics</h2><p>{d['task']}, {len(d['cases'])} case(s); "
               f"{int(settings['confidence'] * 100)}% bootstrap intervals ({settings['resamples']} resamples, seed "
               f"{settings['seed']}); operating point: probability ≥ {settings['threshold']}.</p>")
        yield table([{"metric": k, "value": estimate(v), "n": v["n"]} for k, v in d["metrics"].items()],
                    ("metric", "value", "n"), ("metric", "value (interval)", "cases"))
        yield "<h2>Plots</h2>" + "".join(f"<figure>{s}</figure>" for s in self._plots())
        yield f"<h2>Calibration</h2><p>Expected calibration error: {estimate({'value': d['calibration']['ece']})}</p>"
        yield table(d["calibration"]["curve"], ("low", "high", "predicted", "observed", "count"))
        for name, values in d["strata"].items():
            rows = [{"value": v, **{k: estimate(e) for k, e in s["metrics"].items()}, "cases": s["cases"]}
                    for v, s in values.items()]
            yield f"<h2>By {html.escape(name)}</h2>" + table(rows, ("value", *METRICS[d["task"]], "cases"))
        if d["excluded"]:
            yield "<h2>Cases left out by the input checks</h2>" + table(
                [{"series": k, "problems": "; ".join(v)} for k, v in d["excluded"].items()], ("series", "problems"))
        columns = ("series", "label", "probability") if d["task"] == "classification" else \
            ("series", *METRICS["segmentation"])
        yield "<h2>Cases</h2>" + table(d["cases"], columns)

    def _plots(self) -> list[str]:
        d = self.document
        out = []
        curve = d["calibration"]["curve"]
        fig, ax = figure()
        ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--", label="perfect")
        ax.plot([b["predicted"] for b in curve], [b["observed"] for b in curve], marker="o", label="model")
        ax.set(xlabel="predicted probability", ylabel="observed frequency", title="Reliability", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="upper left")
        out.append(svg(fig))
        if d["task"] == "classification" and d["roc"]:
            fig, ax = figure()
            ax.plot(d["roc"]["fpr"], d["roc"]["tpr"], drawstyle="steps-post")
            ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--")
            ax.set(xlabel="1 - specificity", ylabel="sensitivity",
                   title=f"ROC, AUC {estimate(d['metrics']['auc'])}", xlim=(0, 1), ylim=(0, 1))
            out.append(svg(fig))
        elif d["task"] == "segmentation":
            fig, ax = figure()
            ax.hist([c["dice"] for c in d["cases"] if c["dice"] is not None], bins=20, range=(0, 1), color="#4c72b0")
            ax.set(xlabel="Dice", ylabel="cases", title="Dice per case")
            out.append(svg(fig))
        headline = METRICS[d["task"]][0]
        rows = [(f"{name}: {value}", s["metrics"][headline]) for name, values in d["strata"].items()
                for value, s in values.items() if s["metrics"][headline]["value"] is not None]
        if rows:
            fig, ax = figure(5.5, 0.35 * len(rows) + 1.2)
            for y, (_, e) in enumerate(rows):
                low = e["low"] if e["low"] is not None else e["value"]
                high = e["high"] if e["high"] is not None else e["value"]
                ax.plot([low, high], [y, y], color="#4c72b0")
                ax.plot([e["value"]], [y], marker="s", color="#4c72b0")
            ax.set_yticks(range(len(rows)), [r[0] for r in rows])
            ax.invert_yaxis()
            ax.set(xlabel=headline, title=f"{headline} by stratum")
            out.append(svg(fig))
        return out


def _label(labels: Labels, series: Series, volume: np.ndarray) -> Any:
    if callable(labels):
        return labels(series, volume)
    return labels.get(series.uid)


def _strata(names: Sequence[str | tuple[str, Callable[[Series], Any]]], series: Series, source: Mapping[str, Any],
            acquisition: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for item in names:
        name, value = (item if isinstance(item, tuple) else (item, None))
        if callable(value):
            value = value(series)
        elif name == "site":
            value = source.get("site")
        else:
            value = acquisition.get(name)
        if value is not None:
            out[name] = f"{value:g}" if isinstance(value, float) else str(value)
    return out


def validate(model: torch.nn.Module, data: str | os.PathLike[str] | Sequence[Series] | Cases, *, task: str,
             labels: Labels, version: str | None = None, select: Sequence[str] | None = None,
             transform: Transform = identity, threshold: float = 0.5, positive: int | None = None,
             activation: str = "auto",
             strata: Sequence[str | tuple[str, Callable[[Series], Any]]] = STRATA,
             trained_on: Sequence[tuple[str, str] | Mapping[str, str]] = (), code_version: str | None = None,
             check: bool = True, reference: Any = None, resamples: int = 1000, confidence: float = 0.95,
             seed: int = 0, bins: int = 10, batch_size: int = 4, device: str | torch.device | None = None,
             save: bool = True, folder: str | os.PathLike[str] | None = None,
             progress: bool = True) -> ValidationReport:
    """Evaluate ``model`` on ``data`` (a granted dataset's id at ``version``, a folder, or series;
    ``select``: only these Series Instance UIDs of it, e.g. those held out of training).

    Args:
        task: ``classification`` (one score per case) or ``segmentation`` (one per voxel).
        labels: each case's truth (see :data:`Labels`); every evaluated case needs one.
        transform: ``transform(volume, series)`` → the model's input (channels, *spatial); a
            segmentation's output is compared with the label on that grid.
        threshold: the operating point: a probability at or above it is positive.
        positive, activation: which output channel is the positive class, and how outputs become
            probabilities (:func:`~medlib.qa.cases.probabilities`).
        strata: acquisition parameters (:data:`~medlib.qa.series.ACQUISITION`), ``site``, or
            ``(name, function(series))`` pairs.
        trained_on, code_version: what the model card names of the training data and the code.
        check, reference: run the input checks first (against a training set's profile) and leave
            out the cases with problems.
        resamples, confidence, seed, bins: the bootstrap and the reliability curve.
        save, folder: store the report (default ``~/qa-reports/validation-<digest>``) and audit it.

    Raises:
        QaError: an output that does not fit the task, cases without labels, no case left.
    """
    if task not in METRICS:
        raise QaError(f"task {task!r} is not one of {', '.join(METRICS)}")
    found = make_cases(data, version, select, purpose="qa-validate")
    keep, excluded, acquisitions = screen(found.series, check=check, reference=reference)
    if not keep:
        raise QaError(f"every one of the {len(found)} case(s) failed the input checks (first: "
                      f"{next(iter(excluded.values()))[0]}); fix the data or pass check=False")
    unlabelled = [s.uid for s in keep if not callable(labels) and labels.get(s.uid) is None]
    if unlabelled:
        raise QaError(f"{len(unlabelled)} of {len(keep)} case(s) have no label (first: {unlabelled[0]}); every metric of a "
                      "validation needs one: give labels={series_uid: label} for each case, or labels=function(series, "
                      "volume), or evaluate only the labelled series")

    calibration = m.Calibration(bins)
    y, p = [], []

    def measure(result: Result, label: Any) -> dict[str, Any]:
        """One case's row (and its share of the calibration): on one thread, in order, while the
        model runs on the next cases."""
        row: dict[str, Any] = {"series": result.series.uid,
                               "strata": _strata(strata, result.series, found.source, acquisitions[result.series.uid])}
        if task == "classification":
            label = int(np.asarray(label).item())
            probability = float(result.probability)
            row |= {"label": label, "probability": round(probability, m.DECIMALS)}
            y.append(label)
            p.append(probability)
            calibration.add(np.array([probability]), np.array([label]))
        else:
            mask = np.asarray(label).astype(bool)
            row |= {k: (round(v, m.DECIMALS) if math.isfinite(v) else None) for k, v in
                    m.segmentation_case(result.probability, mask, result.series.spacing, threshold).items()}
            calibration.add(result.probability, mask)
        return row

    pending: list[Future] = []
    with ThreadPoolExecutor(1) as measuring:
        for result in run(model, Cases(keep, found.source), task=task, transform=transform, batch_size=batch_size,
                          device=device, positive=positive, activation=activation, progress=progress,
                          desc="validating"):
            label = _label(labels, result.series, result.volume)
            if label is None:
                raise QaError(f"no label for series {result.series.uid}: the labels function returned None")
            pending.append(measuring.submit(measure, result, label))
            if len(pending) - sum(f.done() for f in pending) > 2 * batch_size:  # hold a bounded number of volumes
                pending[-2 * batch_size].result()
        rows = [f.result() for f in pending]

    bootstrap = {"resamples": resamples, "confidence": confidence, "seed": seed}

    def summarise(members: list[dict[str, Any]]) -> dict[str, Any]:
        if task == "classification":
            labels_ = np.array([r["label"] for r in members])
            scores = np.array([r["probability"] for r in members])
            return {k: e.as_dict() for k, e in m.classification(labels_, scores, threshold, **bootstrap).items()}
        return {k: m.summary([r[k] if r[k] is not None else math.nan for r in members], **bootstrap).as_dict()
                for k in METRICS["segmentation"]}

    by: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        for name, value in row["strata"].items():
            by.setdefault(name, {}).setdefault(value, []).append(row)
    roc = {}
    if task == "classification" and len(set(y)) == 2:
        from sklearn.metrics import roc_curve

        fpr, tpr, _ = roc_curve(y, p)
        roc = {"fpr": [round(float(v), m.DECIMALS) for v in fpr], "tpr": [round(float(v), m.DECIMALS) for v in tpr]}
    document = {
        "task": task,
        "model": {"name": type(model).__name__, "weights_sha256": weights_sha256(model),
                  "parameters": int(sum(t.numel() for t in model.parameters())),
                  "trained_on": [dict(t) if isinstance(t, Mapping) else {"dataset": t[0], "version": t[1]}
                                 for t in trained_on]},
        "code": {**software(), **({"user": code_version} if code_version else {})},
        "data": found.source,
        "settings": {"threshold": threshold, "positive": positive, "activation": activation, "bins": bins,
                     "check": check, **bootstrap},
        "metrics": summarise(rows),
        "calibration": {"curve": calibration.curve(), "ece": round(calibration.ece(), m.DECIMALS)},
        "roc": roc,
        "strata": {name: {value: {"cases": len(members), "metrics": summarise(members)}
                          for value, members in sorted(values.items())} for name, values in by.items()},
        "cases": rows,
        "excluded": excluded,
    }
    report = ValidationReport(document)
    if save:
        report.save(folder)
    return report
