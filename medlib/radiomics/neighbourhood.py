"""Neighbourhood texture (IBSI 1, 3.11 NGTDM and 3.12 NGLDM), batched in torch.

Each ROI voxel is compared with its neighbours at Chebyshev distance 1 (8 in the slice for 2D,
26 for 3D) that lie in the ROI, by flat-index gathers over the ROI's voxels only. Matrices are
made per slice (2D: features averaged over slices; 2.5D: the slices' matrices merged) and over
the volume (3D). NGLDM uses the coarseness parameter alpha = 0 (dependent: the same level).
"""

from __future__ import annotations

import torch

from . import kernels
from .table import count_features
from .texture import DIRECTIONS_2D, _flat, _steps, count_matrix_features

AGGREGATIONS = ("2D", "2.5D", "3D")


def neighbours(levels: torch.Tensor):
    """Per ROI voxel: its level, its (ROI, slice) index, and for 2D and 3D neighbourhoods the
    number of neighbours in the ROI, the sum of their levels and how many share its level."""
    b, z = levels.shape[:2]
    flat, strides, volume = _flat(levels)
    voxels = torch.nonzero(flat).flatten()
    level = flat[voxels]
    where = (voxels // volume) * z + (voxels % volume) // strides[0] - 1
    steps = _steps(strides, levels.device)
    in_plane, across = steps[:len(DIRECTIONS_2D)], steps[len(DIRECTIONS_2D):]
    counted = (kernels.neighbours if flat.device.type == "cpu" else _neighbours_in_tensors)(
        flat, voxels, in_plane.tolist(), across.tolist())
    return level, where, {"2D": tuple(counted[:3]), "3D": tuple(counted[3:])}


def _neighbours_in_tensors(flat: torch.Tensor, voxels: torch.Tensor, in_plane: list[int],
                           across: list[int]) -> torch.Tensor:
    """:func:`medlib.radiomics.kernels.neighbours` in whole tensors (devices other than the CPU)."""
    level = flat[voxels]
    out = []
    count, total, same = torch.zeros_like(level), torch.zeros_like(level), torch.zeros_like(level)
    for chosen in (in_plane, across):  # 3D: the 8 in-plane neighbours and 18 more
        for step in chosen + [-s for s in chosen]:
            other = flat[voxels + step]
            count += other > 0
            total += other
            same += other == level
        out += [count.clone(), total.clone(), same.clone()]
    return torch.stack(out)


def _per(where: torch.Tensor, values: torch.Tensor, groups: int, size: int) -> torch.Tensor:
    """Sum ``values`` into (groups, size) cells, ``where`` being flat cell indices."""
    return torch.zeros(groups * size, dtype=torch.float64, device=values.device).index_add_(
        0, where, values.to(torch.float64)).view(groups, size)


def aggregate_by_slice(b: int, z: int, build, features, only=None) -> dict[str, dict[str, torch.Tensor]]:
    """Features per aggregation (2D, 2.5D, 3D; ``only``: those listed), each (B,), of B ROIs of Z
    slices.

    ``build(neighbourhood, per_slice)`` makes the matrices of the "2D" or "3D" neighbourhood
    (linkage), for each slice of each ROI (B × Z groups) or for each ROI (B groups), as tensors
    whose first axis is the group; ``features(neighbourhood, *matrices)`` computes features
    from them. 2D averages the slices' features, 2.5D merges (sums) the slices' matrices.
    """
    out = {}
    for name in (a for a in AGGREGATIONS if only is None or a in only):
        volume = name == "3D"
        neighbourhood = "3D" if volume else "2D"
        matrices = build(neighbourhood, not volume)
        if name == "2.5D":
            matrices = tuple(m.view(b, z, *m.shape[1:]).sum(1) for m in matrices)
        values = features(neighbourhood, *matrices)
        out[name] = {k: v.view(b, z).nanmean(1) if name == "2D" else v for k, v in values.items()}
    return out


def ngtdm(levels: torch.Tensor, n_levels: int, shared=None, only=None) -> dict[str, dict[str, torch.Tensor]]:
    """The 5 NGTDM features per aggregation, each (B,); ``shared``: :func:`neighbours` of
    ``levels``, when already made."""
    ng, (b, z) = n_levels, levels.shape[:2]
    level, where, found = shared or neighbours(levels)

    def build(neighbourhood, per_slice):
        cells, groups = (where, b * z) if per_slice else (where // z, b)
        count, total, _ = found[neighbourhood]
        keep = count > 0  # a voxel without neighbours in the ROI is left out
        diff = (level - total / count.clamp(min=1)).abs()[keep]
        cell = cells[keep] * ng + level[keep] - 1
        return _per(cell, torch.ones_like(diff), groups, ng), _per(cell, diff, groups, ng)

    return aggregate_by_slice(b, z, build, lambda _, n, s: _ngtdm_features(n, s), only)


def _ngtdm_features(n: torch.Tensor, s: torch.Tensor) -> dict[str, torch.Tensor]:
    ng = n.shape[-1]
    nvc = n.sum(-1)
    p = n / nvc[..., None]
    i = torch.arange(1, ng + 1, dtype=torch.float64, device=n.device)
    present = p > 0
    ngp = present.sum(-1).to(torch.float64)
    pi, pj = p[..., :, None], p[..., None, :]
    si, sj = s[..., :, None], s[..., None, :]
    both = present[..., :, None] & present[..., None, :]
    d = i[:, None] - i[None, :]
    ps = (p * s).sum(-1)
    coarseness = torch.where(ps > 0, 1 / ps, torch.tensor(1e6, dtype=torch.float64, device=n.device))
    contrast = (pi * pj * d ** 2).sum((-1, -2)) / (ngp * (ngp - 1)) * s.sum(-1) / nvc
    busy = (torch.where(both, (i[:, None] * pi - i[None, :] * pj).abs(), 0.0)).sum((-1, -2))
    complexity = torch.where(both, d.abs() * (pi * si + pj * sj) / (pi + pj).clamp(min=1e-300), 0.0).sum((-1, -2)) / nvc
    strength = torch.where(both, (pi + pj) * d ** 2, 0.0).sum((-1, -2)) / s.sum(-1)
    features = {
        "coarseness": coarseness,
        "contrast": torch.where(ngp > 1, contrast, 0.0),
        "busyness": torch.where(busy > 0, ps / busy, 0.0),
        "complexity": complexity,
        "strength": torch.where(s.sum(-1) > 0, strength, 0.0),
    }
    return {k: torch.where(nvc > 0, v, torch.nan) for k, v in features.items()}


def ngldm(levels: torch.Tensor, n_levels: int, shared=None, only=None) -> dict[str, dict[str, torch.Tensor]]:
    """The 17 NGLDM features per aggregation, each (B,); ``shared`` as for :func:`ngtdm`."""
    ng, (b, z) = n_levels, levels.shape[:2]
    level, where, found = shared or neighbours(levels)

    def build(neighbourhood, per_slice):
        cells, groups = (where, b * z) if per_slice else (where // z, b)
        dependence = found[neighbourhood][2] + 1  # the voxel and its neighbours of the same level
        nn = 27 if neighbourhood == "3D" else 9
        cell = (cells * ng + level - 1) * nn + dependence - 1
        return (torch.bincount(cell, minlength=groups * ng * nn).view(groups, ng, nn).to(torch.float64),)

    return aggregate_by_slice(b, z, build, lambda _, m: _ngldm_features(m), only)


def _ngldm_features(m: torch.Tensor) -> dict[str, torch.Tensor]:
    generic = count_matrix_features(m)
    features = {name: generic[key] for name, key in count_features("ngl").items()}
    # every ROI voxel has a dependence count
    features["dependence_count_percentage"] = torch.where(generic["total"] > 0, 1.0, torch.nan)
    return features
