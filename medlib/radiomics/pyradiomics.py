"""PyRadiomics' own image processing, where it is not IBSI's, with SimpleITK as PyRadiomics runs
it: its whole-image normalisation (``normalize``) and its resampling grid
(``resampledPixelSpacing``). ``Settings(conventions="pyradiomics")`` uses them, as a PyRadiomics
parameter file implies."""

from __future__ import annotations

import numpy as np
import torch


def itk_image(array: np.ndarray, spacing):
    """A SimpleITK image of a (Z, Y, X) array of its own type, with ``spacing`` (z, y, x) in mm."""
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(np.ascontiguousarray(array))
    out.SetSpacing(tuple(float(s) for s in reversed(spacing)))  # SimpleITK lists x, y, z
    return out


def normalize_as_pyradiomics(image: np.ndarray, scale: float, outliers: float | None = None) -> np.ndarray:
    """PyRadiomics' ``normalizeImage``: the whole image centred on its mean and divided by its
    standard deviation (SimpleITK's ``Normalize``), clipped at ± ``outliers`` standard deviations
    (its ``removeOutliers``), times ``scale`` (its ``normalizeScale``)."""
    import SimpleITK as sitk

    out = sitk.GetArrayFromImage(sitk.Normalize(sitk.GetImageFromArray(np.ascontiguousarray(image))))
    if outliers is not None:
        out = np.clip(out, -outliers, outliers)
    return out * scale


#: medlib's interpolators → SimpleITK's
SITK_INTERPOLATORS = {"nearest": "sitkNearestNeighbor", "linear": "sitkLinear", "cubic": "sitkBSpline"}


def resample_as_pyradiomics(image: np.ndarray, mask: np.ndarray, spacing, new_spacing, interpolator: str = "cubic",
                            pad: int = 5):
    """Image and mask (Z, Y, X) resampled as PyRadiomics resamples them (its ``resampleImage``),
    with SimpleITK, which it uses: the new grid's corner on the image's corner (not centred as
    IBSI's), only the ROI's bounding box and ``pad`` new voxels around it (PyRadiomics'
    ``padDistance``), an axis along which the ROI is one voxel thick kept; the image with
    ``interpolator`` and cast back to its own type (integers stay integers), the mask with the
    nearest voxel. ``new_spacing`` is (z, y, x), None for an axis to keep.

    Returns:
        the image (float64 tensor), the mask (bool tensor), both cropped, and the new spacing.
    """
    import SimpleITK as sitk

    old = np.array(spacing[::-1], dtype=np.float64)  # x, y, z from here on, as PyRadiomics works
    new = np.array([s if t is None else t for s, t in zip(spacing, new_spacing)][::-1], dtype=np.float64)
    found = np.nonzero(mask)
    low = np.array([int(f.min()) for f in found][::-1])
    size = np.array([int(f.max()) + 1 for f in found][::-1]) - low
    new = np.where(size != 1, new, old)
    if np.allclose(old, new):
        return torch.from_numpy(image.astype(np.float64)), torch.from_numpy(mask.astype(bool)), tuple(spacing)
    ratio = old / new
    lower = np.maximum(np.floor((low - 0.5) * ratio - pad), 0)
    upper = np.minimum(np.ceil((low + size - 0.5) * ratio + pad), np.ceil(np.array(mask.shape[::-1]) * ratio) - 1)
    origin = 0.5 * (new - old) / old + lower / ratio  # a continuous index of the old grid
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputSpacing(tuple(float(s) for s in new))
    resampler.SetSize([int(n) for n in upper - lower + 1])
    resampler.SetOutputOrigin(tuple(float(o) for o in origin * old))
    source = itk_image(image, spacing)
    resampler.SetOutputPixelType(source.GetPixelID())
    resampler.SetInterpolator(getattr(sitk, SITK_INTERPOLATORS[interpolator]))
    values = sitk.GetArrayFromImage(resampler.Execute(source)).astype(np.float64)
    resampler.SetOutputPixelType(sitk.sitkUInt8)
    resampler.SetInterpolator(sitk.sitkNearestNeighbor)
    inside = sitk.GetArrayFromImage(resampler.Execute(itk_image(mask.astype(np.uint8), spacing))) > 0
    return torch.from_numpy(values), torch.from_numpy(inside), tuple(float(s) for s in new[::-1])
