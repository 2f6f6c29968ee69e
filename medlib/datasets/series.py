"""DICOM image series in a folder: found by their headers, read lazily as physical volumes.

:func:`find_series` reads every file's header (never its pixels) and groups the images by
Series Instance UID, in order along the slice normal. A :class:`Series` reads one slice at a
time: for uncompressed little-endian files straight from the bytes at the pixel data's
offset, otherwise through pydicom's decoders; the modality rescale (slope, intercept, per
slice) is applied, into the smallest type that holds the result exactly. :meth:`Series.to_xarray`
wraps the volume as a dask array (nothing read until asked) with coordinates in millimetres.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from ..errors import MedlibError

#: Header attributes carried into each series' ``attrs`` (when present).
KEY_ATTRIBUTES = ("Modality", "SeriesDescription", "SeriesNumber", "StudyInstanceUID", "StudyDate",
                  "BodyPartExamined", "Manufacturer", "ManufacturerModelName", "KVP", "ConvolutionKernel",
                  "PatientID", "PatientIdentityRemoved", "FrameOfReferenceUID")
SLICES_PER_CHUNK = 64


class SeriesError(MedlibError):
    """A series cannot be assembled into a volume (mixed sizes, no geometry, ...)."""


@dataclass(frozen=True)
class Slice:
    path: str
    position: tuple[float, float, float]
    slope: float
    intercept: float
    offset: int | None  # where native pixel bytes start (None: decode with pydicom)


@dataclass
class Series:
    """One image series: its slices in order and what is needed to read them."""

    uid: str
    slices: list[Slice]
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm
    orientation: tuple[float, ...]  # ImageOrientationPatient: row then column direction cosines
    stored_dtype: str  # numpy dtype of the stored values
    bits_stored: int
    slice_thickness: float | None
    attrs: dict[str, object] = field(default_factory=dict)

    # -- geometry --------------------------------------------------------------------------

    @property
    def normal(self) -> np.ndarray:
        row, col = np.array(self.orientation[:3]), np.array(self.orientation[3:])
        return np.cross(row, col)

    @property
    def slice_positions(self) -> np.ndarray:
        """Each slice's position along the normal, mm (increasing)."""
        return np.array([s.position for s in self.slices]) @ self.normal

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(slice, row, column) spacing in mm; between slices by their positions."""
        positions = self.slice_positions
        gap = float(np.median(np.diff(positions))) if len(positions) > 1 else (self.slice_thickness or 1.0)
        return (round(gap, 6), *self.pixel_spacing)

    @property
    def affine(self) -> np.ndarray:
        """4×4 matrix from (slice, row, column) indices to patient coordinates (LPS, mm)."""
        row, col = np.array(self.orientation[:3]), np.array(self.orientation[3:])
        dz, dy, dx = self.spacing
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2] = self.normal * dz, col * dy, row * dx
        m[:3, 3] = self.slices[0].position
        return m

    # -- values ----------------------------------------------------------------------------

    @property
    def dtype(self) -> np.dtype:
        """The smallest type that holds every rescaled value exactly."""
        slopes = {s.slope for s in self.slices}
        intercepts = {s.intercept for s in self.slices}
        if slopes != {1.0} or any(i != int(i) for i in intercepts):
            return np.dtype(np.float32)
        stored = np.dtype(self.stored_dtype)
        signed = stored.kind == "i"
        low = -(1 << (self.bits_stored - 1)) if signed else 0
        high = (1 << (self.bits_stored - 1)) - 1 if signed else (1 << self.bits_stored) - 1
        lo, hi = low + min(intercepts), high + max(intercepts)
        for candidate in (np.int16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= lo and hi <= info.max:
                return np.dtype(candidate)
        return np.dtype(np.float64)

    def read_slice(self, index: int) -> np.ndarray:
        """Slice ``index`` (in order), rescaled, shape (rows, columns)."""
        out = np.empty((self.rows, self.columns), self.dtype)
        if self._read_into(index, out):
            return out
        s = self.slices[index]
        if s.offset is not None:
            stored = np.dtype(self.stored_dtype)
            with open(s.path, "rb") as f:
                f.seek(s.offset)
                raw = f.read(self.rows * self.columns * stored.itemsize)
            if len(raw) < self.rows * self.columns * stored.itemsize:
                raise SeriesError(f"{s.path}: the pixel data is cut short; check the dataset with verify()")
            values = np.frombuffer(raw, stored).reshape(self.rows, self.columns)
            values = self._mask(values)
        else:
            values = pydicom.dcmread(s.path).pixel_array
        out = values.astype(self.dtype)  # a writable copy, also of a read-only buffer
        if s.slope != 1.0:
            out *= out.dtype.type(s.slope)
        if s.intercept:
            out += out.dtype.type(s.intercept)
        return out

    def _mask(self, values: np.ndarray) -> np.ndarray:
        """Keep the BitsStored low bits (sign-extended when signed), as pydicom does."""
        unused = values.dtype.itemsize * 8 - self.bits_stored
        if unused <= 0:
            return values
        if values.dtype.kind == "i":
            return (values << unused) >> unused
        return values & values.dtype.type((1 << self.bits_stored) - 1)

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Slices ``start:stop`` as one array (slices, rows, columns)."""
        indices = range(len(self.slices))[start:stop]
        out = np.empty((len(indices), self.rows, self.columns), self.dtype)
        for n, i in enumerate(indices):
            if not self._read_into(i, out[n]):  # straight into the volume where it can
                out[n] = self.read_slice(i)
        return out

    def _read_into(self, index: int, out: np.ndarray) -> bool:
        """Read native slice ``index`` straight into ``out`` when the stored type has the
        output's size (the common CT case: 12 of 16 bits, integer intercept); False if not."""
        s, stored = self.slices[index], np.dtype(self.stored_dtype)
        if s.offset is None or s.slope != 1.0 or stored.itemsize != out.itemsize or out.dtype.kind == "f":
            return False
        raw = out.view(stored)  # the same memory: the chosen output type holds every masked value
        with open(s.path, "rb") as f:
            f.seek(s.offset)
            if f.readinto(memoryview(raw).cast("B")) < raw.nbytes:
                raise SeriesError(f"{s.path}: the pixel data is cut short; check the dataset with verify()")
        unused = stored.itemsize * 8 - self.bits_stored
        if unused > 0 and stored.kind == "i":
            raw <<= unused
            raw >>= unused
        elif unused > 0:
            raw &= stored.type((1 << self.bits_stored) - 1)
        if s.intercept:
            out += out.dtype.type(s.intercept)
        return True

    def to_dask(self):
        """The volume as a dask array, one chunk per :data:`SLICES_PER_CHUNK` slices."""
        import dask.array as da

        return da.from_array(_LazyVolume(self), chunks=(SLICES_PER_CHUNK, self.rows, self.columns),
                             name=f"medlib-series-{self.uid}", asarray=False, fancy=False)

    def to_xarray(self):
        """A lazy ``xarray.Dataset``: ``image`` (z, y, x) with coordinates in mm."""
        import xarray as xr

        dz, dy, dx = self.spacing
        positions = self.slice_positions
        image = xr.DataArray(
            self.to_dask(), dims=("z", "y", "x"),
            coords={"z": positions, "y": np.arange(self.rows) * dy, "x": np.arange(self.columns) * dx},
            attrs={"units": "HU" if self.attrs.get("Modality") == "CT" else "", "long_name": "rescaled pixel value"},
        )
        image.coords["z"].attrs.update(units="mm", long_name="position along the slice normal")
        image.coords["y"].attrs.update(units="mm", long_name="distance along the column direction")
        image.coords["x"].attrs.update(units="mm", long_name="distance along the row direction")
        attrs = {**self.attrs, "SeriesInstanceUID": self.uid, "spacing": list(self.spacing),
                 "orientation": list(self.orientation), "origin": list(self.slices[0].position),
                 "affine": self.affine.tolist()}
        return xr.Dataset({"image": image}, attrs=attrs)


