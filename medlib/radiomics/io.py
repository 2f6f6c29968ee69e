"""Reading images and masks for radiomics (DICOM series, NIfTI, NRRD) and PyRadiomics-style
parameter files.

Arrays come back z-y-x with their spacing (z, y, x) in mm, as ``medlib.datasets`` gives them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .extract import FAMILIES, RadiomicsError, Settings

#: PyRadiomics feature classes → medlib families (first order covers statistics and histogram).
PYRADIOMICS_CLASSES = {"shape": ("morph",), "firstorder": ("stat", "ih"), "glcm": ("cm",), "glrlm": ("rlm",),
                       "glszm": ("szm",), "ngtdm": ("ngt",), "gldm": ("ngl",)}
#: PyRadiomics (SimpleITK) interpolators → medlib's.
PYRADIOMICS_INTERPOLATORS = {"sitkNearestNeighbor": "nearest", "sitkLinear": "linear", "sitkBSpline": "cubic"}


def read_volume(path: str | os.PathLike[str]) -> tuple[np.ndarray, tuple[float, float, float]]:
    """An image or mask: a folder of one DICOM series, a NIfTI file (.nii, .nii.gz) or NRRD."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        from ..datasets.series import find_series

        found = find_series(path)
        if len(found) != 1:
            raise RadiomicsError(f"{path} holds {len(found)} image series; give the folder of one")
        return found[0].read(), found[0].spacing
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        image = nib.load(path)
        zooms = image.header.get_zooms()[:3]
        return np.asarray(image.dataobj).transpose(2, 1, 0), (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    if name.endswith((".nrrd", ".nhdr")):
        import nrrd

        data, header = nrrd.read(str(path))
        directions = header.get("space directions")
        spacing = [float(np.linalg.norm(d)) for d in directions] if directions is not None else [1.0, 1.0, 1.0]
        return data.transpose(2, 1, 0), (spacing[2], spacing[1], spacing[0])
    raise RadiomicsError(f"{path}: give a DICOM series folder, a NIfTI (.nii, .nii.gz) or an NRRD file")


def read_roi(image_path: str | os.PathLike[str], mask_path: str | os.PathLike[str], roi: str | None = None,
             label: int = 1) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """An image, its ROI as a boolean mask on its grid, and its spacing (z, y, x) mm.

    The mask is a label image in any form :func:`read_volume` reads (voxels equal to ``label``),
    or a DICOM SEG or RTSTRUCT file that segments the image (a DICOM series folder): then
    ``roi`` names the segment or ROI (None: the file's only one).
    """
    mask_path = Path(mask_path)
    if mask_path.is_file() and not mask_path.name.lower().endswith((".nii", ".nii.gz", ".nrrd", ".nhdr")):
        from ..datasets.series import find_series
        from .masks import Grid, mask, referenced_series

        if not Path(image_path).is_dir():
            raise RadiomicsError(f"{mask_path} is a DICOM segmentation: give the DICOM series folder it segments "
                                 "as the image")
        found = find_series(image_path)
        if len(found) != 1:
            raise RadiomicsError(f"{image_path} holds {len(found)} image series; give the folder of one")
        series = found[0]
        if referenced_series(mask_path) != series.uid:
            raise RadiomicsError(f"{mask_path.name} segments series {referenced_series(mask_path)}, not the image's "
                                 f"({series.uid})")
        return series.read(), mask(mask_path, Grid.of(series), roi), series.spacing
    if roi is not None:
        raise RadiomicsError(f"roi {roi!r} names a segment of a DICOM SEG or RTSTRUCT; {mask_path.name} is a label "
                             "image (choose its label with the parameter file's 'label')")
    image, spacing = read_volume(image_path)
    labels, mask_spacing = read_volume(mask_path)
    if not np.allclose(spacing, mask_spacing, rtol=1e-3):
        raise RadiomicsError(f"the mask's spacing {mask_spacing} differs from the image's {spacing}; resample it first")
    return image, labels == label, spacing


def settings_from_params(path: str | os.PathLike[str], **overrides) -> tuple[Settings, int]:
    """Settings and the mask label from a PyRadiomics parameter file (YAML), for the settings
    both share: ``setting: {binWidth, binCount, resegmentRange, resegmentMode, label,
    resampledPixelSpacing, interpolator}``, ``featureClass`` and ``imageType: {Original}``. PyRadiomics lists spacings
    x, y, z with 0 for "keep"; its resampling grid starts at the ROI's corner where IBSI's (and
    medlib's) is centred on the image, so resampled values differ slightly.

    Raises:
        RadiomicsError: a setting medlib does not implement (rather than ignoring it).
    """
    import yaml

    params = yaml.safe_load(Path(path).read_text()) or {}
    unknown = sorted(set(params) - {"setting", "featureClass", "imageType", "voxelSetting"})
    if unknown:
        raise RadiomicsError(f"{path}: section(s) {', '.join(unknown)} are not PyRadiomics parameter file sections "
                             "(setting, featureClass, imageType, voxelSetting)")
    image_types = sorted(set(params.get("imageType") or {"Original": {}}) - {"Original"})
    if image_types:
        raise RadiomicsError(f"{path}: image type(s) {', '.join(image_types)} are not read from PyRadiomics parameter "
                             "files yet; compute filtered features with the Python API (Settings(filters=...), "
                             "medlib.radiomics.filters) or remove them")
    if params.get("voxelSetting"):
        raise RadiomicsError(f"{path}: voxel-based (feature map) extraction (voxelSetting) is not implemented by "
                             "medlib; remove the section")
    setting = params.get("setting") or {}
    supported = {"binWidth", "binCount", "resegmentRange", "resegmentMode", "label", "resampledPixelSpacing",
                 "interpolator"}
    unsupported = sorted(set(setting) - supported)
    if unsupported:
        raise RadiomicsError(f"{path}: setting(s) {', '.join(unsupported)} are not implemented by medlib yet; "
                             "remove them or resample/filter beforehand")
    kwargs: dict = {}
    if "binCount" in setting:
        kwargs.update(discretisation="fixed_bin_number", bins=int(setting["binCount"]))
    else:
        kwargs.update(discretisation="fixed_bin_size", bin_width=float(setting.get("binWidth", 25)))
    if setting.get("resegmentMode", "absolute") == "sigma":
        if [float(v) for v in setting.get("resegmentRange", [-3, 3])] != [-3.0, 3.0]:
            raise RadiomicsError(f"{path}: sigma re-segmentation is implemented for [-3, 3] only (IBSI 2.6)")
        kwargs["resegment_outliers"] = True
    elif setting.get("resegmentRange"):
        low, *high = setting["resegmentRange"]
        kwargs["resegment_range"] = (float(low), float(high[0]) if high else float("inf"))
    if setting.get("resampledPixelSpacing"):
        x, y, z = (float(v) or None for v in setting["resampledPixelSpacing"])
        kwargs["resample_spacing"] = (z, y, x)
    interpolator = setting.get("interpolator", "sitkBSpline")
    if interpolator not in PYRADIOMICS_INTERPOLATORS:
        raise RadiomicsError(f"{path}: interpolator {interpolator!r} is not implemented by medlib; use one of "
                             f"{', '.join(PYRADIOMICS_INTERPOLATORS)}")
    kwargs["interpolator"] = PYRADIOMICS_INTERPOLATORS[interpolator]
    classes = params.get("featureClass")
    if classes:
        unknown = sorted(set(classes) - set(PYRADIOMICS_CLASSES))
        if unknown:
            raise RadiomicsError(f"{path}: feature class(es) {', '.join(unknown)} are not implemented by medlib yet "
                                 f"(implemented: {', '.join(PYRADIOMICS_CLASSES)})")
        kwargs["families"] = tuple(f for c in classes for f in PYRADIOMICS_CLASSES[c])
    else:
        kwargs["families"] = FAMILIES
    return Settings(**{**kwargs, **overrides}), int(setting.get("label", 1))
