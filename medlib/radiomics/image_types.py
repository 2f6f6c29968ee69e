"""PyRadiomics' image types, as PyRadiomics defines them.

A PyRadiomics parameter file's ``imageType`` section names derived images whose definitions are
PyRadiomics' own, not IBSI 2's (:mod:`medlib.radiomics.filters`):

- :class:`RecursiveLoG`: SimpleITK's Laplacian of recursive Gaussian (IIR filters) normalised
  across scales (σ² ∇²G, in mm). IBSI 2's :class:`~medlib.radiomics.filters.LoG` samples the
  kernel in voxel units, σ per axis, truncated at 4σ, without the σ² factor: a different scale,
  and on thick slices a different shape (on PyRadiomics' brain1, 0.78 × 0.78 × 6.5 mm, the two
  responses correlate at 0.48 for σ 1 mm and 0.81 for σ 3 mm).
- :class:`StationaryWavelet`: PyWavelets' stationary transform (``pywt.swtn``, periodic), each
  level the level-1 transform of the previous approximation, odd sizes wrapped by one voxel;
  sub-bands named x, y, z. At level 1 it equals IBSI 2's undecimated
  :class:`~medlib.radiomics.filters.Wavelet` with periodic padding (to 1e-15 of the range on
  brain1); from level 2 they differ (IBSI 2 dilates the kernels à trous; correlations 0.04–0.7
  on brain1 for coif1, db2, db3 and Haar).
- :class:`Square`, :class:`SquareRoot`, :class:`Logarithm`, :class:`Exponential`: voxel-wise,
  rescaled by the image's largest absolute intensity (so they need the whole image).
- :class:`Gradient`: SimpleITK's gradient magnitude (central differences, in mm by default).
- :class:`LBP2D`: scikit-image's local binary patterns in each axial slice.

Each runs with the library PyRadiomics runs (SimpleITK, PyWavelets, scikit-image) or in torch
for the voxel-wise ones, on the CPU, and names its features as PyRadiomics does
(``pyradiomics_name``: ``log-sigma-1-0-mm-3D``, ``wavelet-LLH``, ``square``, ...).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from .filters import Filter, FilterError


@dataclass(frozen=True)
class ImageType(Filter):
    """A PyRadiomics image type: the whole image is derived (its support, or its scale, is the
    image), volume by volume."""

    padding: str = "nearest"  # PyRadiomics' filters bring their own boundary handling

    def reach(self, spacing):
        return None

    @property
    def pyradiomics_name(self) -> str:
        """The prefix PyRadiomics gives the derived image's features."""
        raise NotImplementedError

    @property
    def name(self):
        return self.pyradiomics_name.lower().replace("-", "_")

    def __call__(self, volume, spacing):
        return torch.stack([torch.as_tensor(self.derive(v.cpu().numpy(), spacing), dtype=torch.float64)
                            for v in volume]).to(volume.device)

    def derive(self, image: np.ndarray, spacing) -> np.ndarray:
        """The derived image of one (Z, Y, X) volume."""
        raise NotImplementedError


def _itk(image: np.ndarray, spacing):
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(np.ascontiguousarray(image, dtype=np.float64))
    out.SetSpacing(tuple(float(s) for s in reversed(spacing)))  # SimpleITK lists x, y, z
    return out


@dataclass(frozen=True)
class RecursiveLoG(ImageType):
    """PyRadiomics' LoG: SimpleITK's LaplacianRecursiveGaussianImageFilter, σ in mm,
    normalised across scales."""

    sigma: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.sigma <= 0:
            raise FilterError(f"sigma {self.sigma}: give a positive scale in mm")

    def derive(self, image, spacing):
        import SimpleITK as sitk

        if min(image.shape) < 4 or any(n < math.ceil(self.sigma / s) + 1 for n, s in zip(image.shape, spacing)):
            raise FilterError(f"the image ({'×'.join(map(str, image.shape))} voxels) is too small for a LoG of σ "
                              f"{self.sigma} mm: PyRadiomics needs 4 voxels and σ/spacing + 1 along every axis")
        log = sitk.LaplacianRecursiveGaussianImageFilter()
        log.SetNormalizeAcrossScale(True)
        log.SetSigma(float(self.sigma))
        return sitk.GetArrayFromImage(log.Execute(_itk(image, spacing)))

    @property
    def pyradiomics_name(self):
        return f"log-sigma-{str(float(self.sigma)).replace('.', '-')}-mm-3D"


