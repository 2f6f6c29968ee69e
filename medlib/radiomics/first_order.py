"""Intensity-based statistics (IBSI 1, 3.3) and intensity histogram features (3.4), batched.

Both take the ROI's values as a padded batch: ``values`` (B, N) float, ``valid`` (B, N) bool.
Every feature is computed for all ROIs at once; an ROI without voxels gives NaN.
"""

from __future__ import annotations

import numpy as np
import torch


def _masked(values: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = valid.sum(-1).to(values.dtype)
    return torch.where(valid, values, torch.zeros((), dtype=values.dtype, device=values.device)), n


def _mean(x: torch.Tensor, valid: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    return torch.where(valid, x, 0).sum(-1) / n


def _quantiles(values: torch.Tensor, valid: torch.Tensor, qs: tuple[float, ...]) -> list[torch.Tensor]:
    """Per-ROI quantiles (linear interpolation, as numpy's default) over the valid values, from
    one sort."""
    big = torch.finfo(values.dtype).max
    ordered = _sorted(torch.where(valid, values, big))
    return _interpolated(valid.sum(-1).to(values.dtype), qs,
                         lambda k: ordered.gather(-1, k.long()[..., None])[..., 0])


def _sorted(x: torch.Tensor) -> torch.Tensor:
    """``x`` sorted along its last axis: by numpy's vectorised sort on the CPU (an order of
    magnitude quicker there than torch's), by torch's on other devices."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy(), axis=-1))
    return torch.sort(x, dim=-1).values


def _interpolated(n: torch.Tensor, qs: tuple[float, ...], kth) -> list[torch.Tensor]:
    """Quantiles by linear interpolation between order statistics, ``kth(k)`` giving the k-th
    smallest value (0-based, k a float tensor of whole numbers) of ROIs of ``n`` values."""
    last = (n - 1).clamp(min=0)
    out = []
    for q in qs:
        pos = last * q
        lo = pos.floor()
        a, b = kth(lo), kth((lo + 1).minimum(last))
        out.append(torch.where(n > 0, a + (b - a) * (pos - lo), torch.nan))
    return out


QUANTILES = (0.10, 0.25, 0.50, 0.75, 0.90)


def _level_quantiles(hist: torch.Tensor, qs: tuple[float, ...]) -> list[torch.Tensor]:
    """Per-ROI quantiles of grey levels 1..Ng from their counts ``hist`` (B, Ng), as
    :func:`_quantiles` gives them without a sort: the k-th smallest level is the first whose
    cumulative count exceeds k."""
    cumulative = hist.cumsum(-1)
    return _interpolated(cumulative[:, -1], qs,
                         lambda k: torch.searchsorted(cumulative, k[:, None], right=True)[:, 0].to(hist.dtype) + 1)


def _statistics(values: torch.Tensor, valid: torch.Tensor,
                quantiles: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The features shared by intensity statistics and the intensity histogram; ``quantiles``:
    those of :data:`QUANTILES`, when already known."""
    x, n = _masked(values, valid)
    mean = x.sum(-1) / n
    dev = torch.where(valid, values - mean[..., None], 0)
    var = (dev ** 2).sum(-1) / n
    m3 = (dev ** 3).sum(-1) / n
    m4 = (dev ** 4).sum(-1) / n
    big = torch.finfo(values.dtype).max
    minimum = torch.where(valid, values, big).min(-1).values
    maximum = torch.where(valid, values, -big).max(-1).values
    p10, p25, p50, p75, p90 = quantiles or _quantiles(values, valid, QUANTILES)
    robust = valid & (values >= p10[..., None]) & (values <= p90[..., None])
    robust_n = robust.sum(-1).to(values.dtype)
    robust_mean = torch.where(robust, values, 0).sum(-1) / robust_n
    return {
        "mean": mean,
        "variance": var,
        "skewness": torch.where(var > 0, m3 / var ** 1.5, 0.0),
        "kurtosis": torch.where(var > 0, m4 / var ** 2 - 3.0, 0.0),
        "median": p50,
        "minimum": minimum,
        "p10": p10,
        "p90": p90,
        "maximum": maximum,
        "interquartile_range": p75 - p25,
        "range": maximum - minimum,
        "mean_absolute_deviation": dev.abs().sum(-1) / n,
        "robust_mean_absolute_deviation":
            torch.where(robust, (values - robust_mean[..., None]).abs(), 0).sum(-1) / robust_n,
        "median_absolute_deviation": torch.where(valid, (values - p50[..., None]).abs(), 0).sum(-1) / n,
        "coefficient_of_variation": var.sqrt() / mean,
        "quartile_coefficient_of_dispersion": (p75 - p25) / (p75 + p25),
    }


def intensity_statistics(values: torch.Tensor, valid: torch.Tensor, shift: float = 0.0) -> dict[str, torch.Tensor]:
    """IBSI 3.3 on the intensities of the intensity mask; energy and root mean square of the
    intensities plus ``shift`` (PyRadiomics' voxelArrayShift; IBSI: 0)."""
    out = _statistics(values, valid)
    x, n = _masked(values + shift, valid)
    out["energy"] = (x ** 2).sum(-1)
    out["root_mean_square"] = (out["energy"] / n).sqrt()
    return out


def intensity_histogram(levels: torch.Tensor, valid: torch.Tensor, n_levels: int) -> dict[str, torch.Tensor]:
    """IBSI 3.4 on discretised grey levels 1..``n_levels``."""
    values = levels.to(torch.float64)
    b = levels.shape[0]
    counts = torch.zeros(b, n_levels + 1, dtype=torch.float64, device=levels.device)
    counts.scatter_add_(1, torch.where(valid, levels, 0).long(), valid.to(torch.float64))
    hist = counts[:, 1:]  # grey levels 1..Ng
    out = _statistics(values, valid, _level_quantiles(hist, QUANTILES))
    p = hist / hist.sum(-1, keepdim=True)
    grey = torch.arange(1, n_levels + 1, dtype=torch.float64, device=levels.device)
    # the most frequent level; of equally frequent ones, the closest to the mean (left on a tie)
    top = hist == hist.max(-1, keepdim=True).values
    distance = torch.where(top, (grey - out["mean"][..., None]).abs() + (grey > out["mean"][..., None]) * 1e-9, torch.inf)
    out["mode"] = grey[distance.argmin(-1)]
    out["entropy"] = -(torch.where(p > 0, p * torch.log2(p), 0.0)).sum(-1)
    out["uniformity"] = (p ** 2).sum(-1)
    if n_levels > 1:
        gradient = torch.empty_like(hist)
        gradient[:, 0] = hist[:, 1] - hist[:, 0]
        gradient[:, -1] = hist[:, -1] - hist[:, -2]
        gradient[:, 1:-1] = (hist[:, 2:] - hist[:, :-2]) / 2
    else:
        gradient = torch.zeros_like(hist)
    out["maximum_histogram_gradient"] = gradient.max(-1).values
    out["maximum_histogram_gradient_intensity"] = grey[gradient.argmax(-1)]
    out["minimum_histogram_gradient"] = gradient.min(-1).values
    out["minimum_histogram_gradient_intensity"] = grey[gradient.argmin(-1)]
    return out


def intensity_volume_histogram(levels: torch.Tensor, valid: torch.Tensor, n_levels: int,
                               intensity: torch.Tensor, level_range: torch.Tensor) -> dict[str, torch.Tensor]:
    """IBSI 3.5 on discretised grey levels 1..``n_levels``.

    Args:
        intensity: (B, Ng) the intensity each grey level stands for (the level itself for
            discrete intensities, the bin centre for fixed bin size).
        level_range: (B, 2) the total range G in grey levels, [lowest, highest].
    """
    b = levels.shape[0]
    dev = dict(dtype=torch.float64, device=levels.device)
    counts = torch.zeros(b, n_levels + 1, **dev)
    counts.scatter_add_(1, torch.where(valid, levels, 0).long(), valid.to(torch.float64))
    counts = counts[:, 1:]
    n = counts.sum(-1, keepdim=True)
    k = torch.arange(1, n_levels + 1, **dev)
    volume = 1 - (torch.cumsum(counts, -1) - counts) / n  # fraction of voxels at level k or above
    low, high = level_range[:, :1].to(torch.float64), level_range[:, 1:].to(torch.float64)
    in_range = (k >= low) & (k <= high)
    fraction = (k - low) / (high - low).clamp(min=1)

    def volume_at(x: float) -> torch.Tensor:  # the volume of the lowest level with intensity fraction >= x
        first = torch.where(in_range & (fraction >= x), k, torch.inf).amin(-1)
        return volume.gather(-1, (first.clamp(max=n_levels) - 1).long()[:, None])[:, 0]

    def intensity_at(x: float) -> torch.Tensor:  # the lowest level holding at most x of the volume
        first = torch.where(in_range & (volume <= x), k, torch.inf).amin(-1)
        value = intensity.gather(-1, (first.clamp(max=n_levels) - 1).long()[:, None])[:, 0]
        return torch.where(torch.isfinite(first), value, torch.nan)

    v10, v90, i10, i90 = volume_at(0.10), volume_at(0.90), intensity_at(0.10), intensity_at(0.90)
    return {"v10": v10, "v90": v90, "i10": i10, "i90": i90, "v10_minus_v90": v10 - v90, "i10_minus_i90": i10 - i90}
