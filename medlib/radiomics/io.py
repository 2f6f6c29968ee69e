"""Reading images and masks for radiomics (DICOM series, NIfTI, NRRD) and PyRadiomics-style
parameter files.

Arrays come back z-y-x with their spacing (z, y, x) in mm, as ``medlib.datasets`` gives them.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np

from .extract import FAMILIES, RadiomicsError, Settings, pyradiomics_table
from .pyradiomics import SITK_INTERPOLATORS

#: PyRadiomics feature classes → medlib families (first order covers statistics and histogram).
PYRADIOMICS_CLASSES = {"shape": ("morph",), "firstorder": ("stat", "ih"), "glcm": ("cm",), "glrlm": ("rlm",),
                       "glszm": ("szm",), "ngtdm": ("ngt",), "gldm": ("ngl",)}
#: PyRadiomics (SimpleITK) interpolators → medlib's.
PYRADIOMICS_INTERPOLATORS = {sitk: medlib for medlib, sitk in SITK_INTERPOLATORS.items()}


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
        from .masks import Grid

        if not Path(image_path).is_dir():
            raise RadiomicsError(f"{mask_path} is a DICOM segmentation: give the DICOM series folder it segments "
                                 "as the image")
        found = find_series(image_path)
        if len(found) != 1:
            raise RadiomicsError(f"{image_path} holds {len(found)} image series; give the folder of one")
        series = found[0]
        return series.read(), series_mask(mask_path, Grid.of(series), series.uid, roi), series.spacing
    if roi is not None:
        raise RadiomicsError(f"roi {roi!r} names a segment of a DICOM SEG or RTSTRUCT; {mask_path.name} is a label "
                             "image (choose its label with the parameter file's 'label')")
    image, spacing = read_volume(image_path)
    labels, mask_spacing = read_volume(mask_path)
    if not np.allclose(spacing, mask_spacing, rtol=1e-3):
        raise RadiomicsError(f"the mask's spacing {mask_spacing} differs from the image's {spacing}; resample it first")
    return image, labels == label, spacing


def series_mask(path: str | os.PathLike[str], grid, series_uid: str, roi: str | None = None) -> np.ndarray:
    """The segment or ROI ``roi`` of the SEG or RTSTRUCT ``path`` on ``grid``, the grid of the
    image series ``series_uid``, which the file must segment."""
    from .masks import mask, referenced_series

    segmented = referenced_series(path)
    if segmented != series_uid:
        raise RadiomicsError(f"{Path(path).name} segments series {segmented}, not the image's ({series_uid})")
    return mask(path, grid, roi)


def settings_from_params(path: str | os.PathLike[str], **overrides) -> tuple[Settings, int]:
    """Settings and the mask label from a PyRadiomics parameter file (YAML): see
    :func:`settings_from_pyradiomics`."""
    import yaml

    return settings_from_pyradiomics(yaml.safe_load(Path(path).read_text()) or {}, str(path), **overrides)


def settings_from_pyradiomics(params: dict, source: str = "parameters", **overrides) -> tuple[Settings, int]:
    """Settings and the mask label from PyRadiomics' parameters (a parameter file's sections:
    ``setting``, ``featureClass``, ``imageType``), with PyRadiomics' conventions
    (``Settings.conventions``: bin edges at multiples of binWidth, its axis lengths),
    ``voxelArrayShift`` added for the energy features,
    ROIs below ``minimumROIDimensions`` (default 2) or ``minimumROISize`` refused, PyRadiomics'
    defaults where a setting is absent. ``imageType`` names the original image and PyRadiomics'
    derived images (:mod:`medlib.radiomics.image_types`, with PyRadiomics' definitions and names):
    LoG (``sigma``), Wavelet (``wavelet``, ``start_level``, ``level``: every sub-band of every
    level, the approximation of the last), Square, SquareRoot, Logarithm, Exponential, Gradient
    (``gradientUseSpacing``), LBP2D (``lbp2DRadius``, ``lbp2DSamples``, ``lbp2DMethod``) and
    LBP3D (``lbp3DLevels``, ``lbp3DIcosphereRadius``, ``lbp3DIcosphereSubdivision``; its outputs
    ``lbp-3D-m1`` ... and the kurtosis ``lbp-3D-k``). An image type may set its own
    ``binWidth``, ``binCount`` and ``voxelArrayShift``.
    PyRadiomics lists spacings x, y, z with 0 for "keep"; its resampling grid and normalisation
    are its own (``medlib.radiomics.pyradiomics``). The settings medlib accepts only at
    PyRadiomics' default, and those that do not change features, are the data table
    ``pyradiomics.json``.

    Raises:
        RadiomicsError: a setting, value, image type or section medlib does not implement, by
            name (rather than ignoring it).
    """
    table = pyradiomics_table()
    unknown = sorted(set(params) - {"setting", "featureClass", "imageType", "voxelSetting"})
    if unknown:
        raise RadiomicsError(f"{source}: section(s) {', '.join(unknown)} are not PyRadiomics parameter file sections "
                             "(setting, featureClass, imageType, voxelSetting)")
    if params.get("voxelSetting"):
        raise RadiomicsError(f"{source}: voxel-based (feature map) extraction (voxelSetting) is not implemented by "
                             "medlib; remove the section")
    setting = dict(params.get("setting") or {})
    mapped = {"binWidth", "binCount", "resegmentRange", "resegmentMode", "label", "resampledPixelSpacing",
              "interpolator", "voxelArrayShift", "minimumROIDimensions", "minimumROISize", "force2D", "weightingNorm",
              "normalize", "normalizeScale", "removeOutliers",
              *IMAGE_TYPE_SETTINGS}
    unsupported = sorted(set(setting) - mapped - set(table["same_at_default"]) - set(table["no_effect"]))
    if unsupported:
        raise RadiomicsError(f"{source}: setting(s) {', '.join(unsupported)} are not implemented by medlib yet; "
                             "remove them or resample/filter beforehand")
    changed = sorted(k for k, default in table["same_at_default"].items() if k in setting and setting[k] != default)
    if changed:
        raise RadiomicsError(f"{source}: " + ", ".join(f"{k}: {setting[k]!r}" for k in changed) + " are implemented by "
                             "medlib only at PyRadiomics' defaults (" + ", ".join(
                                 f"{k}: {table['same_at_default'][k]!r}" for k in changed) + ")")
    kwargs: dict = {"conventions": "pyradiomics", "energy_shift": float(setting.get("voxelArrayShift") or 0),
                    # PyRadiomics refuses a single voxel whatever minimumROIDimensions says
                    "minimum_dimensions": max(1, int(setting.get("minimumROIDimensions") or 2)),
                    "minimum_voxels": int(setting.get("minimumROISize") or 1)}
    if setting.get("force2D") and setting.get("force2Ddimension", 0) != 0:
        raise RadiomicsError(f"{source}: force2Ddimension {setting['force2Ddimension']!r}: medlib's 2D texture works in "
                             "the axial plane only (force2Ddimension: 0)")
    if setting.get("weightingNorm") not in (None, "no_weighting"):
        raise RadiomicsError(f"{source}: weightingNorm {setting['weightingNorm']!r}: medlib merges directions without "
                             "weights only (no_weighting), or averages them (no weightingNorm)")
    kwargs["pyradiomics_aggregation"] = ("2.5D" if setting.get("force2D") else "3D") + (
        " merged" if setting.get("weightingNorm") else "")
    kwargs["aggregations"] = tuple(sorted(set(table["aggregations"][kwargs["pyradiomics_aggregation"]].values())))
    if setting.get("normalize"):
        kwargs["normalize"] = float(setting.get("normalizeScale") or 1)
        if setting.get("removeOutliers") is not None:
            kwargs["normalize_outliers"] = float(setting["removeOutliers"])
    if setting.get("binCount"):
        kwargs.update(discretisation="fixed_bin_number", bins=int(setting["binCount"]))
    else:
        kwargs.update(discretisation="fixed_bin_size", bin_width=float(setting.get("binWidth") or 25))
    if setting.get("resegmentMode", "absolute") == "sigma":
        if [float(v) for v in setting.get("resegmentRange") or [-3, 3]] != [-3.0, 3.0]:
            raise RadiomicsError(f"{source}: sigma re-segmentation is implemented for [-3, 3] only (IBSI 2.6)")
        kwargs["resegment_outliers"] = True
    elif setting.get("resegmentRange"):
        low, *high = setting["resegmentRange"]
        kwargs["resegment_range"] = (float(low), float(high[0]) if high else float("inf"))
    if setting.get("resampledPixelSpacing"):
        x, y, z = (float(v) or None for v in setting["resampledPixelSpacing"])
        kwargs["resample_spacing"] = (z, y, x)
    interpolator = setting.get("interpolator") or "sitkBSpline"
    if interpolator not in PYRADIOMICS_INTERPOLATORS:
        raise RadiomicsError(f"{source}: interpolator {interpolator!r} is not implemented by medlib; use one of "
                             f"{', '.join(PYRADIOMICS_INTERPOLATORS)}")
    kwargs["interpolator"] = PYRADIOMICS_INTERPOLATORS[interpolator]
    classes = params.get("featureClass")
    if classes:
        unknown = sorted(set(classes) - set(PYRADIOMICS_CLASSES))
        if unknown:
            raise RadiomicsError(f"{source}: feature class(es) {', '.join(unknown)} are not implemented by medlib yet "
                                 f"(implemented: {', '.join(PYRADIOMICS_CLASSES)})")
        kwargs["families"] = tuple(f for c in classes for f in PYRADIOMICS_CLASSES[c])
    else:
        kwargs["families"] = FAMILIES
    kwargs["original"], kwargs["filters"], own = _image_types(params.get("imageType") or {"Original": {}}, setting,
                                                             source)
    kwargs["filter_settings"] = own or None
    return Settings(**{**kwargs, **overrides}), int(setting.get("label") or 1)


#: PyRadiomics' settings of its image types, in ``setting`` (for all) or under the image type.
IMAGE_TYPE_SETTINGS = {"sigma", "wavelet", "start_level", "level", "gradientUseSpacing", "lbp2DRadius",
                       "lbp2DSamples", "lbp2DMethod", "lbp3DLevels", "lbp3DIcosphereRadius", "lbp3DIcosphereSubdivision"}
#: PyRadiomics' general settings that an image type may set for its own features.
PER_IMAGE_TYPE = {"binWidth", "binCount", "voxelArrayShift"}


def _image_types(types: dict, setting: dict, source: str) -> tuple[bool, tuple, dict]:
    """Whether the original image is described, PyRadiomics' derived images
    (:mod:`medlib.radiomics.image_types`) for a parameter file's ``imageType`` section, and the
    settings of their own (``Settings.filter_settings``)."""
    from . import image_types as it

    filters: list = []
    own: dict[str, dict] = {}
    for name, custom in types.items():
        custom = custom or {}
        unknown = sorted(set(custom) - IMAGE_TYPE_SETTINGS - PER_IMAGE_TYPE)
        if unknown:
            raise RadiomicsError(f"{source}: setting(s) {', '.join(unknown)} of image type {name} are not implemented "
                                 f"by medlib per image type (only the filter's own and {', '.join(sorted(PER_IMAGE_TYPE))}"
                                 "); set them for all")
        given = {**{k: v for k, v in setting.items() if k in IMAGE_TYPE_SETTINGS}, **custom}
        if name == "Original":
            if set(custom) & PER_IMAGE_TYPE:
                raise RadiomicsError(f"{source}: set {', '.join(sorted(set(custom) & PER_IMAGE_TYPE))} of the original "
                                     "image in the setting section")
            continue
        first = len(filters)
        if name == "LoG":
            if not given.get("sigma"):
                raise RadiomicsError(f"{source}: image type LoG needs sigma (a list of scales in mm)")
            filters += [it.RecursiveLoG(sigma=float(s)) for s in given["sigma"]]
        elif name == "Wavelet":
            levels = int(given.get("level", 1))
            wavelet, start = str(given.get("wavelet", "coif1")), int(given.get("start_level", 0))
            for level in range(1, levels + 1):
                bands = ["".join(b) for b in itertools.product("LH", repeat=3) if level == levels or "H" in b]
                filters += [it.StationaryWavelet(wavelet=wavelet, subband=b, level=level, start_level=start)
                            for b in bands]
        elif name == "Gradient":
            filters.append(it.Gradient(use_spacing=bool(given.get("gradientUseSpacing", True))))
        elif name == "LBP2D":
            filters.append(it.LBP2D(radius=float(given.get("lbp2DRadius", 1)), samples=int(given.get("lbp2DSamples", 8)),
                                    method=str(given.get("lbp2DMethod", "uniform"))))
        elif name == "LBP3D":
            levels = int(given.get("lbp3DLevels", 2))
            filters += [it.LBP3D(levels=levels, radius=float(given.get("lbp3DIcosphereRadius", 1)),
                                 subdivision=int(given.get("lbp3DIcosphereSubdivision", 1)), output=output)
                        for output in [f"m{n}" for n in range(1, levels + 1)] + ["k"]]
        elif name in ("Square", "SquareRoot", "Logarithm", "Exponential"):
            filters.append(getattr(it, name)())
        else:
            raise RadiomicsError(f"{source}: image type {name} is not implemented by medlib (implemented: Original, "
                                 "LoG, Wavelet, Square, SquareRoot, Logarithm, Exponential, Gradient, LBP2D, LBP3D)")
        if set(custom) & PER_IMAGE_TYPE:
            mine = {**setting, **custom}  # PyRadiomics: the image type's settings update the general ones
            settings = ({"discretisation": "fixed_bin_number", "bins": int(mine["binCount"])} if mine.get("binCount")
                        else {"discretisation": "fixed_bin_size", "bin_width": float(mine.get("binWidth") or 25)})
            settings["energy_shift"] = float(mine.get("voxelArrayShift") or 0)
            own.update({f.name: settings for f in filters[first:]})
    return "Original" in types, tuple(filters), own
