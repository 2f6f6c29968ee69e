"""Convolutional filters for radiomics (IBSI 2), batched in torch on CPU or GPU.

A filter turns an image into a *response map* of the same grid; features are then computed
from the response map inside the ROI (:class:`medlib.radiomics.Settings` ``filters``). Every
filter of the standard is here, with its parameters as the IBSI 2 reference manual defines them
(arXiv 2006.05470), checked against its phase 1 reference response maps and phase 2 reference
feature values (``tests/test_radiomics_filters.py``):

- :class:`Mean` (support in voxels), :class:`LoG` (σ in mm, truncated at ``truncate`` σ),
  :class:`Laws` (kernels such as ``"E5L5S5"``, energy maps), :class:`Gabor` (σ and λ in mm,
  γ, θ), :class:`Wavelet` (separable, undecimated or decimated, any PyWavelets family: Haar,
  Daubechies, Coiflet, ...; sub-bands such as ``"LHL"``, decomposition level),
  :class:`Simoncelli` (non-separable, in the Fourier domain) and :class:`Riesz` (the Riesz
  transform of a LoG or a Simoncelli wavelet).
- ``padding``: ``constant`` (zeros), ``nearest``, ``periodic`` or ``mirror`` (the edge voxel
  repeated: ``c b a | a b c``).
- ``dimensions``: 3 (volumetric) or 2 (each axial slice on its own).
- Rotation invariance (Laws, Gabor, Wavelet) by pooling (``mean`` or ``max``) the responses of
  the filter under the right-hand rotations of the grid (24 in 3D, 4 in 2D), or for Gabor over
  orientations θ (and, in 3D, the three orthogonal planes).

Separable kernels are applied one axis at a time (a 1D convolution each); Gabor's and the Riesz
transform's by FFT of the padded image, Simoncelli's in the Fourier domain of the image itself. Letters of a kernel name follow the standard's
order x, y, z (``"E5L5S5"``: E5 along x, L5 along y, S5 along z). Volumes are (B, Z, Y, X).
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PADDINGS = ("constant", "nearest", "periodic", "mirror")
POOLINGS = ("mean", "max")
#: Laws' 1D kernels (IBSI 2, table 4.1), before normalisation to unit L2 norm.
LAWS_KERNELS = {"L3": (1, 2, 1), "E3": (-1, 0, 1), "S3": (-1, 2, -1),
                "L5": (1, 4, 6, 4, 1), "E5": (-1, -2, 0, 2, 1), "S5": (-1, 0, 2, 0, -1),
                "W5": (-1, 2, 0, -2, 1), "R5": (1, -4, 6, -4, 1)}


class FilterError(ValueError):
    """A filter's parameters that the standard does not define; the message says what to use."""


# --- padding and convolution -------------------------------------------------------------------


def _indices(n: int, before: int, after: int, padding: str) -> torch.Tensor:
    """Source index of each position of an axis of n voxels padded by ``before`` and ``after``;
    for ``constant``, index n stands for a zero."""
    i = torch.arange(-before, n + after)
    if padding == "nearest":
        return i.clamp(0, n - 1)
    if padding == "periodic":
        return i % n
    if padding == "mirror":
        j = i % (2 * n)
        return torch.where(j >= n, 2 * n - 1 - j, j)
    return torch.where((i >= 0) & (i < n), i, n)


def pad(volume: torch.Tensor, axis: int, before: int, after: int, padding: str) -> torch.Tensor:
    """``volume`` padded along ``axis`` (any width, also wider than the axis)."""
    if before == after == 0:
        return volume
    if padding == "constant":
        shape = list(volume.shape)
        shape[axis] = 1
        volume = torch.cat([volume, volume.new_zeros(shape)], axis)
    n = volume.shape[axis] - (padding == "constant")
    return volume.index_select(axis, _indices(n, before, after, padding).to(volume.device))


def convolve1d(volume: torch.Tensor, kernel: torch.Tensor, axis: int, padding: str) -> torch.Tensor:
    """Convolution of (B, Z, Y, X) ``volume`` along ``axis`` (1, 2 or 3) with an odd-length 1D
    kernel centred on its middle entry (as ``scipy.ndimage.convolve1d``)."""
    r = len(kernel) // 2
    padded = pad(volume, axis, r, r, padding)
    shape = [1, 1, 1, 1, 1]
    shape[axis + 1] = len(kernel)
    weight = kernel.flip(0).to(volume).reshape(shape)  # conv3d correlates: flip for a convolution
    return F.conv3d(padded[:, None], weight)[:, 0]