class _LazyVolume:
    """What dask needs to read a series in chunks of slices."""

    def __init__(self, series: Series):
        self.series = series
        self.shape = (len(series.slices), series.rows, series.columns)
        self.dtype = series.dtype
        self.ndim = 3

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        z = key[0] if key else slice(None)
        if isinstance(z, slice) and z.step in (None, 1):
            block = self.series.read(*z.indices(self.shape[0])[:2])
        else:
            block = np.stack([self.series.read_slice(i) for i in range(self.shape[0])[z]])
        return block[(slice(None), *key[1:])]


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ras_affine(affine: np.ndarray) -> np.ndarray:
    """:attr:`Series.affine` (indices (slice, row, column) to LPS mm) as NIfTI and MONAI take it:
    indices (x, y, z), that is (column, row, slice), to RAS mm."""
    return LPS_TO_RAS @ np.asarray(affine, dtype=float)[:, [2, 1, 0, 3]]


def _pixel_offset(f, syntax: UID) -> int | None:
    """The start of native pixel bytes, with ``f`` just before the Pixel Data element, or None."""
    if syntax.is_compressed or not syntax.is_little_endian or syntax.is_deflated:
        return None
    start = f.tell()
    header = f.read(12)
    if len(header) < 8 or struct.unpack("<HH", header[:4]) != (0x7FE0, 0x0010):
        return None
    if syntax.is_implicit_VR:
        return start + 8
    return start + (12 if header[4:6] in (b"OB", b"OW", b"OD", b"OF", b"OL", b"OV", b"UN") else 8)


