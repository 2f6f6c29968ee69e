"""Texture matrices and their features (IBSI 1, 3.6 GLCM and 3.7 GLRLM), batched in torch.

Input is a batch of discretised volumes ``levels`` (B, Z, Y, X), int64: 0 outside the ROI,
1..Ng inside. Matrices are counted with ``bincount`` over whole shifted volumes (no loop over
voxels); the loops that remain run over the 13 directions and, for run lengths, over lengths.
Each matrix is computed per direction and, for 2D, per slice, then aggregated as IBSI 3.1
describes:

- ``2D, averaged``: features of each slice and in-plane direction, averaged;
- ``2D, slice-merged``: directions merged per slice, features averaged over slices;
- ``2.5D, direction-merged``: slices merged per direction, features averaged over directions;
- ``2.5D, merged``: one matrix of all slices and directions;
- ``3D, averaged``: features of each of the 13 directions, averaged;
- ``3D, merged``: one matrix of all 13 directions.

Matrices with no counts (a direction the ROI never spans) give NaN features and are left out
of the averages.
"""

from __future__ import annotations

import itertools

import torch

AGGREGATIONS = ("2D, averaged", "2D, slice-merged", "2.5D, direction-merged", "2.5D, merged",
                "3D, averaged", "3D, merged")
#: (dz, dy, dx) at Chebyshev distance 1, one of each opposite pair: 4 in-plane, 13 in all.
DIRECTIONS_2D = ((0, 0, 1), (0, 1, -1), (0, 1, 0), (0, 1, 1))
DIRECTIONS_3D = DIRECTIONS_2D + tuple((1, dy, dx) for dy, dx in itertools.product((-1, 0, 1), repeat=2))


def shifted(t: torch.Tensor, offset: tuple[int, int, int], k: int = 1) -> torch.Tensor:
    """``t`` at ``v + k * offset`` for every voxel ``v`` of the last three axes (0 beyond the edge)."""
    out = torch.zeros_like(t)
    src, dst = [...], [...]
    for d, size in zip(offset, t.shape[-3:]):
        step = d * k
        if abs(step) >= size:
            return out
        src.append(slice(max(step, 0), size + min(step, 0)))
        dst.append(slice(max(-step, 0), size - max(step, 0)))
    out[tuple(dst)] = t[tuple(src)]
    return out


def _mean_over(features: dict[str, torch.Tensor], dims: tuple[int, ...]) -> dict[str, torch.Tensor]:
    return {k: v.nanmean(dim=dims) for k, v in features.items()}


def aggregate(matrices_2d: torch.Tensor, matrices_3d: torch.Tensor, features,
              voxels: torch.Tensor, voxels_per_slice: torch.Tensor) -> dict[str, dict]:
    """Features under every IBSI aggregation.

    Args:
        matrices_2d: (B, Z, 4, ...) per slice and in-plane direction.
        matrices_3d: (B, 13, ...) per direction over the whole volume.
        features: function from matrices (..., M, N) and ``nv`` (the voxels behind each matrix,
            times the matrices merged into it, broadcastable) to {name: tensor (...)}.
        voxels: (B,) voxels per ROI; ``voxels_per_slice``: (B, Z).
    """
    v, vs = voxels.to(torch.float64), voxels_per_slice.to(torch.float64)
    return {
        "2D, averaged": _mean_over(features(matrices_2d, nv=vs[:, :, None]), (1, 2)),
        "2D, slice-merged": _mean_over(features(matrices_2d.sum(2), nv=4 * vs), (1,)),
        "2.5D, direction-merged": _mean_over(features(matrices_2d.sum(1), nv=v[:, None]), (1,)),
        "2.5D, merged": features(matrices_2d.sum((1, 2)), nv=4 * v),
        "3D, averaged": _mean_over(features(matrices_3d, nv=v[:, None]), (1,)),
        "3D, merged": features(matrices_3d.sum(1), nv=13 * v),
    }


# -- grey level co-occurrence ---------------------------------------------------------------

