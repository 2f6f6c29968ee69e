"""A validation's metrics, their bootstrap confidence intervals, and calibration.

Classification, over cases: AUC, sensitivity and specificity at the operating point, and the
Brier score (scikit-learn). Segmentation, per case: Dice, the 95th percentile Hausdorff distance
and the mean symmetric surface distance in mm (MONAI), summarised by their mean over cases.
Intervals: scipy's percentile bootstrap over cases; the AUC's, sensitivity's and specificity's
resample the positive and the negative cases apart (a stratified bootstrap, as pROC does).
Calibration: MONAI's binning of probabilities into a reliability curve, pooled over cases (every
voxel of a segmentation), and the expected calibration error (ECE) of the pooled bins.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import QaError

#: How many decimals a report keeps (so that a rerun gives the same report, byte for byte).
DECIMALS = 6


@dataclass(frozen=True)
class Estimate:
    """A metric's value with its bootstrap interval, over ``n`` cases (``low``/``high`` NaN when
    it cannot be resampled: fewer than two cases of a kind)."""

    value: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {"value": _round(self.value), "low": _round(self.low), "high": _round(self.high), "n": self.n}


def _round(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), DECIMALS)


def interval(samples: Sequence[np.ndarray], statistic: Callable[..., np.ndarray], *, resamples: int,
             confidence: float, seed: int) -> tuple[float, float]:
    """The percentile bootstrap interval of ``statistic`` (vectorised, ``axis=-1``), each of
    ``samples`` resampled on its own; NaN where a sample has fewer than two values."""
    from scipy.stats import bootstrap

    if resamples <= 0 or any(len(s) < 2 for s in samples):
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a degenerate distribution (every value equal) is a valid answer here
        result = bootstrap(tuple(np.asarray(s, float) for s in samples), statistic, vectorized=True, axis=-1,
                           n_resamples=resamples, confidence_level=confidence, method="percentile",
                           random_state=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return float(low), float(high)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _auc(positives: np.ndarray, negatives: np.ndarray, axis: int = -1) -> np.ndarray:
    """The AUC as the Mann-Whitney U of positives against negatives, over their product."""
    from scipy.stats import mannwhitneyu

    u = mannwhitneyu(positives, negatives, axis=axis, method="asymptotic", use_continuity=False).statistic
    return u / (positives.shape[axis] * negatives.shape[axis])


def classification(labels: np.ndarray, scores: np.ndarray, threshold: float, *, resamples: int = 1000,
                   confidence: float = 0.95, seed: int = 0) -> dict[str, Estimate]:
    """AUC, sensitivity and specificity at ``threshold`` (a score at or above it is positive),
    Brier score, each with its interval.

    Raises:
        QaError: labels that are not 0 and 1, scores that are not probabilities.
    """
    from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score

    labels, scores = np.asarray(labels), np.asarray(scores, float)
    if not np.isin(labels, (0, 1)).all():
        raise QaError(f"classification labels must be 0 or 1; found {sorted(set(labels.tolist()) - {0, 1})[:5]}: map "
                      "them to the positive class (1) and the rest (0)")
    if scores.size and not (0 <= scores.min() and scores.max() <= 1):
        raise QaError("scores must be probabilities, 0 to 1 (a model's logits become them by activation='auto')")
    labels = labels.astype(int)
    positives, negatives = scores[labels == 1], scores[labels == 0]
    kw = {"resamples": resamples, "confidence": confidence, "seed": seed}
    tn, fp, fn, tp = confusion_matrix(labels, scores >= threshold, labels=[0, 1]).ravel()
    out = {}
    if len(positives) and len(negatives):
        out["auc"] = Estimate(float(roc_auc_score(labels, scores)), *interval((positives, negatives), _auc, **kw),
                              len(labels))
    else:
        out["auc"] = Estimate(math.nan, math.nan, math.nan, len(labels))
    out["sensitivity"] = Estimate(tp / (tp + fn) if tp + fn else math.nan,
                                  *interval(((positives >= threshold).astype(float),), _mean, **kw), len(positives))
    out["specificity"] = Estimate(tn / (tn + fp) if tn + fp else math.nan,
                                  *interval(((negatives < threshold).astype(float),), _mean, **kw), len(negatives))
    out["brier"] = Estimate(float(brier_score_loss(labels, scores)),
                            *interval(((scores - labels) ** 2,), _mean, **kw), len(labels))
    return out


def segmentation_case(probability: np.ndarray, label: np.ndarray, spacing: Sequence[float],
                      threshold: float = 0.5) -> dict[str, float]:
    """One case's Dice, HD95 and mean surface distance (mm, by ``spacing``) of the prediction
    (probability at or above ``threshold``) against the label, as MONAI's ``compute_dice``,
    ``compute_hausdorff_distance(percentile=95)`` and ``compute_average_surface_distance(symmetric=True)``
    give them, from one computation of the surface distances both ways; a distance is NaN when the
    prediction or the label is empty. Both empty: Dice 1."""
    from monai.metrics import compute_dice
    from monai.metrics.utils import get_edge_surface_distance

    predicted = torch.as_tensor(np.asarray(probability) >= threshold)[None, None].float()
    truth = torch.as_tensor(np.asarray(label).astype(bool))[None, None].float()
    if predicted.shape != truth.shape:
        raise QaError(f"the label's shape {tuple(truth.shape[2:])} is not the prediction's {tuple(predicted.shape[2:])}: "
                      "a segmentation label is a mask on the model's input grid")
    out = {"dice": float(compute_dice(predicted, truth, include_background=True, ignore_empty=False)[0, 0])}
    if predicted.any() and truth.any():
        spacing = [float(s) for s in spacing]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # MONAI's own deprecated internal argument
            _, distances, _ = get_edge_surface_distance(predicted[0, 0], truth[0, 0], spacing=spacing, symmetric=True)
        out["hd95"] = float(max(torch.quantile(d.float(), 0.95) for d in distances))
        out["surface_distance"] = float(torch.cat(distances).float().mean())
    else:
        out["hd95"] = out["surface_distance"] = math.nan
    return out


def summary(values: Sequence[float], *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """The mean of per-case values (NaNs left out) with its interval."""
    finite = np.asarray([v for v in values if math.isfinite(v)], float)
    if not finite.size:
        return Estimate(math.nan, math.nan, math.nan, 0)
    return Estimate(float(finite.mean()), *interval((finite,), _mean, resamples=resamples, confidence=confidence,
                                                    seed=seed), int(finite.size))


class Calibration:
    """A reliability curve pooled over cases: MONAI's binning of each case's probabilities into
    ``bins`` equal-width bins, summed."""

    def __init__(self, bins: int = 10):
        self.bins = bins
        self.predicted = np.zeros(bins)
        self.observed = np.zeros(bins)
        self.counts = np.zeros(bins)

    def add(self, probabilities: np.ndarray, labels: np.ndarray) -> Calibration:
        from monai.metrics import calibration_binning

        p = torch.as_tensor(np.asarray(probabilities, np.float32).reshape(1, 1, -1))
        y = torch.as_tensor(np.asarray(labels, np.float32).reshape(1, 1, -1))
        mean_p, mean_y, counts = (t[0, 0].double().numpy() for t in calibration_binning(p, y, num_bins=self.bins))
        self.predicted += np.nan_to_num(mean_p) * counts
        self.observed += np.nan_to_num(mean_y) * counts
        self.counts += counts
        return self

    def curve(self) -> list[dict[str, float]]:
        """The non-empty bins: mean predicted probability, observed frequency, count."""
        return [{"bin": i, "low": _round(i / self.bins), "high": _round((i + 1) / self.bins),
                 "predicted": _round(self.predicted[i] / c), "observed": _round(self.observed[i] / c), "count": int(c)}
                for i, c in enumerate(self.counts) if c]

    def ece(self) -> float:
        """The expected calibration error: the count-weighted mean gap between the bins' observed
        frequency and predicted probability."""
        total = self.counts.sum()
        return float(np.abs(self.observed - self.predicted).sum() / total) if total else math.nan
