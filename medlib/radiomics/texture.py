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

from . import kernels
from .table import count_features

AGGREGATIONS = ("2D, averaged", "2D, slice-merged", "2.5D, direction-merged", "2.5D, merged",
                "3D, averaged", "3D, merged")
#: (dz, dy, dx) at Chebyshev distance 1, one of each opposite pair: 4 in-plane, 13 in all.
DIRECTIONS_2D = ((0, 0, 1), (0, 1, -1), (0, 1, 0), (0, 1, 1))
DIRECTIONS_3D = DIRECTIONS_2D + tuple((1, dy, dx) for dy, dx in itertools.product((-1, 0, 1), repeat=2))


def _mean_over(features: dict[str, torch.Tensor], dims: tuple[int, ...]) -> dict[str, torch.Tensor]:
    return {k: v.nanmean(dim=dims) for k, v in features.items()}


def aggregate(matrices_2d: torch.Tensor, matrices_3d: torch.Tensor, features,
              voxels: torch.Tensor, voxels_per_slice: torch.Tensor, only=None) -> dict[str, dict]:
    """Features under every IBSI aggregation (``only``: those of them listed).

    Args:
        matrices_2d: (B, Z, 4, ...) per slice and in-plane direction.
        matrices_3d: (B, 13, ...) per direction over the whole volume.
        features: function from matrices (..., M, N) and ``nv`` (the voxels behind each matrix,
            times the matrices merged into it, broadcastable) to {name: tensor (...)}.
        voxels: (B,) voxels per ROI; ``voxels_per_slice``: (B, Z).
    """
    v, vs = voxels.to(torch.float64), voxels_per_slice.to(torch.float64)
    ways = {
        "2D, averaged": lambda: _mean_over(features(matrices_2d, nv=vs[:, :, None]), (1, 2)),
        "2D, slice-merged": lambda: _mean_over(features(matrices_2d.sum(2), nv=4 * vs), (1,)),
        "2.5D, direction-merged": lambda: _mean_over(features(matrices_2d.sum(1), nv=v[:, None]), (1,)),
        "2.5D, merged": lambda: features(matrices_2d.sum((1, 2)), nv=4 * v),
        "3D, averaged": lambda: _mean_over(features(matrices_3d, nv=v[:, None]), (1,)),
        "3D, merged": lambda: features(matrices_3d.sum(1), nv=13 * v),
    }
    return {name: way() for name, way in ways.items() if only is None or name in only}


# -- grey level co-occurrence ---------------------------------------------------------------

def _flat(levels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int], int]:
    """The batch with a margin of zeros (outside), flattened; its strides and one volume's size.
    Stepping from a voxel of the ROI by one direction never leaves the padded array."""
    padded = torch.nn.functional.pad(levels, (1, 1, 1, 1, 1, 1))
    return padded.flatten(), (padded.shape[2] * padded.shape[3], padded.shape[3], 1), padded[0].numel()


def _steps(strides: tuple[int, int, int], device) -> torch.Tensor:
    """The flat-index step of each of the 13 directions."""
    return torch.tensor([sum(d * s_ for d, s_ in zip(direction, strides)) for direction in DIRECTIONS_3D],
                        device=device)


