"""Synthetic but valid DICOM data for demos and tests: no patient data, nothing downloaded.

:func:`write_ct_series` writes a CT Image Storage series of a water cylinder with embedded
spheres of known Hounsfield units, with the identifying attributes a real scanner writes
(patient name and ID, dates, institution, UIDs), so that de-identification and loading
have something real to work on.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

#: (centre x, y, z in voxels as fractions of the volume, radius in mm, HU)
SPHERES = ((0.35, 0.4, 0.5, 12.0, 60.0), (0.65, 0.45, 0.5, 9.0, -500.0), (0.5, 0.65, 0.4, 7.0, 900.0))


def phantom_hu(shape: tuple[int, int, int], spacing: tuple[float, float, float],
               spheres: tuple[tuple[float, float, float, float, float], ...] = SPHERES) -> np.ndarray:
    """A (z, y, x) volume in HU: air, a water cylinder, and ``spheres`` (as :data:`SPHERES`)."""
    nz, ny, nx = shape
    sz, sy, sx = spacing
    z, y, x = np.meshgrid(np.arange(nz) * sz, np.arange(ny) * sy, np.arange(nx) * sx, indexing="ij")
    volume = np.full(shape, -1000.0)
    cy, cx = (ny - 1) * sy / 2, (nx - 1) * sx / 2
    cylinder = (y - cy) ** 2 + (x - cx) ** 2 <= (0.42 * min(ny * sy, nx * sx)) ** 2
    volume[cylinder] = 0.0
    for fx, fy, fz, radius, hu in spheres:
        d2 = (x - fx * nx * sx) ** 2 + (y - fy * ny * sy) ** 2 + (z - fz * nz * sz) ** 2
        volume[d2 <= radius**2] = hu
    return volume


def write_ct_series(
    folder: str | os.PathLike[str],
    *,
    patient_name: str = "Doe^Jane",
    patient_id: str = "PAT-0001",
    shape: tuple[int, int, int] = (16, 64, 64),
    spacing: tuple[float, float, float] = (2.5, 0.8, 0.8),
    study_date: dt.date = dt.date(2024, 3, 14),
    seed: int = 0,
    noise: float = 5.0,
    spheres: tuple[tuple[float, float, float, float, float], ...] = SPHERES,
    scanner: tuple[str, str] = ("medhub", "Phantom CT"),
    kernel: str | None = None,
) -> list[Path]:
    """Write one CT series, one file per slice, and return the paths.

    Args:
        folder: created if missing; files are named ``CT000001.dcm`` … .
        patient_name, patient_id: the identity written into every file.
        shape: (slices, rows, columns).
        spacing: (slice thickness, row spacing, column spacing) in mm.
        study_date: StudyDate / SeriesDate / AcquisitionDate.
        seed: the noise's seed, so that repeated calls give identical files.
        noise: the noise's standard deviation, HU.
        spheres: (centre x, y, z as fractions of the volume, radius mm, HU) of each sphere.
        scanner, kernel: (Manufacturer, ManufacturerModelName) and ConvolutionKernel (None: not written).

    Example:
        >>> import tempfile
        >>> paths = write_ct_series(tempfile.mkdtemp(), shape=(2, 8, 8))
        >>> len(paths)
        2
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    hu = phantom_hu(shape, spacing, spheres) + rng.normal(0.0, noise, shape)
    slope, intercept = 1.0, -1024.0
    pixels = np.clip(np.round((hu - intercept) / slope), 0, 4095).astype(np.uint16)

    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    date = study_date.strftime("%Y%m%d")
    paths = []
    for k in range(shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientName, ds.PatientID = patient_name, patient_id
        ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = "19700101", "F", "054Y"
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "101500"
        ds.AccessionNumber, ds.StudyID = "ACC0001", "1"
        ds.ReferringPhysicianName = "Smith^John"
        ds.InstitutionName, ds.StationName = "Synthetic General Hospital", "CTSCAN01"
        ds.Manufacturer, ds.ManufacturerModelName, ds.DeviceSerialNumber = *scanner, "SN-0001"
        if kernel is not None:
            ds.ConvolutionKernel = kernel
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, k + 1
        ds.StudyDescription, ds.SeriesDescription = "Synthetic phantom", "Axial 2.5 mm"
        ds.BodyPartExamined, ds.KVP = "CHEST", 120
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [round(-(shape[2] - 1) * spacing[2] / 2, 4), round(-(shape[1] - 1) * spacing[1] / 2, 4),
                                   round(k * spacing[0], 4)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness, ds.SliceLocation = spacing[0], round(k * spacing[0], 4)
        ds.PatientPosition, ds.PositionReferenceIndicator, ds.AcquisitionNumber = "HFS", "", 1
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.Rows, ds.Columns = shape[1], shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = pixels[k].tobytes()

        path = folder / f"CT{k + 1:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


#: The scanners of :func:`write_cohort`: (Manufacturer, ManufacturerModelName), ConvolutionKernel.
SCANNERS = ((("medhub", "Phantom CT"), "STANDARD"), (("medhub", "Phantom CT 2"), "SOFT"))


def write_cohort(folder: str | os.PathLike[str], n: int, *, seed: int = 0, prefix: str = "PHANTOM",
                 **options) -> list[Path]:
    """Write ``n`` phantom series into ``folder``/series-001 …, alternately from the two
    :data:`SCANNERS`, their spheres moved by up to 6% of the volume and resized by up to 15% from
    one to the next (drawn from ``seed``); patient IDs ``<prefix>-001`` …; ``options`` as
    :func:`write_ct_series` (shape, spacing, noise). Returns the series' folders."""
    rng = np.random.default_rng(seed)
    folders = []
    for index in range(n):
        spheres = tuple((x + rng.uniform(-0.06, 0.06), y + rng.uniform(-0.06, 0.06), z,
                         radius * rng.uniform(0.85, 1.15), hu) for x, y, z, radius, hu in SPHERES)
        scanner, kernel = SCANNERS[index % len(SCANNERS)]
        folders.append(Path(folder) / f"series-{index + 1:03d}")
        write_ct_series(folders[-1], patient_name=f"Phantom^{index + 1:03d}", patient_id=f"{prefix}-{index + 1:03d}",
                        seed=seed + index, spheres=spheres, scanner=scanner, kernel=kernel, **options)
    return folders