def cooccurrence(levels: torch.Tensor, n_levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric GLCMs at distance 1: (B, Z, 4, Ng, Ng) per slice and in-plane direction,
    and (B, 13, Ng, Ng) per 3D direction."""
    b, z = levels.shape[:2]
    ng = n_levels
    batch = torch.arange(b, device=levels.device).view(b, 1, 1, 1)
    slices = torch.arange(z, device=levels.device).view(1, z, 1, 1)
    per_slice, per_volume = [], []
    for direction in DIRECTIONS_3D:
        other = shifted(levels, direction)
        pair = (levels > 0) & (other > 0)
        a, c = (levels - 1).clamp(min=0), (other - 1).clamp(min=0)
        if direction[0] == 0:
            index = (((batch * z + slices) * ng + a) * ng + c)[pair]
            m = torch.bincount(index, minlength=b * z * ng * ng).view(b, z, ng, ng)
            per_slice.append(m)
            per_volume.append(m.sum(1))
        else:
            index = ((batch * ng + a) * ng + c)[pair]
            per_volume.append(torch.bincount(index, minlength=b * ng * ng).view(b, ng, ng))
    m2 = torch.stack(per_slice, 2).to(torch.float64)
    m3 = torch.stack(per_volume, 1).to(torch.float64)
    return m2 + m2.transpose(-1, -2), m3 + m3.transpose(-1, -2)


def glcm_features(counts: torch.Tensor, **_) -> dict[str, torch.Tensor]:
    """The 25 IBSI GLCM features of count matrices (..., Ng, Ng)."""
    ng = counts.shape[-1]
    total = counts.sum((-1, -2), keepdim=True)
    p = counts / total
    dev = dict(dtype=p.dtype, device=p.device)
    i = torch.arange(1, ng + 1, **dev).view(ng, 1)
    j = torch.arange(1, ng + 1, **dev).view(1, ng)
    pi, pj = p.sum(-1), p.sum(-2)  # marginals p_i. and p_.j
    g = torch.arange(1, ng + 1, **dev)
    k_diff = (i - j).abs().long()  # 0..Ng-1
    k_sum = (i + j).long() - 2  # index of 2..2Ng
    p_diff = torch.zeros(*p.shape[:-2], ng, **dev).index_add_(-1, k_diff.flatten(), p.flatten(-2))
    p_sum = torch.zeros(*p.shape[:-2], 2 * ng - 1, **dev).index_add_(-1, k_sum.flatten(), p.flatten(-2))
    kd = torch.arange(ng, **dev)
    ks = torch.arange(2, 2 * ng + 1, **dev)

    def plogp(x):
        return torch.where(x > 0, x * torch.log2(x), 0.0)

    def s(x):
        return x.sum((-1, -2))

    mu = s(i * p)
    var = s((i - mu[..., None, None]) ** 2 * p)
    mu_i, mu_j = (g * pi).sum(-1), (g * pj).sum(-1)
    sd_i = ((g - mu_i[..., None]) ** 2 * pi).sum(-1).sqrt()
    sd_j = ((g - mu_j[..., None]) ** 2 * pj).sum(-1).sqrt()
    diff_avg = (kd * p_diff).sum(-1)
    sum_avg = (ks * p_sum).sum(-1)
    hxy = -s(plogp(p))
    hx = -plogp(pi).sum(-1)
    outer = pi[..., :, None] * pj[..., None, :]
    hxy1 = -s(torch.where(outer > 0, p * torch.log2(outer), 0.0))
    hxy2 = -s(plogp(outer))
    off = i != j
    features = {
        "joint_maximum": p.flatten(-2).max(-1).values,
        "joint_average": mu,
        "joint_variance": var,
        "joint_entropy": hxy,
        "difference_average": diff_avg,
        "difference_variance": ((kd - diff_avg[..., None]) ** 2 * p_diff).sum(-1),
        "difference_entropy": -plogp(p_diff).sum(-1),
        "sum_average": sum_avg,
        "sum_variance": ((ks - sum_avg[..., None]) ** 2 * p_sum).sum(-1),
        "sum_entropy": -plogp(p_sum).sum(-1),
        "angular_second_moment": s(p ** 2),
        "contrast": s((i - j) ** 2 * p),
        "dissimilarity": s((i - j).abs() * p),
        "inverse_difference": s(p / (1 + (i - j).abs())),
        "normalised_inverse_difference": s(p / (1 + (i - j).abs() / ng)),
        "inverse_difference_moment": s(p / (1 + (i - j) ** 2)),
        "normalised_inverse_difference_moment": s(p / (1 + (i - j) ** 2 / ng ** 2)),
        "inverse_variance": s(torch.where(off, p / torch.where(off, (i - j) ** 2, 1.0), 0.0)),
        "correlation": (s(i * j * p) - mu_i * mu_j) / (sd_i * sd_j),
        "autocorrelation": s(i * j * p),
        "cluster_tendency": s((i + j - mu_i[..., None, None] - mu_j[..., None, None]) ** 2 * p),
        "cluster_shade": s((i + j - mu_i[..., None, None] - mu_j[..., None, None]) ** 3 * p),
        "cluster_prominence": s((i + j - mu_i[..., None, None] - mu_j[..., None, None]) ** 4 * p),
        "information_correlation_1": (hxy - hxy1) / hx,
        "information_correlation_2": (1 - torch.exp(-2 * (hxy2 - hxy))).clamp(min=0).sqrt(),
    }
    empty = total[..., 0, 0] == 0
    return {k: torch.where(empty, torch.nan, v) for k, v in features.items()}


# -- grey level run lengths -----------------------------------------------------------------

def run_lengths(levels: torch.Tensor, n_levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GLRLMs: (B, Z, 4, Ng, Lmax) per slice and in-plane direction, (B, 13, Ng, Lmax) per 3D
    direction; Lmax is the longest extent of the volume."""
    b, z, y, x = levels.shape
    ng, lmax = n_levels, max(z, y, x)
    batch = torch.arange(b, device=levels.device).view(b, 1, 1, 1)
    slices = torch.arange(z, device=levels.device).view(1, z, 1, 1)
    inside = levels > 0
    per_slice, per_volume = [], []
    for direction in DIRECTIONS_3D:
        back = (-direction[0], -direction[1], -direction[2])
        start = inside & (shifted(levels, back) != levels)  # a run starts where the voxel before differs
        alive = start.clone()
        length = torch.zeros_like(levels)
        for k in range(1, lmax + 1):
            length += alive
            if k == lmax:
                break
            alive &= shifted(levels, direction, k) == levels
            if not alive.any():
                break
        a, r = (levels - 1).clamp(min=0), (length - 1).clamp(min=0)
        if direction[0] == 0:
            index = (((batch * z + slices) * ng + a) * lmax + r)[start]
            m = torch.bincount(index, minlength=b * z * ng * lmax).view(b, z, ng, lmax)
            per_slice.append(m)
            per_volume.append(m.sum(1))
        else:
            index = ((batch * ng + a) * lmax + r)[start]
            per_volume.append(torch.bincount(index, minlength=b * ng * lmax).view(b, ng, lmax))
    return torch.stack(per_slice, 2).to(torch.float64), torch.stack(per_volume, 1).to(torch.float64)


def glrlm_features(counts: torch.Tensor, *, nv: torch.Tensor, **_) -> dict[str, torch.Tensor]:
    """The 16 IBSI GLRLM features of count matrices (..., Ng, Lmax); ``nv``: the voxels behind
    each matrix (for run percentage)."""
    ng, lmax = counts.shape[-2:]
    dev = dict(dtype=counts.dtype, device=counts.device)
    i = torch.arange(1, ng + 1, **dev).view(ng, 1)
    j = torch.arange(1, lmax + 1, **dev).view(1, lmax)
    ns = counts.sum((-1, -2))
    r = counts.sum(-1)  # per grey level
    c = counts.sum(-2)  # per run length

    def s(x):
        return x.sum((-1, -2)) / ns

    p = counts / ns[..., None, None]
    mu_i = (i * p).sum((-1, -2))
    mu_j = (j * p).sum((-1, -2))
    features = {
        "short_runs_emphasis": s(counts / j ** 2),
        "long_runs_emphasis": s(counts * j ** 2),
        "low_grey_level_run_emphasis": s(counts / i ** 2),
        "high_grey_level_run_emphasis": s(counts * i ** 2),
        "short_run_low_grey_level_emphasis": s(counts / (i ** 2 * j ** 2)),
        "short_run_high_grey_level_emphasis": s(counts * i ** 2 / j ** 2),
        "long_run_low_grey_level_emphasis": s(counts * j ** 2 / i ** 2),
        "long_run_high_grey_level_emphasis": s(counts * i ** 2 * j ** 2),
        "grey_level_non_uniformity": (r ** 2).sum(-1) / ns,
        "grey_level_non_uniformity_normalised": (r ** 2).sum(-1) / ns ** 2,
        "run_length_non_uniformity": (c ** 2).sum(-1) / ns,
        "run_length_non_uniformity_normalised": (c ** 2).sum(-1) / ns ** 2,
        "run_percentage": ns / nv,
        "grey_level_variance": ((i - mu_i[..., None, None]) ** 2 * p).sum((-1, -2)),
        "run_length_variance": ((j - mu_j[..., None, None]) ** 2 * p).sum((-1, -2)),
        "run_entropy": -torch.where(p > 0, p * torch.log2(p), 0.0).sum((-1, -2)),
    }
    return {k: torch.where(ns == 0, torch.nan, v) for k, v in features.items()}