def _stored_dtype(ds: pydicom.Dataset) -> str:
    bits = int(ds.BitsAllocated)
    if bits not in (8, 16, 32) or int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise SeriesError("only single-frame, single-sample images of 8, 16 or 32 bits are read as series")
    return f"<{'i' if int(ds.PixelRepresentation) else 'u'}{bits // 8}"


def _files(root: Path, skip: Sequence[str]) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime in ns) of every file below ``root``, in a stable order."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith(".") or name in skip:
                continue
            stat = os.stat(os.path.join(dirpath, name))
            out.append((os.path.relpath(os.path.join(dirpath, name), root), stat.st_size, stat.st_mtime_ns))
    return out


def find_series(root: str | os.PathLike[str], skip: Sequence[str] = (), index: str | os.PathLike[str] | None = None
                ) -> list[Series]:
    """Every image series below ``root`` (files that are not DICOM images are passed over).

    Args:
        skip: file names to pass over (the manifest).
        index: a file (outside ``root``) where the headers found are kept; it is used while
            every file keeps its size and modification time, and made again otherwise.

    Raises:
        SeriesError: a series whose slices differ in size, orientation or pixel type.
    """
    root = Path(root)
    files = _files(root, skip)
    if index is not None:
        cached = _read_index(Path(index), root, files)
        if cached is not None:
            return cached
    groups: dict[str, list[tuple[Slice, pydicom.Dataset]]] = {}
    for relative, _, _ in files:
        path = root / relative
        try:
            with open(path, "rb") as f, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(f, stop_before_pixels=True)
                offset = _pixel_offset(f, ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in ds.file_meta else None
        except (InvalidDicomError, OSError, AttributeError):
            continue
        if "SeriesInstanceUID" not in ds or "Rows" not in ds or "ImagePositionPatient" not in ds:
            continue  # not an image with geometry (SR, RT plan, ...)
        item = Slice(str(path), tuple(float(v) for v in ds.ImagePositionPatient),
                     float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0), offset)
        groups.setdefault(str(ds.SeriesInstanceUID), []).append((item, ds))
    found = [_assemble(uid, members) for uid, members in groups.items()]
    if index is not None:
        _write_index(Path(index), root, files, found)
    return found


INDEX_VERSION = 1


def _read_index(index: Path, root: Path, files: list[tuple[str, int, int]]) -> list[Series] | None:
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError):
        return None
    if data.get("version") != INDEX_VERSION or data.get("root") != str(root) or \
            [tuple(f) for f in data.get("files", [])] != files:
        return None
    return [Series(**{**d, "slices": [Slice(**{**s, "position": tuple(s["position"])}) for s in d["slices"]],
                      "pixel_spacing": tuple(d["pixel_spacing"]), "orientation": tuple(d["orientation"])})
            for d in data["series"]]


def _write_index(index: Path, root: Path, files: list[tuple[str, int, int]], found: list[Series]) -> None:
    index.parent.mkdir(parents=True, exist_ok=True)
    tmp = index.with_name(f".{index.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"version": INDEX_VERSION, "root": str(root), "files": files,
                               "series": [asdict(s) for s in found]}))
    tmp.replace(index)


def _assemble(uid: str, members: list[tuple[Slice, pydicom.Dataset]]) -> Series:
    first = members[0][1]
    shape = {(int(ds.Rows), int(ds.Columns)) for _, ds in members}
    orientation = {tuple(round(float(v), 5) for v in ds.ImageOrientationPatient) for _, ds in members
                   if "ImageOrientationPatient" in ds}
    dtypes = {_stored_dtype(ds) for _, ds in members}
    if len(shape) != 1 or len(orientation) != 1 or len(dtypes) != 1:
        raise SeriesError(f"series {uid}: slices differ in size {sorted(shape)}, orientation or pixel type; "
                          "it cannot be stacked into one volume")
    series = Series(
        uid=uid,
        slices=[s for s, _ in members],
        rows=shape.pop()[0], columns=int(first.Columns),
        pixel_spacing=tuple(float(v) for v in first.get("PixelSpacing", (1.0, 1.0))),
        orientation=orientation.pop(),
        stored_dtype=dtypes.pop(),
        bits_stored=int(first.get("BitsStored", first.BitsAllocated)),
        slice_thickness=float(first.SliceThickness) if first.get("SliceThickness") else None,
        attrs={k: _plain(first.get(k)) for k in KEY_ATTRIBUTES if first.get(k) not in (None, "")},
    )
    order = np.argsort(series.slice_positions, kind="stable")
    series.slices = [series.slices[i] for i in order]
    return series


def _plain(value) -> object:
    """A header value as a plain str, int or float (for attrs that netCDF and JSON can hold)."""
    if isinstance(value, (int, float)):
        return value
    return str(value)