def convolve_fft(volume: torch.Tensor, kernels, axes: tuple[int, ...], padding: str):
    """Convolutions of (B, Z, Y, X) ``volume`` over ``axes`` with each of ``kernels`` (the same
    odd sizes, one per axis, complex allowed), by FFT of the padded volume (transformed once):
    complex (B, Z, Y, X) responses, one per kernel, as they are asked for."""
    kernels = iter(kernels)
    first = next(kernels)
    radii = [k // 2 for k in first.shape]
    for axis, r in zip(axes, radii):
        volume = pad(volume, axis, r, r, padding)
    sizes = [volume.shape[a] for a in axes]
    shape = [1] * volume.ndim
    for axis, size in zip(axes, sizes):
        shape[axis] = size
    image = torch.fft.fftn(volume, dim=axes)
    for kernel in itertools.chain([first], kernels):
        out = torch.fft.ifftn(image * torch.fft.fftn(kernel.to(volume.device), s=sizes).reshape(shape), dim=axes)
        for axis, r, size in zip(axes, radii, sizes):
            out = out.narrow(axis, 2 * r, size - 2 * r)
        yield out


def _odd(kernel) -> torch.Tensor:
    """A 1D kernel as float64, with a zero appended when its length is even (its centre is then
    the entry left of the middle, as the standard's reference implementation aligns it)."""
    kernel = torch.as_tensor(kernel, dtype=torch.float64)
    return torch.cat([kernel, kernel.new_zeros(1)]) if len(kernel) % 2 == 0 else kernel


def _dilate(kernel: torch.Tensor) -> torch.Tensor:
    """The à trous kernel of the next decomposition level: a zero between every two taps."""
    out = kernel.new_zeros(2 * len(kernel) - 1)
    out[::2] = kernel
    return out


# --- rotation invariance ------------------------------------------------------------------------

Separable = tuple  # one 1D kernel (or None) per axis z, y, x; or, with pre-filters, a pair per axis


def _rotations(dimensions: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The right-hand rotations of the grid as (permutation, signs) of the filtered axes: 24 in
    3D, 4 in 2D (signed permutation matrices of determinant +1)."""
    out = []
    for permutation in itertools.permutations(range(dimensions)):
        inversions = sum(a > b for a, b in itertools.combinations(permutation, 2))
        for signs in itertools.product((1, -1), repeat=dimensions):
            if (-1) ** inversions * math.prod(signs) == 1:
                out.append((permutation, signs))
    return out


def _rotated_sets(kernels: Separable, dimensions: int) -> list[Separable]:
    """The distinct separable kernel sets a rotation of the grid turns ``kernels`` into. Each
    entry of ``kernels`` is a tuple of 1D kernels (filter, and pre-filter where there is one) for
    axes z, y, x; a rotation moves entry i to axis permutation[i], flipped where its sign is -1.
    Averaging over the distinct sets equals averaging over all rotations (each set arises equally
    often)."""
    axes = kernels[-dimensions:]
    found: dict[tuple, Separable] = {}
    for permutation, signs in _rotations(dimensions):
        moved = [None] * dimensions
        for i, (target, sign) in enumerate(zip(permutation, signs)):
            moved[target] = tuple(k.flip(0) if sign < 0 else k for k in axes[i])
        key = tuple(tuple(k.tolist()) for entry in moved for k in entry)
        found.setdefault(key, tuple([None] * (3 - dimensions) + moved))
    return list(found.values())


def _pool(responses, pooling: str) -> torch.Tensor:
    pooled, n = None, 0
    for response in responses:
        n += 1
        if pooled is None:
            pooled = response
        elif pooling == "max":
            pooled = torch.maximum(pooled, response)
        else:
            pooled = pooled + response
    return pooled / n if pooling == "mean" else pooled


# --- the filters --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Filter:
    """What every filter has.

    Attributes:
        padding: how the image is extended beyond its edges: constant (zeros), nearest,
            periodic or mirror.
        dimensions: 3 (volumetric filter) or 2 (each axial slice on its own).
    """

    padding: str = "mirror"
    dimensions: int = 3

    def __post_init__(self):
        if self.padding not in PADDINGS:
            raise FilterError(f"padding {self.padding!r}: use one of {', '.join(PADDINGS)}")
        if self.dimensions not in (2, 3):
            raise FilterError(f"dimensions {self.dimensions!r}: use 3 (volumetric) or 2 (slice by slice)")
        pooling = getattr(self, "pooling", None)
        if pooling is not None and pooling not in POOLINGS:
            raise FilterError(f"pooling {pooling!r}: use one of {', '.join(POOLINGS)}")

    @property
    def axes(self) -> tuple[int, ...]:
        """The axes of a (B, Z, Y, X) volume the filter works along."""
        return (1, 2, 3) if self.dimensions == 3 else (2, 3)

    def reach(self, spacing) -> tuple[int, int, int] | None:
        """How many voxels beyond a position (z, y, x) its response depends on; None: the whole
        image (the filter must see all of it)."""
        return None

    def __call__(self, volume: torch.Tensor, spacing) -> torch.Tensor:
        """The response map of (B, Z, Y, X) float64 ``volume`` with voxels of ``spacing`` (z, y, x) mm."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        """The response map's prefix in feature names, e.g. ``log_s1.5_3d``."""
        raise NotImplementedError

    def _suffix(self) -> str:
        return f"{self.dimensions}d"

    def _separable(self, volume: torch.Tensor, kernels: Separable) -> torch.Tensor:
        for axis, kernel in zip((1, 2, 3), kernels):
            if kernel is not None:
                volume = convolve1d(volume, kernel, axis, self.padding)
        return volume


def _number(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class Mean(Filter):
    """The mean filter (IBSI 2: S60F) over ``support`` voxels along each filtered axis."""

    support: int = 5

    def __post_init__(self):
        super().__post_init__()
        if self.support < 1 or self.support % 2 == 0:
            raise FilterError(f"support {self.support}: give an odd number of voxels (3, 5, ...)")

    def reach(self, spacing):
        r = self.support // 2
        return (r if self.dimensions == 3 else 0, r, r)

    def __call__(self, volume, spacing):
        kernel = torch.full((self.support,), 1 / self.support, dtype=torch.float64)
        return self._separable(volume, (kernel if self.dimensions == 3 else None, kernel, kernel))

    @property
    def name(self):
        return f"mean_d{self.support}_{self._suffix()}"


@dataclass(frozen=True)
class LoG(Filter):
    """The Laplacian of Gaussian (IBSI 2: L6PA): σ in mm, the kernel truncated at ``truncate``
    σ. The kernel is the sum, over the filtered axes, of a Gaussian's second derivative along
    that axis times Gaussians along the others, in voxel units, so it is applied as separable
    convolutions."""

    sigma: float = 1.0
    truncate: float = 4.0

    def __post_init__(self):
        super().__post_init__()
        if self.sigma <= 0:
            raise FilterError(f"sigma {self.sigma}: give a positive scale in mm")

    def _sigmas(self, spacing) -> list[float]:
        return [self.sigma / s for s in spacing]

    def reach(self, spacing):
        radii = [int(math.floor(self.truncate * s + 0.5)) for s in self._sigmas(spacing)]
        if self.dimensions == 2:
            radii[0] = 0
        return tuple(radii)

    def _terms(self, spacing) -> list[list[torch.Tensor | None]]:
        """The kernel as a sum of separable terms: per filtered axis, 1D kernels for z, y, x."""
        gaussians, seconds = [], []
        for sigma, r in zip(self._sigmas(spacing), self.reach(spacing)):
            x = torch.arange(-r, r + 1, dtype=torch.float64)
            g = torch.exp(-x ** 2 / (2 * sigma ** 2)) / (math.sqrt(2 * math.pi) * sigma)
            gaussians.append(g)
            seconds.append((x ** 2 / sigma ** 2 - 1) / sigma ** 2 * g)
        filtered = range(3) if self.dimensions == 3 else range(1, 3)
        return [[None if a not in filtered else (seconds[a] if a == axis else gaussians[a]) for a in range(3)]
                for axis in filtered]

    def kernel(self, spacing) -> torch.Tensor:
        """The dense kernel over the filtered axes."""
        out = 0
        for term in self._terms(spacing):
            factors = [k for k in term if k is not None]
            out = out + math.prod(f.reshape([-1 if i == n else 1 for i in range(len(factors))])
                                  for n, f in enumerate(factors))
        return out

    def __call__(self, volume, spacing):
        return sum(self._separable(volume, term) for term in self._terms(spacing))

    @property
    def name(self):
        return f"log_s{_number(self.sigma)}_{self._suffix()}"


@dataclass(frozen=True)
class Laws(Filter):
    """Laws' kernels (IBSI 2: JTXT), e.g. ``"E5L5S5"`` (x, y, z), normalised to unit L2 norm;
    with ``energy_distance`` δ, the energy map: the mean of the absolute response over a
    (2δ + 1) neighbourhood. Rotation invariance pools over the grid's rotations before the
    energy is taken."""

    kernels: str = "L5E5E5"
    energy_distance: int | None = None
    rotation_invariant: bool = False
    pooling: str = "max"

    def __post_init__(self):
        super().__post_init__()
        names = [self.kernels[i:i + 2].upper() for i in range(0, len(self.kernels), 2)]
        if len(names) != self.dimensions or any(n not in LAWS_KERNELS for n in names):
            raise FilterError(f"Laws kernels {self.kernels!r}: give {self.dimensions} of "
                              f"{', '.join(LAWS_KERNELS)} in the order x, y{', z' if self.dimensions == 3 else ''}")

    def _kernels(self) -> Separable:
        names = [self.kernels[i:i + 2].upper() for i in range(0, len(self.kernels), 2)]
        kernels = []
        for n in names:
            k = torch.tensor(LAWS_KERNELS[n], dtype=torch.float64)
            kernels.append((k / k.norm(),))
        return tuple(reversed(kernels))  # x, y, z → z, y, x

    def reach(self, spacing):
        r = max(len(k) for k in LAWS_KERNELS.values()) // 2 + (self.energy_distance or 0)
        return (r if self.dimensions == 3 else 0, r, r)

    def __call__(self, volume, spacing):
        kernels = self._kernels()
        sets = _rotated_sets(kernels, self.dimensions) if self.rotation_invariant else [
            (None,) * (3 - self.dimensions) + kernels]
        response = _pool((self._separable(volume, [k and k[0] for k in s]) for s in sets), self.pooling)
        if self.energy_distance is None:
            return response
        return Mean(support=2 * self.energy_distance + 1, padding=self.padding,
                    dimensions=self.dimensions)(response.abs(), spacing)

    @property
    def name(self):
        energy = f"_energy_d{self.energy_distance}" if self.energy_distance is not None else ""
        invariant = f"_invariant_{self.pooling}" if self.rotation_invariant else ""
        return f"laws_{self.kernels.lower()}{energy}{invariant}_{self._suffix()}"


@dataclass(frozen=True)
class Gabor(Filter):
    """The Gabor filter (IBSI 2: Q88H) in the image plane: σ and wavelength λ in mm, spatial
    aspect ratio γ, orientation θ in degrees; the response is the modulus. With
    ``theta_step``, orientations θ, θ + step, ... below 360° are pooled; in 3D the three
    orthogonal planes are pooled as well (rotation invariance). The kernel is truncated where its
    Gaussian envelope falls below ``truncate`` standard deviations (σ along the wave, σ/γ
    across it) and applied by FFT, the padded image transformed once for all orientations."""

    sigma: float = 5.0
    wavelength: float = 2.0
    gamma: float = 1.0
    theta: float = 0.0
    theta_step: float | None = None
    pooling: str = "mean"
    truncate: float = 4.0

    def __post_init__(self):
        super().__post_init__()
        if min(self.sigma, self.wavelength, self.gamma) <= 0:
            raise FilterError("sigma, wavelength and gamma must be positive")
        if self.theta_step is not None and self.theta_step <= 0:
            raise FilterError(f"theta_step {self.theta_step}: give a positive step in degrees, or None")

    def _planes(self) -> list[tuple[int, int]]:
        if self.theta_step is not None and self.dimensions == 3:
            return [(2, 3), (1, 3), (1, 2)]
        return [(2, 3)]

    def _thetas(self) -> list[float]:
        if self.theta_step is None:
            return [self.theta]
        return [self.theta + k * self.theta_step for k in range(math.ceil((360 - 1e-9) / self.theta_step))]

    def _radius(self, plane, spacing) -> int:
        return math.ceil(self.truncate * self.sigma / min(spacing[a - 1] for a in plane) * max(1.0, 1 / self.gamma))

    def reach(self, spacing):
        reach = [0, 0, 0]
        for plane in self._planes():
            for axis in plane:
                reach[axis - 1] = max(reach[axis - 1], self._radius(plane, spacing))
        return tuple(reach)

    def _kernel(self, radius: int, spacing: float, theta: float) -> torch.Tensor:
        sigma, wavelength = self.sigma / spacing, self.wavelength / spacing
        x = torch.arange(-radius, radius + 1, dtype=torch.float64)
        y, x = torch.meshgrid(x, x, indexing="ij")
        t = math.radians(theta)
        yr = -math.cos(t) * y + math.sin(t) * x
        xr = math.sin(t) * y + math.cos(t) * x
        return torch.exp(torch.complex(-(xr ** 2 + self.gamma ** 2 * yr ** 2) / (2 * sigma ** 2),
                                       2 * math.pi * xr / wavelength))

    def __call__(self, volume, spacing):
        def responses():
            for plane in self._planes():
                in_plane, radius = max(spacing[a - 1] for a in plane), self._radius(plane, spacing)
                kernels = (self._kernel(radius, in_plane, theta) for theta in self._thetas())
                for response in convolve_fft(volume, kernels, plane, self.padding):
                    yield response.abs()
        return _pool(responses(), self.pooling)

    @property
    def name(self):
        orientation = (f"_t{_number(self.theta)}" if self.theta_step is None
                       else f"_invariant_{self.pooling}_step{_number(self.theta_step)}")
        return (f"gabor_s{_number(self.sigma)}_l{_number(self.wavelength)}_g{_number(self.gamma)}"
                f"{orientation}_{self._suffix()}")


@dataclass(frozen=True)
class Wavelet(Filter):
    """A separable wavelet, any PyWavelets family (``haar``, ``db2``, ``coif1``, ...):
    ``subband`` picks the low (L) or high (H) pass filter along x, y (and z), e.g. ``"LHL"``; at
    ``level`` n > 1 the image is first low-passed along every axis n - 1 times. Rotation invariance
    pools over the grid's rotations.

    Undecimated (stationary, à trous: the kernels dilated by a zero between taps at each level) as
    IBSI 2 uses it, or ``decimated``: the coefficients of the decimated transform are those of the
    undecimated one at every 2^n-th voxel from the image's first (with periodic padding they are
    PyWavelets' ``wavedecn(mode="periodization")`` coefficients), and each is held over its
    2^n-voxel block so that the response map keeps the image's grid. A decimated map is anchored
    at the image's first voxel, so it is always computed on the whole image."""

    wavelet: str = "haar"
    subband: str = "LLH"
    level: int = 1
    rotation_invariant: bool = False
    pooling: str = "mean"
    decimated: bool = False

    def __post_init__(self):
        super().__post_init__()
        if len(self.subband) != self.dimensions or set(self.subband.upper()) - {"L", "H"}:
            raise FilterError(f"subband {self.subband!r}: give L or H for each of x, y"
                              f"{', z' if self.dimensions == 3 else ''}")
        if self.level < 1:
            raise FilterError(f"level {self.level}: give 1, 2, ...")
        self._bank()

    def _bank(self):
        import pywt

        try:
            bank = pywt.Wavelet(self.wavelet)
        except ValueError:
            raise FilterError(f"wavelet {self.wavelet!r}: give a discrete PyWavelets family such as haar, db2, "
                              "coif1 (pywt.wavelist(kind='discrete'))") from None
        return _odd(bank.dec_lo), _odd(bank.dec_hi)

    def reach(self, spacing):
        if self.decimated:
            return None
        low, _ = self._bank()
        r = (len(low) // 2) * (2 ** self.level - 1)
        return (r if self.dimensions == 3 else 0, r, r)

    def __call__(self, volume, spacing):
        low, high = self._bank()
        kernels = tuple((high if letter == "H" else low, low) for letter in reversed(self.subband.upper()))
        sets = _rotated_sets(kernels, self.dimensions) if self.rotation_invariant else [
            (None,) * (3 - self.dimensions) + kernels]

        def responses():
            for s in sets:
                response = volume
                for level in range(1, self.level + 1):
                    last = level == self.level
                    response = self._separable(response, [k and k[0 if last else 1] for k in s])
                    s = tuple(k and tuple(_dilate(f) for f in k) for k in s)
                yield response
        pooled = _pool(responses(), self.pooling)
        if self.decimated:
            block = 2 ** self.level
            for axis in self.axes:
                n = pooled.shape[axis]
                held = torch.arange(n, device=pooled.device) // block * block
                pooled = pooled.index_select(axis, held)
        return pooled

    @property
    def name(self):
        invariant = f"_invariant_{self.pooling}" if self.rotation_invariant else ""
        decimated = "_decimated" if self.decimated else ""
        return (f"wavelet_{self.wavelet}_{self.subband.lower()}_level{self.level}{decimated}{invariant}"
                f"_{self._suffix()}")


@dataclass(frozen=True)
class Simoncelli(Filter):
    """The non-separable Simoncelli wavelet (IBSI 2: PRT7), isotropic, defined in the Fourier
    domain on the image's own grid (so periodic at its edges): at ``level`` n the band between
    ``1/2^(n+1)`` and ``1/2^(n-1)`` of the highest frequency, with a cosine of the log-frequency."""

    level: int = 1
    padding: str = "periodic"

    def __post_init__(self):
        super().__post_init__()
        if self.padding != "periodic":
            raise FilterError("the Simoncelli wavelet is applied in the Fourier domain, which is periodic: "
                              "use padding='periodic'")
        if self.level < 1:
            raise FilterError(f"level {self.level}: give 1, 2, ...")

    def transfer(self, sizes) -> torch.Tensor:
        """The wavelet's spectrum on a grid of ``sizes`` (the filtered axes), in FFT order."""
        grids = [(torch.arange(n, dtype=torch.float64) - (n - 1) / 2) / max((n - 1) / 2, 0.5) for n in sizes]
        distance = torch.sqrt(sum(g ** 2 for g in torch.meshgrid(*grids, indexing="ij")))
        top = 1 / 2 ** (self.level - 1)
        band = (distance >= top / 4) & (distance <= top)
        response = torch.where(band, torch.cos(math.pi / 2 * torch.log2((2 * distance / top).clamp(min=1e-300))), 0)
        return torch.fft.ifftshift(response)

    def __call__(self, volume, spacing):
        axes = self.axes
        shape = [1] * volume.ndim
        for axis in axes:
            shape[axis] = volume.shape[axis]
        transfer = self.transfer([volume.shape[a] for a in axes]).to(volume.device).reshape(shape)
        return torch.fft.ifftn(torch.fft.fftn(volume, dim=axes) * transfer, dim=axes).real

    @property
    def name(self):
        return f"simoncelli_level{self.level}_{self._suffix()}"


@dataclass(frozen=True)
class Riesz(Filter):
    """The Riesz transform (IBSI 2, 4.8) of a Laplacian of Gaussian or a Simoncelli wavelet
    (``of``): that filter's spectrum multiplied by
    ``(-i)^L sqrt(L! / (l_x! l_y! l_z!)) prod(ω_a^l_a) / |ω|^L`` with ``order`` (l_x, l_y[, l_z])
    and L their sum: a derivative of that order along the axes, normalised so that it does not
    change the scale. The response is the real part; padding and dimensions are those of ``of``."""

    of: LoG | Simoncelli = LoG()
    order: tuple[int, ...] = (1, 0, 0)

    def __post_init__(self):
        if not isinstance(self.of, LoG | Simoncelli):
            raise FilterError("the Riesz transform is implemented for a LoG filter or a Simoncelli wavelet: "
                              "Riesz(of=LoG(sigma=...), ...) or Riesz(of=Simoncelli(level=...), ...)")
        object.__setattr__(self, "padding", self.of.padding)
        object.__setattr__(self, "dimensions", self.of.dimensions)
        super().__post_init__()
        if len(self.order) != self.dimensions or min(self.order) < 0 or not sum(self.order):
            raise FilterError(f"order {self.order}: give {self.dimensions} orders (x, y"
                              f"{', z' if self.dimensions == 3 else ''}), none negative, not all 0")

    def reach(self, spacing):
        return None  # the Riesz kernel decays slowly: the filter sees the whole image

    def transfer(self, sizes) -> torch.Tensor:
        """The Riesz transform's spectrum on the DFT frequencies of a grid of ``sizes`` (the
        filtered axes), in FFT order; 0 at the zero frequency."""
        grids = torch.meshgrid(*[torch.fft.fftfreq(n, dtype=torch.float64) for n in sizes], indexing="ij")
        order = tuple(reversed(self.order))  # x, y, z → the grid's z, y, x
        total = sum(order)
        gain = (-1j) ** total * math.sqrt(math.factorial(total) / math.prod(math.factorial(o) for o in order))
        norm = torch.sqrt(sum(g ** 2 for g in grids))
        transfer = gain * math.prod(g ** o for g, o in zip(grids, order)) / norm.clamp(min=1e-300) ** total
        return torch.where(norm > 0, transfer, 0)

    def __call__(self, volume, spacing):
        axes = self.axes
        kernel = self.of.kernel(spacing) if isinstance(self.of, LoG) else None
        radii = [k // 2 for k in kernel.shape] if kernel is not None else [0] * len(axes)
        padded = volume
        for axis, r in zip(axes, radii):
            padded = pad(padded, axis, r, r, self.padding)
        sizes = [padded.shape[a] for a in axes]
        of = torch.fft.fftn(kernel, s=sizes) if kernel is not None else self.of.transfer(sizes)
        shape = [1] * volume.ndim
        for axis, size in zip(axes, sizes):
            shape[axis] = size
        spectrum = (of * self.transfer(sizes)).to(volume.device).reshape(shape)
        out = torch.fft.ifftn(torch.fft.fftn(padded, dim=axes) * spectrum, dim=axes)
        for axis, r, size in zip(axes, radii, sizes):
            out = out.narrow(axis, 2 * r, size - 2 * r)
        return out.real

    @property
    def name(self):
        return f"riesz{''.join(map(str, self.order))}_{self.of.name}"



#: The filters by name, as :func:`parse` reads them.
FILTERS = {f.__name__: f for f in (Mean, LoG, Laws, Gabor, Wavelet, Simoncelli, Riesz)}


def parse(text: str) -> Filter:
    """A filter from its Python form, as the command line takes it: a call of one of
    ``FILTERS`` with keyword arguments that are literals or filters, e.g.
    ``"LoG(sigma=3, padding='mirror')"`` or ``"Riesz(of=Simoncelli(level=1), order=(0, 2, 0))"``.
    Nothing is evaluated but the filters' constructors."""

    def build(node: ast.expr) -> Filter:
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FILTERS):
            raise FilterError(f"{text!r}: give a filter as Name(key=value, ...), Name one of {', '.join(FILTERS)}")
        cls = FILTERS[node.func.id]
        fields = [f.name for f in dataclasses.fields(cls)]
        if node.args:
            raise FilterError(f"{text!r}: give {cls.__name__}'s parameters by name ({', '.join(fields)})")
        unknown = [k.arg for k in node.keywords if k.arg not in fields]
        if unknown:
            raise FilterError(f"{text!r}: {cls.__name__} has no parameter {', '.join(map(str, unknown))}; its "
                              f"parameters: {', '.join(fields)}")
        return cls(**{k.arg: build(k.value) if isinstance(k.value, ast.Call) else _literal(k.value)
                      for k in node.keywords})

    def _literal(node: ast.expr):
        try:
            return ast.literal_eval(node)
        except ValueError:
            raise FilterError(f"{text!r}: {ast.unparse(node)} is not a number, string, tuple or filter") from None

    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise FilterError(f"{text!r}: give a filter as Name(key=value, ...), e.g. \"LoG(sigma=3)\"") from None
    return build(tree.body)
