"""Interpolation to a new voxel spacing (IBSI 1, 2.4), separable, in torch.

The new grid follows IBSI's *align grid centres*: along an axis of n_a voxels of spacing s_a,
the new grid has n_b = ceil(n_a s_a / s_b) voxels of spacing s_b, centred on the old one, and
positions beyond the old grid take the boundary's intensity. Every interpolator used here is
separable and linear in the intensities, so each axis is one matrix (new voxels × old voxels)
and the volume is resampled by three matrix products, on whichever device the tensors are:

- ``nearest``: the nearest old voxel;
- ``linear``: (tri)linear interpolation;
- ``cubic``: cubic B-spline interpolation (the IBSI "tricubic spline"): the spline's
  coefficients come from solving its collocation system once per axis.

Only the rows and columns that the ROI (plus a margin) needs are kept, so a small ROI in a large
image costs little.
"""

from __future__ import annotations

import math

import numpy as np
import torch

INTERPOLATORS = ("nearest", "linear", "cubic")


def _bspline3(t: torch.Tensor) -> torch.Tensor:
    t = t.abs()
    return torch.where(t < 1, 2 / 3 - t ** 2 + t ** 3 / 2, torch.where(t < 2, (2 - t) ** 3 / 6, 0.0))


def axis_matrix(n: int, spacing: float, new_spacing: float, method: str) -> torch.Tensor:
    """The (n_b, n) float64 matrix that interpolates one axis of n voxels at ``spacing`` onto
    the IBSI grid of ``new_spacing``."""
    n_b = max(1, math.ceil(n * spacing / new_spacing - 1e-9))
    step = new_spacing / spacing
    x = 0.5 * (n - 1 - step * (n_b - 1)) + step * torch.arange(n_b, dtype=torch.float64)
    x = x.clamp(0, n - 1)  # beyond the grid: the boundary's intensity
    rows = torch.arange(n_b)
    m = torch.zeros(n_b, n, dtype=torch.float64)
    if method == "nearest":
        m[rows, torch.floor(x + 0.5).long().clamp(max=n - 1)] = 1
    elif method == "linear":
        low = x.floor().long().clamp(max=max(n - 2, 0))
        w = x - low
        m[rows, low] += 1 - w
        m[rows, (low + 1).clamp(max=n - 1)] += w
    elif method == "cubic":
        pad = 12  # the old grid padded with its boundary values, so the spline sees no edge
        k = torch.arange(n + 2 * pad, dtype=torch.float64)
        collocation = _bspline3(k[:, None] - k[None, :])
        extend = torch.zeros(n + 2 * pad, n, dtype=torch.float64)
        extend[torch.arange(n + 2 * pad), (k.long() - pad).clamp(0, n - 1)] = 1
        coefficients = torch.linalg.solve(collocation, extend)  # old samples → spline coefficients
        m = _bspline3((x + pad)[:, None] - k[None, :]) @ coefficients
    else:
        raise ValueError(f"interpolator {method!r}: use one of {', '.join(INTERPOLATORS)}")
    return m


def resample(image: np.ndarray, mask: np.ndarray, box: tuple[slice, slice, slice], spacing, new_spacing,
             interpolator: str = "linear", mask_interpolator: str = "linear", threshold: float = 0.5,
             margin: int = 0, device="cpu"):
    """Image and mask (Z, Y, X) on the new grid, cropped to the ROI and ``margin`` voxels.

    Args:
        image, mask: the whole volumes (only the part the ROI needs is read).
        box: the ROI's bounding box in ``mask``.
        spacing: (z, y, x) in mm; ``new_spacing`` likewise, None for an axis to keep (2D
            interpolation in the slice: ``(None, 2, 2)``).
        threshold: the partial-volume fraction from which an interpolated mask voxel is in.

    Returns:
        the image (float64 tensor), the mask (bool tensor) and the new spacing.
    """
    image_matrices, mask_matrices, reads, spacing_out = [], [], [], []
    for n, s, t, occupied in zip(image.shape, spacing, new_spacing, box):
        t = s if t is None else t
        m_image = axis_matrix(n, s, t, interpolator if t != s else "nearest")
        m_mask = axis_matrix(n, s, t, mask_interpolator if t != s else "nearest")
        # the ROI's old extent along this axis → the new rows that can hold it, with a margin
        rows = torch.nonzero(m_mask[:, occupied].abs().sum(1) > 0).flatten()
        rows = slice(max(int(rows[0]) - margin, 0), min(int(rows[-1]) + margin + 1, m_mask.shape[0]))
        m_image, m_mask = m_image[rows], m_mask[rows]
        columns = torch.nonzero((m_image.abs() > 1e-12).any(0) | (m_mask != 0).any(0)).flatten()
        read = slice(int(columns[0]), int(columns[-1]) + 1)
        image_matrices.append(m_image[:, read].to(device))
        mask_matrices.append(m_mask[:, read].to(device))
        reads.append(read)
        spacing_out.append(t)
    reads = tuple(reads)
    values = torch.from_numpy(np.ascontiguousarray(image[reads], dtype=np.float64)).to(device)
    weights = torch.from_numpy(np.ascontiguousarray(mask[reads], dtype=np.float64)).to(device)
    values, fraction = _apply(image_matrices, values), _apply(mask_matrices, weights)
    return values, fraction >= threshold - 1e-9, tuple(spacing_out)


def _apply(matrices, volume: torch.Tensor) -> torch.Tensor:
    """One matrix product per axis: (new z, z) along z, then y, then x."""
    for axis, m in enumerate(matrices):
        volume = torch.movedim(torch.tensordot(m, volume, dims=([1], [axis])), 0, axis)
    return volume
