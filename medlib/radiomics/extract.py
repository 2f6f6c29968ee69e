"""Feature extraction: image processing (IBSI 1, chapter 2) and every implemented family.

:func:`extract_batch` takes many ROIs at once: each is cropped to its bounding box, discretised,
and padded into one batch, so that every family runs as whole-tensor operations on the chosen
device. :func:`extract` is the one-ROI form. Feature names come from ``features.csv`` (IBSI
family prefix and key, texture features with their aggregation), or PyRadiomics' names where
one exists (``names="pyradiomics"``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import first_order, texture

FEATURES = Path(__file__).with_name("features.csv")
FAMILIES = ("stat", "ih", "cm", "rlm")
AGGREGATION_SUFFIX = {a: a.replace(", ", "_").replace(".", "").replace("-", "_").replace(" ", "_")
                      for a in texture.AGGREGATIONS}


class RadiomicsError(ValueError):
    """Input that features cannot be computed from; the message says what to fix."""


@dataclass(frozen=True)
class Settings:
    """IBSI image processing and what to compute.

    Attributes:
        discretisation: "fixed_bin_number", "fixed_bin_size" or "none" (intensities that are
            already positive integer grey levels, as the IBSI digital phantom).
        bins: the number of bins (fixed bin number).
        bin_width: the bin width (fixed bin size), from ``resegment_range[0]`` if set, else the
            ROI's minimum.
        resegment_range: keep only intensities in [low, high] (IBSI 2.6); None: all.
        resegment_outliers: also drop intensities beyond mean ± 3 SD (IBSI 2.6).
        families: among stat (intensity statistics), ih (intensity histogram), cm (GLCM), rlm (GLRLM).
        device: "cpu", "cuda", ...
    """

    discretisation: str = "fixed_bin_number"
    bins: int = 32
    bin_width: float = 25.0
    resegment_range: tuple[float, float] | None = None
    resegment_outliers: bool = False
    families: tuple[str, ...] = FAMILIES
    device: str = "cpu"
    names: str = "ibsi"  # or "pyradiomics"

    def __post_init__(self):
        if self.discretisation not in ("fixed_bin_number", "fixed_bin_size", "none"):
            raise RadiomicsError(f"discretisation {self.discretisation!r}: use fixed_bin_number, fixed_bin_size "
                                 "or none")
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown:
            raise RadiomicsError(f"unknown feature families {unknown}; known: {', '.join(FAMILIES)}")


def feature_table() -> list[dict[str, str]]:
    """The rows of ``features.csv``: family, key, IBSI id and name, PyRadiomics name."""
    with open(FEATURES, newline="") as f:
        return list(csv.DictReader(f))


def _crop(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if image.shape != mask.shape:
        raise RadiomicsError(f"the mask's grid {mask.shape} does not match the image's {image.shape}; "
                             "resample the mask onto the image first")
    where = np.argwhere(mask)
    if not len(where):
        raise RadiomicsError("the mask is empty: there is no region of interest")
    lo, hi = where.min(0), where.max(0) + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    return image[box], mask[box].astype(bool)


def _resegment(values: torch.Tensor, inside: torch.Tensor, settings: Settings) -> torch.Tensor:
    if settings.resegment_range is not None:
        low, high = settings.resegment_range
        inside = inside & (values >= low) & (values <= high)
    if settings.resegment_outliers:
        n = inside.sum((1, 2, 3), keepdim=True).clamp(min=1)
        mean = torch.where(inside, values, 0).sum((1, 2, 3), keepdim=True) / n
        sd = (torch.where(inside, (values - mean) ** 2, 0).sum((1, 2, 3), keepdim=True) / n).sqrt()
        inside = inside & ((values - mean).abs() <= 3 * sd)
    return inside


def _discretise(values: torch.Tensor, inside: torch.Tensor, settings: Settings) -> tuple[torch.Tensor, int]:
    """Grey levels 1..Ng inside the ROI, 0 outside; and Ng (the same for the whole batch)."""
    big = torch.finfo(values.dtype).max
    low = torch.where(inside, values, big).amin((1, 2, 3), keepdim=True)
    high = torch.where(inside, values, -big).amax((1, 2, 3), keepdim=True)
    if settings.discretisation == "none":
        if not torch.equal(values[inside], values[inside].round()) or (values[inside] < 1).any():
            raise RadiomicsError("discretisation 'none' needs intensities that are grey levels 1, 2, ...")
        levels = values.long()
    elif settings.discretisation == "fixed_bin_number":
        span = (high - low).clamp(min=torch.finfo(values.dtype).tiny)
        levels = (torch.floor(settings.bins * (values - low) / span) + 1).clamp(max=settings.bins).long()
        levels = torch.where(high > low, levels, torch.ones_like(levels))  # constant intensity: one level
    else:
        origin = settings.resegment_range[0] if settings.resegment_range is not None else low
        levels = (torch.floor((values - origin) / settings.bin_width) + 1).long()
    levels = torch.where(inside, levels, 0)
    n_levels = settings.bins if settings.discretisation == "fixed_bin_number" else int(levels.max().item())
    return levels, max(n_levels, 1)


def extract_batch(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], settings: Settings = Settings()):
    """Features of many ROIs (arrays z-y-x of the same spacing), one row each: a DataFrame."""
    import pandas as pd

    if len(images) != len(masks):
        raise RadiomicsError(f"{len(images)} images but {len(masks)} masks")
    crops = [_crop(np.asarray(i), np.asarray(m)) for i, m in zip(images, masks)]
    shape = tuple(max(c[0].shape[a] for c in crops) for a in range(3))
    device = torch.device(settings.device)
    values = torch.zeros((len(crops), *shape), dtype=torch.float64)
    inside = torch.zeros((len(crops), *shape), dtype=torch.bool)
    for n, (image, mask) in enumerate(crops):
        box = (n, *(slice(0, s) for s in image.shape))
        values[box] = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64))
        inside[box] = torch.from_numpy(mask)
    values, inside = values.to(device), inside.to(device)
    inside = _resegment(values, inside, settings)
    levels, n_levels = _discretise(values, inside, settings)

    columns: dict[str, torch.Tensor] = {}
    flat_valid = inside.flatten(1)
    if "stat" in settings.families:
        for key, v in first_order.intensity_statistics(values.flatten(1), flat_valid).items():
            columns[f"stat_{key}"] = v
    if "ih" in settings.families:
        for key, v in first_order.intensity_histogram(levels.flatten(1), flat_valid, n_levels).items():
            columns[f"ih_{key}"] = v
    voxels = inside.sum((1, 2, 3))
    per_slice = inside.sum((2, 3))
    for family, matrices, features in (("cm", texture.cooccurrence, texture.glcm_features),
                                       ("rlm", texture.run_lengths, texture.glrlm_features)):
        if family in settings.families:
            m2, m3 = matrices(levels, n_levels)
            for aggregation, values_by_key in texture.aggregate(m2, m3, features, voxels, per_slice).items():
                for key, v in values_by_key.items():
                    columns[f"{family}_{key}_{AGGREGATION_SUFFIX[aggregation]}"] = v
    table = pd.DataFrame({k: v.detach().cpu().numpy() for k, v in columns.items()})
    if settings.names == "pyradiomics":
        names = {k: v for k, v in pyradiomics_names().items() if k in table}
        table = table[list(names)].rename(columns=names)
    return table


def pyradiomics_names() -> dict[str, str]:
    """medlib column → PyRadiomics feature name (3D merged texture, as PyRadiomics aggregates by
    default over directions with its own averaging; see README for where definitions differ)."""
    names = {}
    for row in feature_table():
        if not row["pyradiomics"]:
            continue
        key = f"{row['family']}_{row['key']}"
        names[key + ("_3D_averaged" if row["family"] in ("cm", "rlm") else "")] = "original_" + row["pyradiomics"]
    return names


def extract(image: np.ndarray, mask: np.ndarray, settings: Settings = Settings()):
    """Features of one ROI: a one-row DataFrame (see :func:`extract_batch`)."""
    return extract_batch([image], [mask], settings)


__all__ = ["RadiomicsError", "Settings", "extract", "extract_batch", "feature_table"]
