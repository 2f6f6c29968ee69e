"""Morphological features (IBSI 1, 3.1) of a batch of ROIs.

The surface mesh is drawn by marching cubes at level 0.5 (scikit-image, Lewiner) and its convex
hull by Qhull (SciPy), one ROI at a time on the CPU; everything else is batched torch on the
chosen device. Moran's I and Geary's C, O(N²) sums over voxel pairs weighted by inverse
distance, are computed exactly in O(N log N): on a regular grid the weight depends only on the
offset between two voxels, so each double sum is a sum over offsets of weight times an
autocorrelation, and autocorrelations are products of Fourier transforms.

Positions are voxel centres in mm; ``spacing`` is (z, y, x) in mm.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from . import kernels


def fast_length(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: a length FFTs are quick at."""
    while True:
        rest = n
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return n
        n += 1


def _offset_weights(shape: tuple[int, int, int], spacing, device) -> torch.Tensor:
    """1 / distance of each circular offset of a grid of ``shape`` (0 at offset 0)."""
    axes = []
    for n, s in zip(shape, spacing):
        i = torch.arange(n, dtype=torch.float64, device=device)
        axes.append(torch.where(i < (n + 1) // 2, i, i - n) * s)
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    distance = (z ** 2 + y ** 2 + x ** 2).sqrt()
    return torch.where(distance > 0, 1 / distance.clamp(min=1e-300), 0.0)


@functools.lru_cache(maxsize=8)
def _weights_spectrum(size: tuple[int, int, int], spacing: tuple[float, ...], device: str) -> torch.Tensor:
    """The real spectrum of the inverse-distance weights on a grid of ``size``, flattened, scaled
    so that its sum with the products of two spectra is the double sum: the half spectrum
    stands for the whole (every frequency but 0 and Nyquist counted twice), over the number of
    grid points. Kept for the next ROI of the same crop size and spacing."""
    w = torch.fft.rfftn(_offset_weights(size, spacing, device), dim=(0, 1, 2)).real
    twice = torch.full((w.shape[-1],), 2.0, dtype=torch.float64, device=w.device)
    twice[0] = 1
    if size[-1] % 2 == 0:
        twice[-1] = 1
    return (w * twice / math.prod(size)).flatten()


def spatial_autocorrelation(values: torch.Tensor, inside: torch.Tensor, spacing) -> dict[str, torch.Tensor]:
    """Moran's I and Geary's C of the intensities in ``inside``, for a batch (B, Z, Y, X).

    Each double sum over voxel pairs, sum_{k1,k2} w(k2 - k1) a(k1) b(k2), is the sum over
    offsets of w times the cross-correlation of a and b; by Parseval that is
    (1/N) sum_f W(f) conj(A(f)) B(f) over frequencies f, W being real as w is even. Grids are
    zero-padded to at least 2n - 1 along each axis, so no pair wraps around."""
    n = inside.sum((1, 2, 3)).to(torch.float64)
    m = inside.to(torch.float64)
    mean = (values * m).sum((1, 2, 3)) / n
    d = (values - mean[:, None, None, None]) * m
    size = tuple(fast_length(2 * s - 1) for s in d.shape[1:])
    dims = (1, 2, 3)
    w = _weights_spectrum(size, tuple(float(s) for s in spacing), str(d.device))
    fm, fd, fd2 = (torch.view_as_real(torch.fft.rfftn(x, s=size, dim=dims)).flatten(1, 3) for x in (m, d, d ** 2))
    # sums over f of W(f) Re(conj(A(f)) B(f)): the weights of all pairs, of d1 d2 and of d1^2
    total_weight, cross, squared_with_mask = (kernels.spectral_sums if d.device.type == "cpu" else _spectral_sums)(
        fm, fd, fd2, w).unbind(-1)
    squares = (d ** 2).sum(dims)
    differences = 2 * squared_with_mask - 2 * cross  # sum of w (x1 - x2)^2 over pairs
    return {
        "morans_i": n / total_weight * cross / squares,
        "gearys_c": (n - 1) / (2 * total_weight) * differences / squares,
    }


def _spectral_sums(fm: torch.Tensor, fd: torch.Tensor, fd2: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """:func:`medlib.radiomics.kernels.spectral_sums` in whole tensors (devices other than the CPU)."""
    def weighted(a, b):
        return torch.mv((a * b).sum(-1), w)
    return torch.stack([weighted(fm, fm), weighted(fd, fd), weighted(fd2, fm)], -1)


def _ellipsoid_area(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, terms: int = 20) -> torch.Tensor:
    """Surface area of an ellipsoid of semi-axes a ≥ b ≥ c: IBSI's Legendre series to ν = 20,
    with (αβ)^ν P_ν(x) carried by the three-term recurrence so that spheres need no special case."""
    alpha = (1 - b ** 2 / a ** 2).clamp(min=0).sqrt()
    beta = (1 - c ** 2 / a ** 2).clamp(min=0).sqrt()
    u, s = alpha * beta, (alpha ** 2 + beta ** 2) / 2
    previous, current = torch.ones_like(u), s
    series = previous / 1 + current / (1 - 4)
    for nu in range(1, terms):
        previous, current = current, ((2 * nu + 1) * s * current - nu * u ** 2 * previous) / (nu + 1)
        series = series + current / (1 - 4 * (nu + 1) ** 2)
    return 4 * math.pi * a * b * series


def _mesh(mask: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    from skimage.measure import marching_cubes

    vertices, faces, _, _ = marching_cubes(np.pad(mask, 1).astype(np.float32), level=0.5, spacing=tuple(spacing),
                                           method="lewiner")
    return vertices, faces


def _hull(points: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Volume, area and vertices of the convex hull (a flat ROI has no volume: zeros)."""
    from scipy.spatial import ConvexHull, QhullError

    try:
        hull = ConvexHull(points)
    except QhullError:
        return 0.0, 0.0, points
    return hull.volume, hull.area, points[hull.vertices]


def _moments(weight: torch.Tensor, spacing) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sums of ``weight`` (B, Z, Y, X), of weight × voxel centre (mm) and of weight × the
    centre's outer product with itself: (B,), (B, 3), (B, 3, 3). Each product of two axes needs
    only the weights summed over the third, so the volume is read three times, not once per
    moment."""
    b = weight.shape[0]
    axes = [torch.arange(n, dtype=weight.dtype, device=weight.device) * s for n, s in zip(weight.shape[1:], spacing)]
    planes = {(0, 1): weight.sum(3), (0, 2): weight.sum(2), (1, 2): weight.sum(1)}  # two axes kept
    lines = [planes[(0, 1)].sum(2), planes[(0, 1)].sum(1), planes[(0, 2)].sum(1)]  # one axis kept
    total = lines[0].sum(-1)
    first = torch.stack([line @ axis for line, axis in zip(lines, axes)], -1)
    second = torch.empty(b, 3, 3, dtype=weight.dtype, device=weight.device)
    for c in range(3):
        second[:, c, c] = lines[c] @ axes[c] ** 2
    for (c, d), plane in planes.items():
        second[:, c, d] = second[:, d, c] = torch.einsum("bij,i,j->b", plane, axes[c], axes[d])
    return total, first, second


def morphology(morphological: torch.Tensor, inside: torch.Tensor, values: torch.Tensor, spacing,
               population_axes: bool = False) -> dict[str, torch.Tensor]:
    """The IBSI morphological features with reference values, each (B,), but for Moran's I and
    Geary's C (:func:`spatial_autocorrelation`).

    Args:
        morphological: (B, Z, Y, X) bool, the morphological mask (before re-segmentation).
        inside: (B, Z, Y, X) bool, the intensity mask.
        values: (B, Z, Y, X) float64 intensities.
        spacing: (z, y, x) voxel size in mm.
        population_axes: the axis lengths from the population covariance of the voxel
            positions (PyRadiomics), not the sample covariance (IBSI).
    """
    dev = dict(dtype=torch.float64, device=values.device)
    volumes, areas, hull_volumes, hull_areas, diameters, boxes = [], [], [], [], [], []
    for roi in morphological.cpu().numpy():
        vertices, faces = _mesh(roi, spacing)
        corners = torch.from_numpy(vertices[faces]).to(**dev)  # (faces, 3 corners, 3)
        a, b, c = corners.unbind(1)
        volumes.append((a * torch.linalg.cross(b, c)).sum(-1).sum().abs() / 6)
        areas.append(torch.linalg.cross(b - a, c - a).norm(dim=-1).sum() / 2)
        hull_volume, hull_area, hull_points = _hull(vertices)
        hull_volumes.append(hull_volume)
        hull_areas.append(hull_area)
        points = torch.from_numpy(hull_points).to(**dev)
        diameters.append(torch.cdist(points, points).max())
        boxes.append(torch.from_numpy(vertices.max(0) - vertices.min(0)).to(**dev))
    volume, area = torch.stack(volumes), torch.stack(areas)
    box = torch.stack(boxes)
    hull_volume, hull_area = torch.tensor(hull_volumes, **dev), torch.tensor(hull_areas, **dev)

    # voxel centres (mm) of the morphological mask: PCA (sample covariance) and the centre of mass
    nm, first, second = _moments(morphological.to(torch.float64), spacing)
    centre = first / nm[:, None]
    covariance = second / nm[:, None, None] - centre[:, :, None] * centre[:, None, :]
    if not population_axes:  # IBSI: the sample covariance
        covariance = covariance * (nm / (nm - 1).clamp(min=1))[:, None, None]
    least, minor, major = torch.linalg.eigvalsh(covariance).clamp(min=0).unbind(-1)
    total_intensity, first_intensity, _ = _moments(torch.where(inside, values, 0.0), spacing)
    weighted_centre = first_intensity / total_intensity[:, None]
    mean_intensity = total_intensity / inside.sum((1, 2, 3))
    semi = [2 * lam.sqrt() for lam in (major, minor, least)]
    voxel_volume = float(np.prod(spacing))
    compactness_2 = 36 * math.pi * volume ** 2 / area ** 3
    features = {
        "volume": volume,
        "approximate_volume": nm * voxel_volume,
        "surface_area": area,
        "surface_to_volume_ratio": area / volume,
        "compactness_1": volume / (math.sqrt(math.pi) * area ** 1.5),
        "compactness_2": compactness_2,
        "spherical_disproportion": compactness_2 ** (-1 / 3),
        "sphericity": compactness_2 ** (1 / 3),
        "asphericity": compactness_2 ** (-1 / 3) - 1,
        "centre_of_mass_shift": (centre - weighted_centre).norm(dim=-1),
        "maximum_3d_diameter": torch.stack(diameters),
        "major_axis_length": 4 * major.sqrt(),
        "minor_axis_length": 4 * minor.sqrt(),
        "least_axis_length": 4 * least.sqrt(),
        "elongation": (minor / major).sqrt(),
        "flatness": (least / major).sqrt(),
        "volume_density_aabb": volume / box.prod(-1),
        "area_density_aabb": area / (2 * (box[:, 0] * box[:, 1] + box[:, 1] * box[:, 2] + box[:, 2] * box[:, 0])),
        "volume_density_aee": 3 * volume / (4 * math.pi * semi[0] * semi[1] * semi[2]),
        "area_density_aee": area / _ellipsoid_area(*semi),
        "volume_density_convex_hull": volume / hull_volume,
        "area_density_convex_hull": area / hull_area,
        "integrated_intensity": volume * mean_intensity,
    }
    return features
