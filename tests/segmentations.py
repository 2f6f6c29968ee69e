"""DICOM SEG objects for the tests, made with highdicom over real CT series."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes


def sphere(shape: tuple[int, int, int], radius: float) -> np.ndarray:
    """A ball in the middle of a (z, y, x) grid."""
    z, y, x = np.indices(shape)
    centre = [(n - 1) / 2 for n in shape]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius ** 2


def write_seg(series: list[Path], mask: np.ndarray, target: Path, label: str = "lesion") -> Path:
    """A binary SEG of ``mask`` (z, y, x, in the slice order of ``series``) on that series."""
    sources = [pydicom.dcmread(p) for p in series]
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label, segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[description],
        series_instance_uid=hd.UID(), series_number=100, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="medhub tests", manufacturer_model_name="sphere", software_versions="1",
        device_serial_number="1")
    target.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(target)
    return target


def write_rtstruct(series: list[Path], contours: dict[int, np.ndarray], target: Path, name: str = "GTV") -> Path:
    """An RT Structure Set with one ROI: on slice ``k`` of ``series`` (in slice order), the closed
    polygon ``contours[k]``, an (n, 2) array of (row, column) pixel coordinates."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

    slices = [pydicom.dcmread(p, stop_before_pixels=True) for p in series]
    first = slices[0]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = RTStructureSetStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = RTStructureSetStorage, meta.MediaStorageSOPInstanceUID, "RTSTRUCT"
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "AccessionNumber",
                    "FrameOfReferenceUID"):
        setattr(ds, keyword, first.get(keyword))
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), 200, 1
    ds.StructureSetLabel = "contours"
    series_item = Dataset()
    series_item.SeriesInstanceUID = first.SeriesInstanceUID
    series_item.ContourImageSequence = Sequence([_reference(s) for s in slices])
    study_item = Dataset()
    study_item.ReferencedSOPClassUID, study_item.ReferencedSOPInstanceUID = "1.2.840.10008.3.1.2.3.1", first.StudyInstanceUID
    study_item.RTReferencedSeriesSequence = Sequence([series_item])
    frame = Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame.RTReferencedStudySequence = Sequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    roi = Dataset()
    roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = 1, name, first.FrameOfReferenceUID
    ds.StructureSetROISequence = Sequence([roi])
    items = []
    for k, points in contours.items():
        s = slices[k]
        origin = np.array([float(v) for v in s.ImagePositionPatient])
        row_dir, col_dir = (np.array([float(v) for v in s.ImageOrientationPatient[i:i + 3]]) for i in (0, 3))
        dr, dc = (float(v) for v in s.PixelSpacing)
        xyz = origin + np.outer(points[:, 1] * dc, row_dir) + np.outer(points[:, 0] * dr, col_dir)
        contour = Dataset()
        contour.ContourGeometricType, contour.NumberOfContourPoints = "CLOSED_PLANAR", len(points)
        contour.ContourData = [round(float(v), 4) for v in xyz.ravel()]
        contour.ContourImageSequence = Sequence([_reference(s)])
        items.append(contour)
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = 1
    roi_contour.ContourSequence = Sequence(items)
    ds.ROIContourSequence = Sequence([roi_contour])
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target


def _reference(image) -> "pydicom.Dataset":
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = image.SOPClassUID, image.SOPInstanceUID
    return item
