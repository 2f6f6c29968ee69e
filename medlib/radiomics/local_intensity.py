"""Local intensity features (IBSI 1, 3.2): mean intensities in a 1 cm³ sphere.

The sphere holds the voxels whose centres lie within r = (3 / 4π)^(1/3) cm ≈ 6.2 mm of the
centre voxel, in world distances; its mean draws on every image voxel, in the ROI or not, and
leaves out only positions beyond the image. Sphere sums come from one FFT correlation over the
whole batch.
"""

from __future__ import annotations

import math

import torch

RADIUS_MM = 10 * (3 / (4 * math.pi)) ** (1 / 3)


def sphere_margin(spacing) -> tuple[int, int, int]:
    """The sphere's reach in voxels along (z, y, x): the image margin the ROI needs around it."""
    return tuple(int(RADIUS_MM // s) for s in spacing)


def local_intensity(values: torch.Tensor, image: torch.Tensor, inside: torch.Tensor, spacing) -> dict[str, torch.Tensor]:
    """Local and global intensity peak, each (B,).

    Args:
        values: (B, Z, Y, X) intensities, with a margin of :func:`sphere_margin` around the ROI
            where the image has it.
        image: (B, Z, Y, X) bool, which positions are image voxels (not batch padding).
        inside: (B, Z, Y, X) bool, the intensity mask.
    """
    dev = dict(dtype=torch.float64, device=values.device)
    reach = sphere_margin(spacing)
    axes = [torch.arange(-r, r + 1, **dev) * s for r, s in zip(reach, spacing)]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    sphere = ((z ** 2 + y ** 2 + x ** 2).sqrt() <= RADIUS_MM).to(torch.float64)
    shape = [n + 2 * r for n, r in zip(values.shape[1:], reach)]
    kernel = torch.zeros(shape, **dev)
    kernel[:sphere.shape[0], :sphere.shape[1], :sphere.shape[2]] = sphere
    pad = [p for r in reversed(reach) for p in (r, r)]
    present = image.to(torch.float64)
    dims = (-3, -2, -1)
    sphere_spectrum = torch.fft.rfftn(kernel, dim=dims).conj()

    def sphere_sums(a: torch.Tensor) -> torch.Tensor:
        """sum_k kernel(k) a(k + o) for every offset o (circular cross-correlation by FFT): the
        sum of ``a`` over the sphere's box placed at o in the padded frame. The box of the
        sphere centred on voxel v starts at v - reach, which is v in the padded frame; the
        padding keeps anything from wrapping around."""
        padded = torch.nn.functional.pad(a, pad)
        return torch.fft.irfftn(sphere_spectrum * torch.fft.rfftn(padded, dim=dims), s=padded.shape[-3:], dim=dims)

    total, count = sphere_sums(torch.where(image, values, 0.0)), sphere_sums(present)
    crop = tuple(slice(0, n) for n in values.shape[1:])
    mean = (total / count.clamp(min=0.5))[(slice(None), *crop)]
    big = torch.finfo(torch.float64).max
    hottest = torch.where(inside, values, -big).amax((1, 2, 3), keepdim=True)
    at_maximum = inside & (values == hottest)
    return {
        "local_intensity_peak": torch.where(at_maximum, mean, -big).amax((1, 2, 3)),
        "global_intensity_peak": torch.where(inside, mean, -big).amax((1, 2, 3)),
    }
