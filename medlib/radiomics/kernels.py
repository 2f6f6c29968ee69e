"""Compiled kernels for the steps of texture that follow voxels one by one: zone labelling, run
lengths and neighbour counts.

On the CPU they run as machine code (numba, compiled on first use and cached); on any other
device the whole-tensor torch versions in :mod:`medlib.radiomics.zones`,
:mod:`medlib.radiomics.texture` and :mod:`medlib.radiomics.neighbourhood` run instead. Both give the same result (``tests``: compared on
random volumes), so each family keeps one code path with a kernel for the CPU and one for CUDA
behind it. The kernels take the flat, zero-padded grey levels those modules make: a step from
an ROI voxel in any direction lands inside the array.
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
def _runs(flat: np.ndarray, voxels: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    starts = np.empty(len(voxels), np.int64)
    lengths = np.empty(len(voxels), np.int64)
    n = 0
    for v in voxels:
        grey = flat[v]
        if flat[v - step] != grey:  # a run starts where the voxel before differs
            length, current = 1, v + step
            while flat[current] == grey:
                length += 1
                current += step
            starts[n], lengths[n] = v, length
            n += 1
    return starts[:n], lengths[:n]


def runs(flat: torch.Tensor, voxels: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The runs along ``step`` of the ROI voxels ``voxels`` of the padded ``flat`` levels: each
    run's first voxel and its length."""
    starts, lengths = _runs(flat.numpy(), voxels.numpy(), int(step))
    return torch.from_numpy(starts), torch.from_numpy(lengths)


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
