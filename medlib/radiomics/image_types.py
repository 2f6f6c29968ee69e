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
- :class:`LBP3D`: PyRadiomics' 3D local binary patterns by spherical harmonics on trimesh's
  icosphere, with scipy's cubic spline sampling.

Each runs with the libraries PyRadiomics runs (SimpleITK, PyWavelets, scikit-image, trimesh,
scipy) or in torch for the voxel-wise ones, on the CPU, and names its features as PyRadiomics does
(``pyradiomics_name``: ``log-sigma-1-0-mm-3D``, ``wavelet-LLH``, ``square``, ...).
"""

from __future__ import annotations

import hashlib
import math
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .filters import Filter, FilterError
from .pyradiomics import itk_image


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


def _as_read(image: np.ndarray) -> np.ndarray:
    """``image`` as PyRadiomics holds a file's whole-number intensities: integers (its filters
    then sample, round and warn as they do for the file's type)."""
    return image.astype(np.int64) if np.array_equal(image, np.round(image)) else image


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
        return sitk.GetArrayFromImage(log.Execute(itk_image(image.astype(np.float64), spacing)))

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
        levels = self.start_level + self.level
        bands = _once(("swt", _digest(image), self.wavelet, levels), lambda: _swt_bands(image, self.wavelet, levels))
        return bands[self.subband.upper().replace("L", "a").replace("H", "d")]

    @property
    def pyradiomics_name(self):
        return f"wavelet{self.level if self.level > 1 else ''}-{self.subband.upper()}"


_last: dict[tuple, dict[str, np.ndarray]] = {}
_last_lock = threading.Lock()


def _once(key: tuple, compute) -> dict[str, np.ndarray]:
    """``compute()``, the derived images one transform gives at once (every wavelet sub-band,
    every LBP3D output), kept for the next image type of the same image and parameters (``key``)
    until another is asked for."""
    with _last_lock:
        if key not in _last:
            _last.clear()
            _last[key] = compute()
        return _last[key]


def _digest(image: np.ndarray) -> tuple:
    return (hashlib.blake2b(np.ascontiguousarray(image).view(np.uint8), digest_size=16).digest(), image.shape,
            image.dtype.str)


def _swt_bands(image: np.ndarray, wavelet: str, levels: int) -> dict[str, np.ndarray]:
    """Every sub-band of level ``levels`` of PyRadiomics' stationary wavelet transform of
    ``image``."""
    import pywt

    shape = image.shape
    data = np.pad(image, [(0, n % 2) for n in shape], mode="wrap")  # pywt.swtn wants even sizes
    axes = (2, 1, 0)  # x, y, z: the sub-band's letters
    for _ in range(levels - 1):
        data = pywt.swtn(data, wavelet, level=1, start_level=0, axes=axes)[0]["a" * 3]
    bands = pywt.swtn(data, wavelet, level=1, start_level=0, axes=axes)[0]
    return {name: band[tuple(slice(0, n) for n in shape)] for name, band in bands.items()}


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
        return sitk.GetArrayFromImage(gradient.Execute(itk_image(image.astype(np.float64), spacing)))

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

        image = _as_read(image)
        return np.stack([local_binary_pattern(s, P=self.samples, R=self.radius, method=self.method) for s in image])

    @property
    def pyradiomics_name(self):
        return "lbp-2D"


