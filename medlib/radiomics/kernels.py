"""Compiled kernels for the steps that visit voxels or frequencies one by one: zone labelling,
co-occurrences, run lengths and neighbour counts for texture, and the spectral sums of Moran's I
and Geary's C for morphology.

On the CPU they run as machine code (numba, compiled on first use and cached); on any other
device the whole-tensor torch versions in :mod:`medlib.radiomics.zones`,
:mod:`medlib.radiomics.texture`, :mod:`medlib.radiomics.neighbourhood` and
:mod:`medlib.radiomics.morphology` run instead. Both give the same result (``tests``: compared
on random volumes), so each family keeps one code path with a kernel for the CPU and one for
CUDA behind it. The texture kernels take the flat, zero-padded grey levels those modules make:
a step from an ROI voxel in any direction lands inside the array.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit


@njit(cache=True, nogil=True)
def _root(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


@njit(cache=True, nogil=True)
def _components(flat: np.ndarray, voxels: np.ndarray, steps: np.ndarray) -> np.ndarray:
    n = len(voxels)
    position = np.full(len(flat), -1, np.int64)
    for i in range(n):
        position[voxels[i]] = i
    parent = np.arange(n)
    for i in range(n):
        v = voxels[i]
        for step in steps:
            j = position[v + step]
            if j >= 0 and flat[v + step] == flat[v]:
                a, b = _root(parent, i), _root(parent, j)
                if a < b:
                    parent[b] = a
                elif b < a:
                    parent[a] = b
    for i in range(n):
        parent[i] = _root(parent, i)
    return parent


def components(flat: torch.Tensor, voxels: torch.Tensor, steps: list[int]) -> torch.Tensor:
    """For each ROI voxel (flat indices ``voxels`` into the padded ``flat`` levels), the index
    in ``voxels`` of the first voxel of its zone (voxels linked by ``steps`` with the same grey
    level): union-find, each root the smallest index of its set."""
    return torch.from_numpy(_components(flat.numpy(), voxels.numpy(), np.asarray(steps, dtype=np.int64)))


@njit(cache=True, nogil=True)
def _pairs(flat: np.ndarray, voxels: np.ndarray, rows: np.ndarray, steps: np.ndarray, per_direction: int,
           n_levels: int, size: int) -> np.ndarray:
    counts = np.zeros(size, np.int64)
    for d in range(len(steps)):
        step, offset = steps[d], d * per_direction
        for i in range(len(voxels)):
            other = flat[voxels[i] + step]
            if other > 0:
                counts[(rows[i] + offset) * n_levels + other - 1] += 1
    return counts


def pairs(flat: torch.Tensor, voxels: torch.Tensor, rows: torch.Tensor, steps: list[int], per_direction: int,
          n_levels: int, size: int) -> torch.Tensor:
    """Co-occurrence counts, flat (``size``): for each ROI voxel (``voxels`` into the padded
    ``flat`` levels) and each direction d of ``steps``, its neighbour's level counted in row
    ``rows[voxel] + d * per_direction`` of matrices ``n_levels`` wide."""
    return torch.from_numpy(_pairs(flat.numpy(), voxels.numpy(), rows.numpy(), np.asarray(steps, dtype=np.int64),
                                   per_direction, n_levels, size))


@njit(cache=True, nogil=True)
def _runs(flat: np.ndarray, voxels: np.ndarray, rows: np.ndarray, steps: np.ndarray, per_direction: int,
          n_rows: int, bound: int) -> tuple[np.ndarray, int]:
    # by length: the rows of the short runs, nearly all of them, stay in cache, and the pages of
    # lengths that never occur are never touched (zeroed lazily)
    counts = np.zeros((bound, n_rows), np.int64)
    run = np.zeros(len(flat), np.int32)  # the length so far of the run each voxel is in (0 outside)
    longest = 1
    for d in range(len(steps)):
        step, offset = steps[d], d * per_direction
        for i in range(len(voxels)):  # in flat order: the voxel before along a direction comes first
            v = voxels[i]
            grey = flat[v]
            same = flat[v - step] == grey
            length = (run[v - step] + 1) * same + (not same)  # without branches: they would be guesses
            run[v] = length
            counts[length - 1, rows[i] + offset] += flat[v + step] != grey  # the run ends here
            longest = max(longest, length)
    return counts, longest


def runs(flat: torch.Tensor, voxels: torch.Tensor, rows: torch.Tensor, steps: list[int], per_direction: int,
         n_rows: int, bound: int) -> torch.Tensor:
    """Run-length counts (``n_rows``, L), L the longest run: the runs of the ROI voxels
    ``voxels`` (in flat order) of the padded ``flat`` levels along each direction d of
    ``steps`` (each forward in flat order), each counted in its last voxel's row (``rows``)
    plus ``d * per_direction``; ``bound``: no run is longer."""
    if min(steps) <= 0:
        raise ValueError("run lengths follow directions forward in flat order: every step must be positive")
    counts, longest = _runs(flat.numpy(), voxels.numpy(), rows.numpy(), np.asarray(steps, dtype=np.int64),
                            per_direction, n_rows, bound)
    return torch.from_numpy(counts[:longest].T)


@njit(cache=True, nogil=True)
def _neighbours(flat: np.ndarray, voxels: np.ndarray, in_plane: np.ndarray, across: np.ndarray) -> np.ndarray:
    out = np.zeros((6, len(voxels)), np.int64)
    for i in range(len(voxels)):
        v = voxels[i]
        level = flat[v]
        count = total = same = 0
        for row, steps in ((0, in_plane), (3, across)):  # 3D: the in-plane neighbours and the rest
            for step in steps:
                for other in (flat[v + step], flat[v - step]):
                    count += other > 0
                    total += other
                    same += other == level
            out[row, i], out[row + 1, i], out[row + 2, i] = count, total, same
    return out


def neighbours(flat: torch.Tensor, voxels: torch.Tensor, in_plane: list[int], across: list[int]) -> torch.Tensor:
    """For each ROI voxel, over its neighbours in the slice (``in_plane`` steps and their
    opposites) and then over all 26 (``across`` too): how many are in the ROI, the sum of their
    levels and how many share its level; (6, voxels): 2D count, total, same, 3D count, total,
    same."""
    return torch.from_numpy(_neighbours(flat.numpy(), voxels.numpy(), np.asarray(in_plane, dtype=np.int64),
                                        np.asarray(across, dtype=np.int64)))


@njit(cache=True, nogil=True)
def _spectral_sums(fm: np.ndarray, fd: np.ndarray, fd2: np.ndarray, w: np.ndarray) -> np.ndarray:
    out = np.zeros((fm.shape[0], 3))
    for r in range(fm.shape[0]):
        total = cross = squared = 0.0
        for f in range(len(w)):
            m_re, m_im, d_re, d_im = fm[r, f, 0], fm[r, f, 1], fd[r, f, 0], fd[r, f, 1]
            total += w[f] * (m_re * m_re + m_im * m_im)
            cross += w[f] * (d_re * d_re + d_im * d_im)
            squared += w[f] * (fd2[r, f, 0] * m_re + fd2[r, f, 1] * m_im)
        out[r, 0], out[r, 1], out[r, 2] = total, cross, squared
    return out


def spectral_sums(fm: torch.Tensor, fd: torch.Tensor, fd2: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """For spectra (B, F, 2) of the mask, the deviations and their squares (as (re, im) pairs)
    and real weights ``w`` (F,): the sums over f of w Re(conj(A) B) for (A, B) = (M, M), (D, D)
    and (D², M), in one pass over the spectra; (B, 3)."""
    return torch.from_numpy(_spectral_sums(fm.numpy(), fd.numpy(), fd2.numpy(), w.numpy()))