@dataclass(frozen=True)
class StationaryWavelet(ImageType):
    """PyRadiomics' wavelet: sub-band ``subband`` (L or H along x, y, z) at decomposition
    ``level`` (1: the first level after ``start_level`` levels of approximation) of PyWavelets'
    stationary transform with ``wavelet``."""

    wavelet: str = "coif1"
    subband: str = "LLH"
    level: int = 1
    start_level: int = 0

    def __post_init__(self):
        super().__post_init__()
        import pywt

        if self.wavelet not in pywt.wavelist(kind="discrete"):
            raise FilterError(f"wavelet {self.wavelet!r}: give a discrete PyWavelets family such as coif1, haar, db2")
        if len(self.subband) != 3 or set(self.subband.upper()) - {"L", "H"}:
            raise FilterError(f"subband {self.subband!r}: give L or H for each of x, y, z")
        if self.level < 1 or self.start_level < 0:
            raise FilterError(f"level {self.level}, start_level {self.start_level}: give level 1, 2, ... and a "
                              "start level 0, 1, ...")

    def derive(self, image, spacing):
        digest = hashlib.blake2b(np.ascontiguousarray(image).view(np.uint8), digest_size=16).digest()
        bands = _swt_bands(digest, image, self.wavelet, self.start_level + self.level)
        return bands[self.subband.upper().replace("L", "a").replace("H", "d")]

    @property
    def pyradiomics_name(self):
        return f"wavelet{self.level if self.level > 1 else ''}-{self.subband.upper()}"


_last_bands: dict[tuple, dict[str, np.ndarray]] = {}


def _swt_bands(digest: bytes, image: np.ndarray, wavelet: str, levels: int) -> dict[str, np.ndarray]:
    """Every sub-band of level ``levels`` of PyRadiomics' stationary wavelet transform of
    ``image`` (whose contents hash to ``digest``), kept for the next sub-band of the same image:
    one transform serves all eight."""
    import pywt

    key = (digest, image.shape, image.dtype.str, wavelet, levels)
    if key not in _last_bands:
        shape = image.shape
        data = np.pad(image, [(0, n % 2) for n in shape], mode="wrap")  # pywt.swtn wants even sizes
        axes = (2, 1, 0)  # x, y, z: the sub-band's letters
        for _ in range(levels - 1):
            data = pywt.swtn(data, wavelet, level=1, start_level=0, axes=axes)[0]["a" * 3]
        bands = pywt.swtn(data, wavelet, level=1, start_level=0, axes=axes)[0]
        _last_bands.clear()
        _last_bands[key] = {name: band[tuple(slice(0, n) for n in shape)] for name, band in bands.items()}
    return _last_bands[key]


def _largest(image: np.ndarray) -> float:
    largest = float(np.abs(image).max())
    if largest == 0:
        raise FilterError("the image is 0 everywhere: a PyRadiomics voxel-wise image type has no scale")
    return largest


@dataclass(frozen=True)
class Square(ImageType):
    """(c x)², c = 1 / sqrt(max |x|)."""

    def derive(self, image, spacing):
        return (image / math.sqrt(_largest(image))) ** 2

    @property
    def pyradiomics_name(self):
        return "square"


@dataclass(frozen=True)
class SquareRoot(ImageType):
    """sign(x) sqrt(c |x|), c = max |x|."""

    def derive(self, image, spacing):
        return np.sign(image) * np.sqrt(np.abs(image) * _largest(image))

    @property
    def pyradiomics_name(self):
        return "squareroot"


@dataclass(frozen=True)
class Logarithm(ImageType):
    """sign(x) log(|x| + 1), rescaled to the image's largest absolute intensity."""

    def derive(self, image, spacing):
        out = np.sign(image) * np.log1p(np.abs(image))
        return out * (_largest(image) / _largest(out))

    @property
    def pyradiomics_name(self):
        return "logarithm"


@dataclass(frozen=True)
class Exponential(ImageType):
    """exp(c x), c = log(max |x|) / max |x|."""

    def derive(self, image, spacing):
        largest = _largest(image)
        return np.exp(math.log(largest) / largest * image)

    @property
    def pyradiomics_name(self):
        return "exponential"


@dataclass(frozen=True)
class Gradient(ImageType):
    """SimpleITK's gradient magnitude, in mm (``use_spacing``) or per voxel."""

    use_spacing: bool = True

    def derive(self, image, spacing):
        import SimpleITK as sitk

        gradient = sitk.GradientMagnitudeImageFilter()
        gradient.SetUseImageSpacing(self.use_spacing)
        return sitk.GetArrayFromImage(gradient.Execute(_itk(image, spacing)))

    @property
    def pyradiomics_name(self):
        return "gradient"


@dataclass(frozen=True)
class LBP2D(ImageType):
    """scikit-image's local binary patterns in each axial slice: ``samples`` points on a circle
    of ``radius`` voxels, ``method`` as ``skimage.feature.local_binary_pattern``."""

    radius: float = 1.0
    samples: int = 8
    method: str = "uniform"

    def __post_init__(self):
        super().__post_init__()
        if self.method not in ("default", "ror", "uniform", "nri_uniform", "var"):
            raise FilterError(f"method {self.method!r}: use default, ror, uniform, nri_uniform or var")

    def derive(self, image, spacing):
        from skimage.feature import local_binary_pattern

        if np.array_equal(image, np.round(image)):  # whole numbers, as PyRadiomics passes them (no float warning)
            image = image.astype(np.int64)
        return np.stack([local_binary_pattern(s, P=self.samples, R=self.radius, method=self.method) for s in image])

    @property
    def pyradiomics_name(self):
        return "lbp-2D"