@dataclass(frozen=True)
class LBP3D(ImageType):
    """PyRadiomics' 3D local binary pattern by spherical harmonics (Banerjee et al., ACCV 2012
    workshops): around each voxel the image is sampled (cubic spline, zeros beyond the image) at
    the vertices of an icosphere of ``radius`` voxels and ``subdivision`` subdivisions, each
    sample binarised against the voxel (1 where it is at least the voxel's value) and expanded
    in spherical harmonics up to degree ``levels`` - 1. ``output`` "m1" ... "m<levels>" is the
    norm of the expansion's degree 0 ... ``levels`` - 1 term over the vertices, "k" the kurtosis
    of the samples. The formulas, the angles given to the harmonics among them, are PyRadiomics'
    own (``getLBP3DImage``), so that the values are PyRadiomics'."""

    levels: int = 2
    radius: float = 1.0
    subdivision: int = 1
    output: str = "m1"

    def __post_init__(self):
        super().__post_init__()
        if self.levels < 1 or self.subdivision < 0 or self.radius <= 0:
            raise FilterError(f"levels {self.levels}, radius {self.radius}, subdivision {self.subdivision}: give "
                              "levels 1, 2, ..., a positive radius and subdivision 0, 1, ...")
        outputs = [f"m{n}" for n in range(1, self.levels + 1)] + ["k"]
        if self.output not in outputs:
            raise FilterError(f"output {self.output!r}: give one of {', '.join(outputs)}")

    def reach(self, spacing):
        # the cubic spline's prefilter is global, but its influence falls by 0.268 a voxel: after
        # 24 voxels below 1e-13 of the intensities
        r = math.ceil(self.radius) + 24
        return (r, r, r)

    def derive(self, image, spacing):
        key = ("lbp3d", _digest(image), self.levels, self.radius, self.subdivision)
        return _once(key, lambda: self._outputs(image))[self.output]

    def _outputs(self, image: np.ndarray) -> dict[str, np.ndarray]:
        from scipy.ndimage import map_coordinates, spline_filter
        from scipy.special import sph_harm_y
        from scipy.stats import kurtosis
        from trimesh.creation import icosphere

        image = _as_read(image)
        vertices = np.asarray(icosphere(self.subdivision, self.radius).vertices)  # PyRadiomics' sphere, in its order
        polar, azimuth = np.arccos(vertices[:, 2] / self.radius), np.arctan2(vertices[:, 1], vertices[:, 0])
        # PyRadiomics calls scipy's former sph_harm(m, n, theta, phi), whose theta is the
        # azimuth, with its polar angle as theta: sph_harm_y(n, m, azimuth, polar) here
        orders = [(n, m) for n in range(self.levels) for m in range(-n, n + 1)]
        harmonics = np.stack([sph_harm_y(n, m, azimuth, polar) for n, m in orders], axis=1)  # (vertices, orders)
        degrees = np.array([n for n, _ in orders])
        flat = image.ravel()
        out = {name: np.empty(image.size) for name in [f"m{n + 1}" for n in range(self.levels)] + ["k"]}
        grid = np.indices(image.shape).reshape(3, -1)
        # map_coordinates(image, ..., order=3) as PyRadiomics calls it, its spline prefilter once
        spline = spline_filter(image, 3, output=np.float64, mode="constant")
        for start in range(0, image.size, 16384):
            points = grid[:, start:start + 16384]
            chunk = slice(start, start + points.shape[1])
            samples = map_coordinates(spline, (points.T[None] + vertices[:, None]).T, output=image.dtype, order=3,
                                      prefilter=False)  # (voxels, vertices)
            with warnings.catch_warnings():  # a flat neighbourhood has no kurtosis: NaN, as PyRadiomics gets
                warnings.simplefilter("ignore", RuntimeWarning)
                out["k"][chunk] = kurtosis(samples, axis=1)
            # PyRadiomics' operations in its order and layout, so that voxels with the same pattern
            # get the same value to the last bit (the maps are discrete: percentiles fall on ties)
            binary = np.greater_equal(samples, flat[chunk, None]).astype(int)
            coefficients = np.multiply(binary[:, :, None], harmonics[None]).sum(axis=1)  # (voxels, orders)
            for n in range(self.levels):
                expansion = np.sum(np.multiply(coefficients[:, None, degrees == n], harmonics[None, :, degrees == n]),
                                   axis=2)
                out[f"m{n + 1}"][chunk] = np.real(np.sqrt(np.sum(expansion ** 2, axis=1)))
        return {name: values.reshape(image.shape) for name, values in out.items()}

    @property
    def pyradiomics_name(self):
        return f"lbp-3D-{self.output}"