def _split(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts (B, 13, Z, ...) per direction and slice → per slice and in-plane direction
    (B, Z, 4, ...), and per direction over the volume (B, 13, ...)."""
    per_slice = counts[:, :len(DIRECTIONS_2D)].transpose(1, 2)
    return per_slice.to(torch.float64), counts.sum(2).to(torch.float64)


def _rows(flat: torch.Tensor, voxels: torch.Tensor, strides: tuple[int, int, int], volume: int, z: int,
          n_levels: int) -> torch.Tensor:
    """The row of each ROI voxel in the count matrices (B, 13, Z, Ng, ...) of the first
    direction: its ROI, its slice and its grey level; direction d's is ``d * Z * Ng`` further."""
    return (voxels // volume * len(DIRECTIONS_3D) * z + (voxels % volume) // strides[0] - 1) * n_levels + flat[voxels] - 1


def cooccurrence(levels: torch.Tensor, n_levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric GLCMs at distance 1: (B, Z, 4, Ng, Ng) per slice and in-plane direction,
    and (B, 13, Ng, Ng) per 3D direction. Each ROI voxel is paired with its neighbour by a
    flat-index step, one direction at a time (compiled on the CPU,
    :func:`medlib.radiomics.kernels.pairs`; a gather over the ROI's voxels elsewhere)."""
    b, z = levels.shape[:2]
    ng, nd = n_levels, len(DIRECTIONS_3D)
    flat, strides, volume = _flat(levels)
    voxels = torch.nonzero(flat).flatten()
    rows = _rows(flat, voxels, strides, volume, z, ng)
    steps = _steps(strides, levels.device).tolist()
    counts = (kernels.pairs if flat.device.type == "cpu" else _pairs_in_tensors)(
        flat, voxels, rows, steps, z * ng, ng, b * nd * z * ng * ng)
    m2, m3 = _split(counts.view(b, nd, z, ng, ng))
    return m2 + m2.transpose(-1, -2), m3 + m3.transpose(-1, -2)


def _pairs_in_tensors(flat: torch.Tensor, voxels: torch.Tensor, rows: torch.Tensor, steps: list[int],
                      per_direction: int, n_levels: int, size: int) -> torch.Tensor:
    """:func:`medlib.radiomics.kernels.pairs` in whole tensors (for devices other than the CPU):
    one gather per direction, one count for all."""
    cells = []
    for d, step in enumerate(steps):
        other = flat[voxels + step]
        pair = other > 0
        cells.append((rows[pair] + d * per_direction) * n_levels + other[pair] - 1)
    return torch.bincount(torch.cat(cells), minlength=size)


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
    """GLRLMs: (B, Z, 4, Ng, L) per slice and in-plane direction, (B, 13, Ng, L) per 3D
    direction; L is the longest run found.

    The volume gets a margin of zeros (outside the ROI), so every run ends inside the padded
    array. A run is counted in the slice of its last voxel (the same slice as its first, for
    the in-plane directions the per-slice matrices hold). On the CPU each voxel carries the
    length of its run so far from the voxel before it (compiled,
    :func:`medlib.radiomics.kernels.runs`); elsewhere each run is followed from its first voxel.
    Either way the work is the number of ROI voxels per direction, not voxels times the longest
    run.
    """
    b, z = levels.shape[:2]
    ng, nd = n_levels, len(DIRECTIONS_3D)
    flat, strides, volume = _flat(levels)
    voxels = torch.nonzero(flat).flatten()
    rows = _rows(flat, voxels, strides, volume, z, ng)
    steps = _steps(strides, levels.device).tolist()
    counts = (kernels.runs if flat.device.type == "cpu" else _runs_in_tensors)(
        flat, voxels, rows, steps, z * ng, b * nd * z * ng, max(levels.shape[1:]))
    return _split(counts.reshape(b, nd, z, ng, -1))


def _runs_in_tensors(flat: torch.Tensor, voxels: torch.Tensor, rows: torch.Tensor, steps: list[int],
                     per_direction: int, n_rows: int, bound: int) -> torch.Tensor:
    """:func:`medlib.radiomics.kernels.runs` in whole tensors (for devices other than the CPU):
    each run is followed from its first voxel to its last, only the runs still going taking
    part in a step."""
    row_at = torch.zeros_like(flat)
    row_at[voxels] = rows
    cells, lengths = [], []
    for d, step in enumerate(steps):
        starts = voxels[flat[voxels - step] != flat[voxels]]  # a run starts where the voxel before differs
        grey = flat[starts]
        last = starts.clone()
        current, going = starts, torch.arange(len(starts), device=flat.device)
        while len(going):
            current = current + step
            same = flat[current] == grey[going]
            going, current = going[same], current[same]
            last[going] = current
        cells.append(row_at[last] + d * per_direction)
        lengths.append((last - starts) // step + 1)
    cells, lengths = torch.cat(cells), torch.cat(lengths)
    longest = int(lengths.max()) if len(lengths) else 1
    return torch.bincount(cells * longest + lengths - 1, minlength=n_rows * longest).view(n_rows, longest)


def count_matrix_features(counts: torch.Tensor, j_values: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The features IBSI defines alike for every matrix of counts by grey level i (rows) and a
    count j (columns: run length, dependence, zone size, ...), under generic names: emphases
    (``low_j``, ``high_j``, ``low_i``, ``high_i`` and the four combinations), non-uniformities,
    variances and entropy; ``total`` is the number of counts. NaN where a matrix is empty.
    ``j_values``: the j of each column, where not 1, 2, ... (only the sizes that occur)."""
    ng, nj = counts.shape[-2:]
    dev = dict(dtype=counts.dtype, device=counts.device)
    i = torch.arange(1, ng + 1, **dev).view(ng, 1)
    j = (torch.arange(1, nj + 1, **dev) if j_values is None else j_values).view(1, nj)
    total = counts.sum((-1, -2))
    per_i, per_j = counts.sum(-1), counts.sum(-2)

    def s(x):
        return x.sum((-1, -2)) / total

    p = counts / total[..., None, None]
    mu_i, mu_j = (i * p).sum((-1, -2)), (j * p).sum((-1, -2))
    features = {
        "low_j": s(counts / j ** 2), "high_j": s(counts * j ** 2),
        "low_i": s(counts / i ** 2), "high_i": s(counts * i ** 2),
        "low_j_low_i": s(counts / (i ** 2 * j ** 2)), "low_j_high_i": s(counts * i ** 2 / j ** 2),
        "high_j_low_i": s(counts * j ** 2 / i ** 2), "high_j_high_i": s(counts * i ** 2 * j ** 2),
        "i_non_uniformity": (per_i ** 2).sum(-1) / total,
        "i_non_uniformity_normalised": (per_i ** 2).sum(-1) / total ** 2,
        "j_non_uniformity": (per_j ** 2).sum(-1) / total,
        "j_non_uniformity_normalised": (per_j ** 2).sum(-1) / total ** 2,
        "i_variance": ((i - mu_i[..., None, None]) ** 2 * p).sum((-1, -2)),
        "j_variance": ((j - mu_j[..., None, None]) ** 2 * p).sum((-1, -2)),
        "entropy": -torch.where(p > 0, p * torch.log2(p), 0.0).sum((-1, -2)),
        "energy": (p ** 2).sum((-1, -2)),
        "total": total,
    }
    return {k: torch.where(total == 0, torch.nan, v) for k, v in features.items()}


def glrlm_features(counts: torch.Tensor, *, nv: torch.Tensor, **_) -> dict[str, torch.Tensor]:
    """The 16 IBSI GLRLM features of count matrices (..., Ng, Lmax); ``nv``: the voxels behind
    each matrix (for run percentage)."""
    generic = count_matrix_features(counts)
    features = {name: generic[key] for name, key in count_features("rlm").items()}
    features["run_percentage"] = generic["total"] / nv
    return features
