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

from . import first_order, neighbourhood, texture

FEATURES = Path(__file__).with_name("features.csv")
FAMILIES = ("stat", "ih", "ivh", "cm", "rlm", "ngt", "ngl")
AGGREGATION_SUFFIX = {a: a.replace(", ", "_").replace(".", "_").replace("-", "_").replace(" ", "_")
                      for a in texture.AGGREGATIONS + neighbourhood.AGGREGATIONS}


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
        families: among stat (intensity statistics), ih (intensity histogram), ivh (intensity-volume
            histogram), cm (GLCM), rlm (GLRLM), ngt (NGTDM), ngl (NGLDM).
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
    box = []
    for axis in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if not len(present):
            raise RadiomicsError("the mask is empty: there is no region of interest")
        box.append(slice(present[0], present[-1] + 1))
    box = tuple(box)
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
        roi = values[inside]
        if not torch.equal(roi, roi.round()) or (roi < 1).any():
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


def _ivh_grid(values, levels, inside, n_levels: int, settings: Settings):
    """Per ROI, the intensity of each grey level (B, Ng) and the total range G in levels (IBSI 3.5):
    discrete intensities stand for themselves over [min, max]; fixed bin size bins for their
    centres over all bins; fixed bin number bins for their numbers, over [1, Ng]."""
    k = torch.arange(1, n_levels + 1, dtype=torch.float64, device=levels.device)
    b = levels.shape[0]
    full = torch.tensor([1.0, float(n_levels)], dtype=torch.float64, device=levels.device).expand(b, 2)
    if settings.discretisation == "none":
        big = torch.iinfo(levels.dtype).max
        low = torch.where(inside, levels, big).amin((1, 2, 3))
        high = torch.where(inside, levels, 0).amax((1, 2, 3))
        return k.expand(b, n_levels), torch.stack([low, high], 1)
    if settings.discretisation == "fixed_bin_size":
        if settings.resegment_range is not None:
            origin = torch.full((b, 1), float(settings.resegment_range[0]), dtype=torch.float64, device=levels.device)
        else:
            origin = torch.where(inside, values, torch.finfo(values.dtype).max).amin((1, 2, 3))[:, None]
        return origin + (k - 0.5) * settings.bin_width, full
    return k.expand(b, n_levels), full


def _compact(values: torch.Tensor, levels: torch.Tensor, inside: torch.Tensor):
    """Each ROI's intensities and grey levels, packed at the front of its row: (B, N) with N
    the largest ROI, and which entries are real."""
    rows, cols = torch.nonzero(inside.flatten(1), as_tuple=True)
    counts = inside.flatten(1).sum(1)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(len(rows), device=rows.device) - starts[rows]
    width = max(int(counts.max()), 1)
    packed_values = torch.zeros(len(counts), width, dtype=values.dtype, device=values.device)
    packed_levels = torch.zeros(len(counts), width, dtype=levels.dtype, device=levels.device)
    packed_values[rows, position] = values.flatten(1)[rows, cols]
    packed_levels[rows, position] = levels.flatten(1)[rows, cols]
    valid = torch.arange(width, device=rows.device)[None, :] < counts[:, None]
    return packed_values, packed_levels, valid


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
    roi_values, roi_levels, valid = _compact(values, levels, inside)
    if "stat" in settings.families:
        for key, v in first_order.intensity_statistics(roi_values, valid).items():
            columns[f"stat_{key}"] = v
    if "ih" in settings.families:
        for key, v in first_order.intensity_histogram(roi_levels, valid, n_levels).items():
            columns[f"ih_{key}"] = v
    if "ivh" in settings.families:
        for key, v in first_order.intensity_volume_histogram(
                roi_levels, valid, n_levels, *_ivh_grid(values, levels, inside, n_levels, settings)).items():
            columns[f"ivh_{key}"] = v
    voxels = inside.sum((1, 2, 3))
    per_slice = inside.sum((2, 3))
    for family, matrices, features in (("cm", texture.cooccurrence, texture.glcm_features),
                                       ("rlm", texture.run_lengths, texture.glrlm_features)):
        if family in settings.families:
            m2, m3 = matrices(levels, n_levels)
            for aggregation, values_by_key in texture.aggregate(m2, m3, features, voxels, per_slice).items():
                for key, v in values_by_key.items():
                    columns[f"{family}_{key}_{AGGREGATION_SUFFIX[aggregation]}"] = v
    shared = neighbourhood.neighbours(levels) if {"ngt", "ngl"} & set(settings.families) else None
    for family, features in (("ngt", neighbourhood.ngtdm), ("ngl", neighbourhood.ngldm)):
        if family in settings.families:
            for aggregation, values_by_key in features(levels, n_levels, shared).items():
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
        suffix = {"cm": "_3D_averaged", "rlm": "_3D_averaged", "ngt": "_3D", "ngl": "_3D"}.get(row["family"], "")
        names[key + suffix] = "original_" + row["pyradiomics"]
    return names


def extract(image: np.ndarray, mask: np.ndarray, settings: Settings = Settings()):
    """Features of one ROI: a one-row DataFrame (see :func:`extract_batch`)."""
    return extract_batch([image], [mask], settings)


__all__ = ["RadiomicsError", "Settings", "extract", "extract_batch", "extract_dataset", "feature_table"]


def extract_dataset(dataset_id: str, masks, settings: Settings = Settings(), batch: int = 16, progress: bool = True):
    """Features of many series of a granted dataset, in batches, with a progress bar.

    Args:
        masks: Series Instance UID → mask (z-y-x, on that series' grid); series without a mask
            are left out.
        batch: series per batch (each batch is read lazily with dask, then extracted at once).

    Returns:
        a DataFrame indexed by Series Instance UID. The extraction is recorded in the audit log.
    """
    import dask
    import pandas as pd
    from tqdm.auto import tqdm

    from .. import audit
    from .. import datasets as mds

    tree = mds.open(dataset_id)
    unknown = sorted(set(masks) - set(tree.children))
    if unknown:
        raise RadiomicsError(f"no series {', '.join(unknown)} in dataset {dataset_id!r}")
    uids = [uid for uid in tree.children if uid in masks]
    tables = []
    with tqdm(total=len(uids), unit="series", desc=f"radiomics {dataset_id}", disable=not progress) as bar:
        for start in range(0, len(uids), batch):
            chunk = uids[start:start + batch]
            images = dask.compute(*(tree[uid]["image"].data for uid in chunk))
            table = extract_batch(list(images), [masks[uid] for uid in chunk], settings)
            table.index = chunk
            tables.append(table)
            bar.update(len(chunk))
    audit.record("export", {"dataset": dataset_id, "series": len(uids)}, via="radiomics")
    return pd.concat(tables) if tables else pd.DataFrame()
