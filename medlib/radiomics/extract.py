"""Feature extraction: image processing (IBSI 1, chapter 2) and every implemented family.

:func:`extract_batch` takes many ROIs at once. Each is resampled (when asked) and cropped to its
bounding box, plus the 1 cm³ sphere's reach where local intensity is asked for; the crops are
re-segmented, discretised and padded into one batch, so that every family runs as whole-tensor
operations on the chosen device. :func:`extract` is the one-ROI form. Feature names come from
``features.csv`` (IBSI family prefix and key, texture features with their aggregation), or
PyRadiomics' names where one exists (``names="pyradiomics"``).

With ``Settings.filters`` (IBSI 2), the image processing follows the standard's order: each
response map is computed after interpolation, on the ROI's crop widened by the filter's reach
(or the whole image, for filters whose support is the image), and cropped back; the ROI is
re-segmented on the original intensities and that mask is used for every response map, which
is discretised over its own intensity range. Morphology describes the mask: it is computed for
the original image only. A response map's features are named ``<filter name>_<feature>``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from . import first_order, neighbourhood, texture, zones
from .filters import Filter
from .local_intensity import local_intensity, sphere_margin
from .morphology import morphology, spatial_autocorrelation
from .pyradiomics import normalize_as_pyradiomics, resample_as_pyradiomics
from .resample import INTERPOLATORS, resample
from .table import feature_table

FAMILIES = ("morph", "loc", "stat", "ih", "ivh", "cm", "rlm", "szm", "dzm", "ngt", "ngl")
AGGREGATION_SUFFIX = {a: a.replace(", ", "_").replace(".", "_").replace("-", "_").replace(" ", "_")
                      for a in texture.AGGREGATIONS + neighbourhood.AGGREGATIONS}
DISCRETISATIONS = ("fixed_bin_number", "fixed_bin_size", "none")
CONVENTIONS = ("ibsi", "pyradiomics")


@functools.cache
def pyradiomics_table() -> dict:
    """The data table ``pyradiomics.json``: how PyRadiomics' settings and names map to medlib's."""
    return json.loads(Path(__file__).with_name("pyradiomics.json").read_text())


class RadiomicsError(ValueError):
    """Input that features cannot be computed from; the message says what to fix."""


#: The settings a filter's response map may have of its own (``Settings.filter_settings``).
FILTER_SETTINGS = ("discretisation", "bins", "bin_width", "energy_shift")


@dataclass(frozen=True)
class Settings:
    """IBSI image processing and what to compute.

    Attributes:
        resample_spacing: (z, y, x) voxel size in mm to interpolate to (IBSI 2.4, grid centres
            aligned; under PyRadiomics' conventions its grid, from the image's corner, and its
            crop, ``medlib.radiomics.pyradiomics``); None for an axis keeps it (``(None, 2, 2)``:
            in the slice only); None: no interpolation.
        interpolator: "nearest", "linear" or "cubic" (B-spline) for the image.
        mask_interpolator: "nearest" or "linear" for the mask; ``mask_threshold``: the
            partial-volume fraction from which an interpolated mask voxel is in the ROI.
        round_intensities: round interpolated intensities to integers (CT: Hounsfield units).
        discretisation: "fixed_bin_number", "fixed_bin_size" or "none" (intensities that are
            already positive integer grey levels, as the IBSI digital phantom).
        bins: the number of bins (fixed bin number).
        bin_width: the bin width (fixed bin size), from ``resegment_range[0]`` if set, else the
            ROI's minimum (IBSI; see ``conventions``).
        conventions: "ibsi", or "pyradiomics" where PyRadiomics defines a feature otherwise:
            fixed-size bins start at the multiple of the bin width at or below the ROI's minimum
            (bin edges are multiples of the width), and the axis lengths come from the
            population covariance of the voxel positions (IBSI: the sample covariance); where
            a feature is undefined for one grey level, PyRadiomics' value. Its surface mesh (its
            own marching cubes) is not reproduced: surface area, surface to volume ratio and
            sphericity differ from PyRadiomics' by up to 0.5% (``pyradiomics.json``).
        energy_shift: added to the intensities for the energy and root mean square (PyRadiomics'
            voxelArrayShift; IBSI: 0).
        normalize: PyRadiomics' whole-image normalisation (its normalize and normalizeScale,
            not IBSI's): before anything else the image's intensities become z-scores times this
            scale; None: none. ``normalize_outliers``: z-scores clipped at ± this many standard
            deviations before scaling (its removeOutliers).
        resegment_range: keep only intensities in [low, high] (IBSI 2.6); None: all.
        resegment_outliers: also drop intensities beyond mean ± 3 SD (IBSI 2.6).
        ivh_discretisation: for the intensity-volume histogram (IBSI 3.5): "texture" (as for
            texture), "none" (discrete calibrated intensities such as CT, interval 1),
            "fixed_bin_size" (``ivh_bin_width``, bin centres) or "fixed_bin_number"
            (``ivh_bins``, arbitrary units).
        families: among morph (morphology), loc (local intensity), stat (intensity statistics),
            ih (intensity histogram), ivh (intensity-volume histogram), cm (GLCM), rlm (GLRLM),
            szm (GLSZM), dzm (GLDZM), ngt (NGTDM), ngl (NGLDM).
        device: "cpu", "cuda", ...
        names: "ibsi" (family_key[_aggregation]) or "pyradiomics" (PyRadiomics' names, for the
            features it has).
        aggregations: the texture aggregations to compute (names of ``texture.AGGREGATIONS``,
            ``zones.AGGREGATIONS``); None: all.
        pyradiomics_aggregation: with PyRadiomics' names, the texture aggregation they name:
            "3D" (PyRadiomics' default), "3D merged" (its weightingNorm no_weighting), "2.5D"
            (its force2D) or "2.5D merged" (both); the table is ``pyradiomics.json``.
        minimum_dimensions: refuse an ROI that extends over fewer axes (0: any ROI, also one
            voxel; 1: a line; 2: a slice; 3: a volume; PyRadiomics' minimumROIDimensions).
        minimum_voxels: refuse an ROI of fewer voxels (PyRadiomics' minimumROISize).
        filters: IBSI 2 filters (:mod:`medlib.radiomics.filters`) whose response maps are also
            described, each by the families above except morphology.
        original: describe the original image too (False: response maps only).
        filter_settings: for a filter's response map, by the filter's ``name``, settings that
            differ from those above: any of ``FILTER_SETTINGS`` (how its intensities are
            discretised, its energy shift), as PyRadiomics sets them per image type.
    """

    resample_spacing: tuple[float | None, float | None, float | None] | None = None
    interpolator: str = "linear"
    mask_interpolator: str = "linear"
    mask_threshold: float = 0.5
    round_intensities: bool = False
    discretisation: str = "fixed_bin_number"
    bins: int = 32
    bin_width: float = 25.0
    conventions: str = "ibsi"
    energy_shift: float = 0.0
    normalize: float | None = None
    normalize_outliers: float | None = None
    resegment_range: tuple[float, float] | None = None
    resegment_outliers: bool = False
    ivh_discretisation: str = "texture"
    ivh_bins: int = 1000
    ivh_bin_width: float = 2.5
    families: tuple[str, ...] = FAMILIES
    device: str = "cpu"
    names: str = "ibsi"
    pyradiomics_aggregation: str = "3D"
    aggregations: tuple[str, ...] | None = None
    minimum_dimensions: int = 0
    minimum_voxels: int = 1
    filters: tuple[Filter, ...] = ()
    original: bool = True
    filter_settings: dict[str, dict] | None = None

    def __post_init__(self):
        if self.discretisation not in DISCRETISATIONS:
            raise RadiomicsError(f"discretisation {self.discretisation!r}: use {', '.join(DISCRETISATIONS)}")
        if self.ivh_discretisation not in ("texture",) + DISCRETISATIONS:
            raise RadiomicsError(f"ivh_discretisation {self.ivh_discretisation!r}: use texture, "
                                 f"{', '.join(DISCRETISATIONS)}")
        for name in ("interpolator", "mask_interpolator"):
            if getattr(self, name) not in INTERPOLATORS:
                raise RadiomicsError(f"{name} {getattr(self, name)!r}: use {', '.join(INTERPOLATORS)}")
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown:
            raise RadiomicsError(f"unknown feature families {unknown}; known: {', '.join(FAMILIES)}")
        if self.pyradiomics_aggregation not in pyradiomics_table()["aggregations"]:
            raise RadiomicsError(f"pyradiomics_aggregation {self.pyradiomics_aggregation!r}: use one of "
                                 f"{', '.join(pyradiomics_table()['aggregations'])}")
        known = set(texture.AGGREGATIONS) | set(zones.AGGREGATIONS)
        if self.aggregations is not None and set(self.aggregations) - known:
            raise RadiomicsError(f"aggregations {sorted(set(self.aggregations) - known)}: use some of "
                                 f"{', '.join(sorted(known))}")
        if self.conventions not in CONVENTIONS:
            raise RadiomicsError(f"conventions {self.conventions!r}: use {' or '.join(CONVENTIONS)}")
        if self.names not in ("ibsi", "pyradiomics"):
            raise RadiomicsError(f"names {self.names!r}: use ibsi or pyradiomics")
        object.__setattr__(self, "filters", tuple(self.filters))
        wrong = [f for f in self.filters if not isinstance(f, Filter)]
        if wrong:
            raise RadiomicsError(f"filters {wrong}: give filters of medlib.radiomics.filters (Mean, LoG, Laws, "
                                 "Gabor, Wavelet, Simoncelli, Riesz)")
        if not self.original and not self.filters:
            raise RadiomicsError("original=False leaves nothing to describe: give filters, or keep the original")
        for name, given in (self.filter_settings or {}).items():
            if name not in {f.name for f in self.filters}:
                raise RadiomicsError(f"filter_settings for {name!r}, which is not among the filters (their names: "
                                     f"{', '.join(f.name for f in self.filters) or 'none'})")
            if set(given) - set(FILTER_SETTINGS):
                raise RadiomicsError(f"filter_settings for {name}: {', '.join(sorted(set(given) - set(FILTER_SETTINGS)))}"
                                     f" cannot differ per filter; give some of {', '.join(FILTER_SETTINGS)}")
            replace(self, **given, filter_settings=None)  # the values checked as any settings are
        unnamed = [f.name for f in self.filters if not hasattr(f, "pyradiomics_name")]
        if unnamed and self.names == "pyradiomics":
            raise RadiomicsError(f"PyRadiomics has no names for IBSI 2's filters ({', '.join(unnamed)}): use "
                                 "names='ibsi', or PyRadiomics' image types (medlib.radiomics.image_types)")


def _spacing_of(image) -> tuple[float, float, float] | None:
    """(z, y, x) spacing in mm from an xarray DataArray's coordinates, as ``medlib.datasets``
    gives them; None for a plain array."""
    coords = getattr(image, "coords", None)
    if coords is None:
        return None
    return tuple(float(np.abs(np.diff(np.asarray(coords[d]))).mean()) if len(coords[d]) > 1 else 1.0
                 for d in ("z", "y", "x"))


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """The ROI's bounding box: slices first, then rows and columns within those slices only
    (a small ROI in a large volume costs one pass, not three)."""
    slices = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(1))
    if not len(slices):
        raise RadiomicsError("the mask is empty: there is no region of interest")
    within = mask[slices[0]:slices[-1] + 1]
    rows, columns = np.flatnonzero(within.any(axis=(0, 2))), np.flatnonzero(within.any(axis=(0, 1)))
    return tuple(slice(int(a[0]), int(a[-1]) + 1) for a in (slices, rows, columns))


class _Roi(NamedTuple):
    """One ROI prepared: intensities and morphological mask of a crop of the (resampled) image,
    its spacing, and the slices of the crop that hold the ROI with the local-intensity margin."""

    values: torch.Tensor
    inside: torch.Tensor
    spacing: tuple[float, float, float]
    inner: tuple[slice, slice, slice]
    crop: tuple  # which image and which crop of it: ROIs with the same crop share its tensors and maps


def _reach(settings: Settings, spacing) -> tuple[int, int, int] | None:
    """How far beyond the ROI (and its local-intensity margin) the filters need the image, in
    voxels (z, y, x); None: the whole image (also with periodic padding, where the voxels by
    one edge depend on those by the opposite edge)."""
    reach = [0, 0, 0]
    for f in settings.filters:
        r = None if f.padding == "periodic" else f.reach(spacing)
        if r is None:
            return None
        reach = [max(a, b) for a, b in zip(reach, r)]
    return tuple(reach)


def _prepare(image, mask, spacing, settings: Settings, crops: dict):
    """One ROI as tensors: its intensities and morphological mask, cropped to the ROI with the
    margin local intensity needs and the filters' reach beyond it; its spacing; and the slices
    of that crop that hold the ROI with the local-intensity margin alone. ``crops`` keeps the
    intensity tensors made so far, which ROIs of the same image and crop share (read-only)."""
    source, spacing = image, _spacing_of(image) or spacing
    if spacing is None:
        raise RadiomicsError("give the voxel spacing: spacing=(z, y, x) in mm, or an xarray image with "
                             "coordinates in mm (as medlib.datasets opens them)")
    image, mask = np.asarray(image), np.asarray(mask)
    if image.shape != mask.shape:
        raise RadiomicsError(f"the mask's grid {mask.shape} does not match the image's {image.shape}; "
                             "resample the mask onto the image first")
    if image.ndim != 3:
        raise RadiomicsError(f"give a volume (z, y, x); this image has {image.ndim} dimension(s)")
    mask = np.asarray(mask, dtype=bool)
    box = _bounding_box(mask)
    extent = [b.stop - b.start for b in box]
    if sum(e > 1 for e in extent) < settings.minimum_dimensions:
        raise RadiomicsError(f"the ROI extends over {sum(e > 1 for e in extent)} axes ({'×'.join(map(str, extent))} "
                             f"voxels); minimum_dimensions asks for {settings.minimum_dimensions}")
    if settings.minimum_voxels > 1 and int(mask[box].sum()) < settings.minimum_voxels:
        raise RadiomicsError(f"the ROI has {int(mask[box].sum())} voxels; minimum_voxels asks for "
                             f"{settings.minimum_voxels}")
    if settings.normalize is not None:
        key = ("normalized", id(source))
        if key not in crops:
            crops[key] = normalize_as_pyradiomics(image, settings.normalize, settings.normalize_outliers)
        image = crops[key]
    if settings.resample_spacing is not None:
        target = tuple(settings.resample_spacing)
        new = tuple(s if t is None else t for s, t in zip(spacing, target))
        if settings.conventions == "pyradiomics":
            values, inside, spacing = resample_as_pyradiomics(image, mask, spacing, target, settings.interpolator)
            values, inside = values.to(settings.device), inside.to(settings.device)
        else:
            reach = _reach(settings, new)
            margin = (max(sphere_margin(new)) if "loc" in settings.families else 0) + 1
            margin += max(reach) if reach is not None else max(image.shape) * 10 ** 3  # the whole grid
            values, inside, spacing = resample(image, mask, box, spacing, target, settings.interpolator,
                                               settings.mask_interpolator, settings.mask_threshold, margin,
                                               settings.device)
        if not inside.any():
            raise RadiomicsError(f"no voxel of the ROI is left after resampling to {new} mm; the ROI is smaller "
                                 "than the new voxels")
        if settings.round_intensities:
            values = values.round()
        found = torch.nonzero(inside, as_tuple=True)
        box = tuple(slice(int(f.min()), int(f.max()) + 1) for f in found)
    else:
        values, inside = image, mask
    shape = values.shape
    margin = sphere_margin(spacing) if "loc" in settings.families else (0, 0, 0)
    box = tuple(slice(max(b.start - m, 0), min(b.stop + m, n)) for b, m, n in zip(box, margin, shape))
    reach = _reach(settings, spacing)
    outer = (tuple(slice(0, n) for n in shape) if reach is None else
             tuple(slice(max(b.start - r, 0), min(b.stop + r, n)) for b, r, n in zip(box, reach, shape)))
    values, inside = values[outer], inside[outer]
    crop = (id(source), *((o.start, o.stop) for o in outer))
    if isinstance(values, np.ndarray):
        if crop not in crops:
            crops[crop] = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(settings.device)
        values = crops[crop]
        inside = torch.from_numpy(np.ascontiguousarray(inside, dtype=bool)).to(settings.device)
    inner = tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, outer))
    return _Roi(values, inside, tuple(float(s) for s in spacing), inner, crop)


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
        if settings.conventions == "pyradiomics":
            origin = torch.floor(low / settings.bin_width) * settings.bin_width
        else:
            origin = settings.resegment_range[0] if settings.resegment_range is not None else low
        levels = (torch.floor((values - origin) / settings.bin_width) + 1).long()
    levels = torch.where(inside, levels, 0)
    n_levels = settings.bins if settings.discretisation == "fixed_bin_number" else int(levels.max().item())
    return levels, max(n_levels, 1)


def _ivh_levels(values, inside, levels, n_levels: int, settings: Settings):
    """The intensity-volume histogram's discretisation (IBSI 3.5): grey levels (0 outside),
    their number Ng, the intensity each level stands for (B, Ng) and the total range G in
    levels (B, 2)."""
    b = values.shape[0]
    dev = dict(dtype=torch.float64, device=values.device)
    method = settings.ivh_discretisation
    if method == "texture":
        method, width = settings.discretisation, settings.bin_width
    else:
        width = settings.ivh_bin_width
        if method != "none":
            levels, n_levels = _discretise(values, inside, replace(settings, discretisation=method,
                                                                   bins=settings.ivh_bins, bin_width=width))
    big = torch.finfo(torch.float64).max
    low = torch.where(inside, values, big).amin((1, 2, 3))
    high = torch.where(inside, values, -big).amax((1, 2, 3))
    if settings.resegment_range is not None:
        low = torch.full_like(low, settings.resegment_range[0])
        if np.isfinite(settings.resegment_range[1]):
            high = torch.full_like(high, settings.resegment_range[1])
    ones = torch.ones(b, **dev)
    if method == "none":  # discrete intensities (CT, or grey levels as given) stand for themselves, interval 1
        roi = values[inside]
        if not torch.equal(roi, roi.round()):
            raise RadiomicsError("ivh_discretisation 'none' needs integer intensities (round them, or use "
                                 "fixed_bin_size)")
        levels = torch.where(inside, (values - low[:, None, None, None]).long() + 1, 0)
        n_levels = int((high - low).max().item()) + 1
        k = torch.arange(1, n_levels + 1, **dev)
        return levels, n_levels, low[:, None] + k - 1, torch.stack([ones, high - low + 1], 1)
    k = torch.arange(1, n_levels + 1, **dev)
    if method == "fixed_bin_size":  # bin centres over [min + w/2, max - w/2]
        return levels, n_levels, low[:, None] + (k - 0.5) * width, torch.stack([ones, (high - low) / width], 1)
    return levels, n_levels, k.expand(b, n_levels), torch.stack([ones, ones * n_levels], 1)


def _compact(inside: torch.Tensor, *volumes: torch.Tensor):
    """Each ROI's entries of ``volumes``, packed at the front of its row: (B, N) each, with N
    the largest ROI; and which entries are real."""
    rows, cols = torch.nonzero(inside.flatten(1), as_tuple=True)
    counts = inside.flatten(1).sum(1)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(len(rows), device=rows.device) - starts[rows]
    width = max(int(counts.max()), 1)
    packed = []
    for volume in volumes:
        out = torch.zeros(len(counts), width, dtype=volume.dtype, device=volume.device)
        out[rows, position] = volume.flatten(1)[rows, cols]
        packed.append(out)
    valid = torch.arange(width, device=rows.device)[None, :] < counts[:, None]
    return (*packed, valid)


def _batch(rois):
    """ROIs (values, mask) of different shapes → padded (B, Z, Y, X) values, mask and which
    positions are image."""
    shape = tuple(max(r[0].shape[a] for r in rois) for a in range(3))
    device = rois[0][0].device
    values = torch.zeros((len(rois), *shape), dtype=torch.float64, device=device)
    morphological = torch.zeros((len(rois), *shape), dtype=torch.bool, device=device)
    image = torch.zeros((len(rois), *shape), dtype=torch.bool, device=device)
    for n, (v, m) in enumerate(rois):
        box = (n, *(slice(0, s) for s in v.shape))
        values[box], morphological[box], image[box] = v, m, True
    return values, morphological, image


def extract_batch(images: Sequence, masks: Sequence, settings: Settings = Settings(), spacing=None):
    """Features of many ROIs, one row each: a DataFrame.

    Args:
        images: volumes (z, y, x): xarray DataArrays with coordinates in mm (as
            ``medlib.datasets`` opens them), or arrays with ``spacing``.
        masks: one per image, on its grid; nonzero is in the ROI.
        spacing: (z, y, x) voxel size in mm of the arrays (not needed for DataArrays). After
            resampling, all ROIs of a batch must have the same spacing.
    """
    import pandas as pd

    if len(images) != len(masks):
        raise RadiomicsError(f"{len(images)} images but {len(masks)} masks")
    crops: dict[tuple, torch.Tensor] = {}
    rois = [_prepare(i, m, spacing, settings, crops) for i, m in zip(images, masks)]
    del crops
    spacings = {r.spacing for r in rois}
    if len(spacings) > 1:
        raise RadiomicsError(f"the ROIs have different voxel spacings {sorted(spacings)}; set resample_spacing, "
                             "or extract them in separate batches")
    spacing = spacings.pop()
    values, morphological, image = _batch([(r.values[r.inner], r.inside[r.inner]) for r in rois])
    inside = _resegment(values, morphological, settings)
    columns: dict[str, torch.Tensor] = {}
    if settings.original:
        columns.update(_features(values, morphological, inside, image, spacing, settings))
    if settings.filters:
        # a response map's intensities are its own: discretised over their range, IVH as for texture
        own = replace(settings, resegment_range=None, resegment_outliers=False, families=tuple(
            f for f in settings.families if f != "morph"), ivh_discretisation="texture", filters=(), original=True,
            filter_settings=None)
        for f in settings.filters:
            maps: dict[tuple, torch.Tensor] = {}  # ROIs of one crop of one image share its response map
            for r in rois:
                if r.crop not in maps:
                    maps[r.crop] = f(r.values[None], spacing)[0]
            response = _batch([(maps[r.crop][r.inner], r.inside[r.inner]) for r in rois])[0]
            del maps
            for key, column in _features(response, morphological, inside, image, spacing,
                                         replace(own, **(settings.filter_settings or {}).get(f.name, {}))).items():
                columns[f"{f.name}_{key}"] = column
    if settings.names == "pyradiomics":  # PyRadiomics' features that are IBSI's shifted or scaled
        for prefix in [""] * settings.original + [f"{f.name}_" for f in settings.filters]:
            for target, rule in pyradiomics_table()["derived"].items():
                if prefix + rule["from"] in columns:
                    value = columns[prefix + rule["from"]] + rule.get("add", 0)
                    columns[f"{prefix}pyradiomics_{target}"] = value * (
                        float(np.prod(spacing)) if rule.get("times_voxel_volume") else 1)
    table = pd.DataFrame({k: v.detach().cpu().numpy() for k, v in columns.items()})
    if settings.names == "pyradiomics":
        original = pyradiomics_names(settings.pyradiomics_aggregation)
        original.update({f"pyradiomics_{target}": f"original_{target}" for target in pyradiomics_table()["derived"]})
        names = dict(original)
        for f in settings.filters:
            names.update({f"{f.name}_{k}": f"{f.pyradiomics_name}_{v.removeprefix('original_')}"
                          for k, v in original.items() if not k.startswith("morph_")})
        names = {k: v for k, v in names.items() if k in table}
        table = table[list(names)].rename(columns=names)
    return table


#: One family's work: (family, aggregation or None, features) for each result it gives.
Job = Callable[[], list[tuple[str, str | None, dict[str, torch.Tensor]]]]


@functools.cache
def _workers() -> ThreadPoolExecutor:
    """The threads the families of a batch run on, side by side: as many as torch's intra-op
    threads (the cores). Each runs its own torch operations on one thread (torch's thread count
    is kept per thread, so the caller's stays as it is): the cores are shared out between
    families, most of whose steps (marching cubes, the hull, the compiled kernels, the small
    per-matrix operations) use one core anyway, rather than fought over by every operation."""
    return ThreadPoolExecutor(torch.get_num_threads(), thread_name_prefix="medlib-radiomics",
                              initializer=torch.set_num_threads, initargs=(1,))


os.register_at_fork(after_in_child=_workers.cache_clear)  # a forked child has none of the threads: its own pool


def _features(values, morphological, inside, image, spacing, settings: Settings) -> dict[str, torch.Tensor]:
    """Every asked family's features of a batch (B, Z, Y, X): intensities, morphological and
    intensity masks, and which positions are image; in IBSI's family order. The families are
    independent of each other, so they run side by side (:func:`_workers`)."""
    levels, n_levels = _discretise(values, inside, settings)
    families = set(settings.families)
    voxels = inside.sum((1, 2, 3))
    per_slice = inside.sum((2, 3))
    roi_values, roi_levels, valid = _compact(inside, values, levels)
    jobs: list[Job] = []
    if "morph" in families:  # the mesh first: marching cubes holds the GIL while it runs, and the
        # FFT job, which needs the GIL between its transforms, starts once it is done (started
        # together, measured: the FFT job takes twice as long)
        jobs.append(lambda: [("morph", None, morphology(morphological, inside, values, spacing,
                                                        population_axes=settings.conventions == "pyradiomics"))])
        jobs.append(lambda: [("morph", None, spatial_autocorrelation(values, inside, spacing))])
    if "loc" in families:
        jobs.append(lambda: [("loc", None, local_intensity(values, image, inside, spacing))])
    if "stat" in families:
        jobs.append(lambda: [("stat", None,
                              first_order.intensity_statistics(roi_values, valid, settings.energy_shift))])
    if "ih" in families:
        jobs.append(lambda: [("ih", None, first_order.intensity_histogram(roi_levels, valid, n_levels))])
    if "ivh" in families:
        def ivh():
            ivh_levels, ivh_n, intensity, level_range = _ivh_levels(values, inside, levels, n_levels, settings)
            (roi_ivh, _) = _compact(inside, ivh_levels)
            return [("ivh", None,
                     first_order.intensity_volume_histogram(roi_ivh, valid, ivh_n, intensity, level_range))]
        jobs.append(ivh)
    for family, matrices, features in (("cm", texture.cooccurrence, texture.glcm_features),
                                       ("rlm", texture.run_lengths, texture.glrlm_features)):
        if family in families:
            def matrix_family(family=family, matrices=matrices, features=features):
                m2, m3 = matrices(levels, n_levels)
                return [(family, aggregation, by_key) for aggregation, by_key in
                        texture.aggregate(m2, m3, features, voxels, per_slice, settings.aggregations).items()]
            jobs.append(matrix_family)
    if {"szm", "dzm"} & families:
        def zone_families():
            found = zones.Zones(levels, morphological)
            return [(family, aggregation, by_key) for family in ("szm", "dzm") if family in families
                    for aggregation, by_key in found.features(n_levels, family, settings.aggregations).items()]
        jobs.append(zone_families)
    if {"ngt", "ngl"} & families:
        def neighbourhood_families():
            shared = neighbourhood.neighbours(levels)
            return [(family, aggregation, by_key)
                    for family, features in (("ngt", neighbourhood.ngtdm), ("ngl", neighbourhood.ngldm))
                    if family in families
                    for aggregation, by_key in features(levels, n_levels, shared, settings.aggregations).items()]
        jobs.append(neighbourhood_families)

    columns: dict[str, torch.Tensor] = {}
    for results in _workers().map(lambda job: job(), jobs):
        for family, aggregation, features in results:
            for key, v in features.items():
                if family != "morph":  # no intensities left after re-segmentation: nothing to describe
                    v = torch.where(voxels > 0, v, torch.nan)
                columns[f"{family}_{key}" + (f"_{AGGREGATION_SUFFIX[aggregation]}" if aggregation else "")] = v
    if settings.conventions == "pyradiomics":  # PyRadiomics' values where IBSI's are undefined (one grey level)
        for name, value in pyradiomics_table()["flat"].items():
            for column in [c for c in columns if c.startswith(name + "_") or c == name]:
                columns[column] = torch.where(torch.isnan(columns[column]) & (voxels > 0), value, columns[column])
    order = {family: n for n, family in enumerate(FAMILIES)}
    return {k: columns[k] for k in sorted(columns, key=lambda c: order[c.split("_", 1)[0]])}


def pyradiomics_names(aggregation: str = "3D") -> dict[str, str]:
    """medlib column → PyRadiomics feature name, texture features under ``aggregation`` (see
    ``Settings.pyradiomics_aggregation``; README says where definitions differ)."""
    aggregations = pyradiomics_table()["aggregations"][aggregation]
    names = {}
    for row in feature_table():
        if not row["pyradiomics"]:
            continue
        key = f"{row['family']}_{row['key']}"
        suffix = f"_{AGGREGATION_SUFFIX[aggregations[row['family']]]}" if row["family"] in aggregations else ""
        names[key + suffix] = "original_" + row["pyradiomics"]
    return names


def extract(image, mask, settings: Settings = Settings(), spacing=None):
    """Features of one ROI: a one-row DataFrame (see :func:`extract_batch`)."""
    return extract_batch([image], [mask], settings, spacing)


__all__ = ["RadiomicsError", "Settings", "extract", "extract_batch", "extract_dataset", "feature_table"]


def extract_dataset(dataset_id: str, masks, settings: Settings = Settings(), batch: int = 16, progress: bool = True,
                    roi: str | None = None):
    """Features of many series of a granted dataset, in batches, with a progress bar.

    Args:
        masks: Series Instance UID → mask: an array (z-y-x, on that series' grid), or the path of
            a DICOM SEG or RTSTRUCT that segments that series (see ``roi``); series without a
            mask are left out.
        batch: series per batch (each batch is read lazily with dask, then extracted at once).
        roi: the segment (SEG SegmentLabel) or ROI (RTSTRUCT ROIName) to use from SEG and
            RTSTRUCT files; None: each file's only one.

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
            images = dask.compute(*(tree[uid]["image"] for uid in chunk))
            table = extract_batch(list(images), [_mask_of(masks[uid], tree[uid], roi) for uid in chunk], settings)
            table.index = chunk
            tables.append(table)
            bar.update(len(chunk))
    audit.record("export", {"dataset": dataset_id, "series": len(uids)}, via="radiomics")
    return pd.concat(tables) if tables else pd.DataFrame()


def _mask_of(given, node, roi: str | None) -> np.ndarray:
    """A mask as given, or read from the SEG or RTSTRUCT file given, onto ``node``'s grid."""
    if not isinstance(given, (str, os.PathLike)):
        return given
    from .io import series_mask
    from .masks import Grid

    return series_mask(given, Grid.of(node), node.attrs["SeriesInstanceUID"], roi)
