"""Input quality checks of an image series: what a model should not silently accept.

Per series: slices missing or duplicated, non-uniform spacing, mixed orientations or sizes, a
modality or body part that is not expected, pixel data that cannot be decoded, rescaled values
outside the modality's physical range (:data:`RANGES`, the data file ``ranges.json``), and
acquisition parameters outside a training set's (a :class:`~medlib.qa.drift.Profile`; the
parameters are the data file ``acquisition.json``). The hospital edge runs the same checks on each
harvested series before delivery (:mod:`medhub_edge.qc`).

    from medlib import qa
    qa.check_series(series, reference=profile)      # a Series, a folder or file paths
    qa.check_dataset("lung-ct-2024", reference=profile)
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pydicom

from .errors import QaError

#: Modalities of objects that are not image stacks (masks, structures): checked for decoding only.
NOT_STACKS = frozenset({"SEG", "RTSTRUCT", "SR", "RTPLAN", "RTDOSE", "KO", "PR"})


def _table(name: str) -> dict[str, Any]:
    data = json.loads(resources.files(__package__).joinpath(name).read_text())
    data.pop("_comment", None)
    return data


#: Each modality's physical range of rescaled values: {"CT": {"low", "high", "unit", "why"}, ...}.
RANGES: dict[str, dict[str, Any]] = _table("ranges.json")
#: The acquisition parameters read of each series: {"scalars": {name: {from, unit}}, "categories": ...}.
ACQUISITION: dict[str, dict[str, dict[str, str]]] = _table("acquisition.json")
#: Acquisition parameters that are properties of the series' geometry rather than header keywords.
GEOMETRY = frozenset({"slice_spacing", "pixel_spacing", "slices", "rows", "columns"})
#: The header keywords :data:`ACQUISITION` reads.
HEADER_KEYWORDS = tuple(spec["from"] for kind in ACQUISITION.values() for spec in kind.values()
                        if spec["from"] not in GEOMETRY) + ("PixelSpacing",)


class Reference(Protocol):
    """What the checks need of a training set (a :class:`~medlib.qa.drift.Profile`)."""

    def acquisition_ranges(self) -> tuple[dict[str, tuple[float, float]], dict[str, set[str]]]: ...


@dataclass
class SeriesReport:
    """The checks of one series: ``problems`` empty when it passed."""

    series: str  # a name that carries no identifier (Series Instance UID, or an index of the harvest's series)
    modality: str
    instances: int
    problems: list[str] = field(default_factory=list)
    acquisition: dict[str, float | str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Facts:
    """What the checks need of one file (small, picklable: made in worker processes)."""

    name: str
    modality: str = ""
    size: tuple[int, int] | None = None
    orientation: tuple[float, ...] = ()
    position: tuple[float, ...] = ()
    problem: str | None = None  # the pixel data cannot be decoded
    series: str = ""
    header: tuple[tuple[str, float | str], ...] = ()  # the values of HEADER_KEYWORDS it has
    outside: tuple[int, int, int] | None = None  # voxels below and above the modality's range, of all


def file_facts(path: str | Path, decode_pixels: bool = True, values: bool = False,
               ranges: Mapping[str, Mapping[str, Any]] | None = None) -> Facts:
    """Read one file's header and check that its pixel data decodes: natively encoded data must
    hold exactly the bytes its attributes say (read without loading it); compressed data is
    decoded. With ``values``, the rescaled pixel values are counted against the modality's
    physical range (``ranges``, default :data:`RANGES`), declared padding left out."""
    name = Path(path).name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, defer_size=None if values else 1024)
            if decode_pixels and "PixelData" in ds:
                if ds.file_meta.TransferSyntaxUID.is_compressed:
                    ds.pixel_array  # noqa: B018 - decoding is the check
                else:
                    _native_length(ds)
            outside = _outside(ds, (RANGES if ranges is None else ranges).get(str(ds.get("Modality", "")))) \
                if values and "PixelData" in ds else None
    except Exception as e:  # noqa: BLE001 - any failure to decode is the finding
        return Facts(name, problem=f"{name}: pixel data cannot be decoded ({type(e).__name__}: {e})")
    size = (int(ds.Rows), int(ds.Columns)) if "Rows" in ds and "Columns" in ds else None
    return Facts(name, str(ds.get("Modality", "")), size,
                 tuple(round(float(v), 4) for v in ds.get("ImageOrientationPatient", ())),
                 tuple(float(v) for v in ds.get("ImagePositionPatient", ())),
                 series=str(ds.get("SeriesInstanceUID", "")), header=_header(ds), outside=outside)


def _header(ds: pydicom.Dataset) -> tuple[tuple[str, float | str], ...]:
    out = []
    for keyword in HEADER_KEYWORDS:
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        if isinstance(value, pydicom.multival.MultiValue):
            value = value[0]
        try:
            out.append((keyword, float(value)))
        except (TypeError, ValueError):
            out.append((keyword, str(value)))
    return tuple(out)


def _outside(ds: pydicom.Dataset, limits: Mapping[str, Any] | None) -> tuple[int, int, int] | None:
    """(below, above, of all) the rescaled values of ``ds`` against ``limits``; None if unchecked."""
    if limits is None or int(ds.get("SamplesPerPixel", 1)) != 1:
        return None
    stored = ds.pixel_array
    keep = np.ones(stored.shape, bool)
    if "PixelPaddingValue" in ds:
        low_pad = int(ds.PixelPaddingValue)
        high_pad = int(ds.get("PixelPaddingRangeLimit", low_pad))
        keep = (stored < min(low_pad, high_pad)) | (stored > max(low_pad, high_pad))
    values = stored[keep] * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    below = int(np.count_nonzero(values < limits["low"])) if limits.get("low") is not None else 0
    above = int(np.count_nonzero(values > limits["high"])) if limits.get("high") is not None else 0
    return below, above, int(values.size)


def _native_length(ds: pydicom.Dataset) -> None:
    """Raise ValueError unless native pixel data holds the bytes rows × columns × samples ×
    bits × frames say (the check pydicom's decoder makes, without reading the pixels)."""
    element = ds.get_item("PixelData")
    have = element.length if hasattr(element, "length") else len(element.value)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.BitsAllocated)
    need = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames
    need = (need * bits + 7) // 8
    if have < need:
        raise ValueError(f"The number of bytes of pixel data is less than expected ({have} vs {need} bytes)")


def acquisition(header: Mapping[str, float | str], slices: int, rows: int | None, columns: int | None,
                slice_spacing: float | None) -> dict[str, float | str]:
    """The :data:`ACQUISITION` parameters of a series, from its first image's header values and
    its geometry; those it does not have are left out."""
    geometry = {"slices": float(slices), "rows": rows, "columns": columns, "slice_spacing": slice_spacing,
                "pixel_spacing": header.get("PixelSpacing")}
    out: dict[str, float | str] = {}
    for name, spec in ACQUISITION["scalars"].items():
        value = geometry.get(spec["from"]) if spec["from"] in GEOMETRY else header.get(spec["from"])
        if isinstance(value, (int, float)) and np.isfinite(value):
            out[name] = round(float(value), 6)
    for name, spec in ACQUISITION["categories"].items():
        if header.get(spec["from"]) not in (None, ""):
            out[name] = str(header[spec["from"]])
    return out


def series_acquisition(series: Any) -> dict[str, float | str]:
    """The :data:`ACQUISITION` parameters of a :class:`~medlib.datasets.series.Series`: its first
    image's header and its geometry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(series.slices[0].path, stop_before_pixels=True)
    return acquisition(dict(_header(ds)), len(series.slices), series.rows, series.columns,
                       series.spacing[0] if len(series.slices) > 1 else None)


def check_facts(name: str, facts: list[Facts], modalities: Iterable[str] | None = None, spacing_tolerance: float = 0.05,
                *, body_parts: Iterable[str] | None = None, reference: Reference | None = None,
                ranges: Mapping[str, Mapping[str, Any]] | None = None) -> SeriesReport:
    """Check one series from the facts of its files (see the module for what is checked).

    Args:
        modalities, body_parts: what is expected (default: what ``reference`` holds, or anything).
        reference: a training set's profile: acquisition parameters outside its ranges are problems.
    """
    problems = [f.problem for f in facts if f.problem]
    readable = [f for f in facts if not f.problem]
    found = sorted({f.modality for f in readable})
    report = SeriesReport(name, "/".join(found), len(facts), problems)
    scalars, categories = reference.acquisition_ranges() if reference is not None else ({}, {})
    expected = set(modalities) if modalities is not None else categories.get("Modality")
    unexpected = [m for m in found if expected is not None and m not in expected]
    if unexpected:
        report.problems.append(f"unexpected modality {', '.join(unexpected)} (expected {', '.join(sorted(expected))})")
    if len(found) > 1:
        report.problems.append(f"mixed modalities {', '.join(found)}")
    images = [f for f in readable if f.position and f.size and f.modality not in NOT_STACKS]
    step = None
    if images:
        geometry, step = _geometry(images, spacing_tolerance)
        report.problems += geometry
    if not readable:
        return report
    header = dict(readable[0].header)
    size = images[0].size if images else (None, None)
    report.acquisition = acquisition(header, len(images), *(size or (None, None)), step)
    parts = set(body_parts) if body_parts is not None else categories.get("BodyPartExamined")
    if parts is not None and header.get("BodyPartExamined") not in parts:
        given = header.get("BodyPartExamined")
        report.problems.append(f"body part {given!r} (expected {', '.join(sorted(parts))})" if given
                               else f"no BodyPartExamined (expected {', '.join(sorted(parts))})")
    report.problems += _values(readable, ranges if ranges is not None else RANGES)
    report.problems += _beyond(report.acquisition, scalars, categories)
    return report


def _values(facts: list[Facts], ranges: Mapping[str, Mapping[str, Any]]) -> list[str]:
    counted = [f.outside for f in facts if f.outside is not None]
    if not counted:
        return []
    below, above, total = (sum(c[i] for c in counted) for i in range(3))
    limits = ranges[facts[0].modality]
    unit = f" {limits['unit']}" if limits.get("unit") else ""
    problems = []
    if below:
        problems.append(f"{below} voxel(s) ({below / total:.1%}) below the physical minimum {limits['low']:g}{unit} of "
                        f"{facts[0].modality} ({limits['why']}): a wrong rescale, or padding the series does not "
                        "declare as PixelPaddingValue")
    if above:
        problems.append(f"{above} voxel(s) ({above / total:.1%}) above the physical maximum {limits['high']:g}{unit} of "
                        f"{facts[0].modality} ({limits['why']}): a wrong rescale or corrupt pixel data")
    return problems


def _beyond(values: Mapping[str, float | str], scalars: Mapping[str, tuple[float, float]],
            categories: Mapping[str, set[str]]) -> list[str]:
    """The acquisition parameters outside the training set's (Modality and body part: checked above)."""
    problems = []
    for name, (low, high) in scalars.items():
        value = values.get(name)
        if isinstance(value, float) and not low - 1e-6 <= value <= high + 1e-6:
            unit = ACQUISITION["scalars"][name]["unit"]
            problems.append(f"{name} {value:g}{unit and ' ' + unit} outside the training set's "
                            f"{low:g}–{high:g}{unit and ' ' + unit}")
    for name, seen in categories.items():
        if name in ("Modality", "BodyPartExamined") or name not in values:
            continue
        if values[name] not in seen:
            problems.append(f"{name} {values[name]!r} is not in the training set ({', '.join(sorted(seen))})")
    return problems


def _geometry(images: list[Facts], tolerance: float) -> tuple[list[str], float | None]:
    """The geometry's problems, and the slice spacing (the median gap between positions)."""
    problems = []
    sizes = {f.size for f in images}
    if len(sizes) > 1:
        problems.append(f"mixed image sizes {sorted(sizes)}")
    orientations = {f.orientation for f in images}
    if len(orientations) > 1:
        problems.append(f"mixed orientations ({len(orientations)} different)")
        return problems, None
    orientation = next(iter(orientations))
    if len(images) < 2 or len(orientation) != 6:
        return problems, None
    normal = np.cross(np.array(orientation[:3]), np.array(orientation[3:]))
    positions = np.sort([float(np.dot(normal, f.position)) for f in images])
    gaps = np.diff(positions)
    duplicates = int(np.sum(np.isclose(gaps, 0, atol=1e-3)))
    if duplicates:
        problems.append(f"{duplicates} duplicated slice position(s)")
    gaps = gaps[~np.isclose(gaps, 0, atol=1e-3)]
    if not gaps.size:
        return problems, None
    step = float(np.median(gaps))
    missing = int(sum(round(g / step) - 1 for g in gaps if g > step * 1.5))
    if missing:
        problems.append(f"{missing} missing slice(s): gaps up to {gaps.max():.2f} mm in a {step:.2f} mm series")
    regular = gaps[gaps <= step * 1.5]
    deviation = float(np.max(np.abs(regular - step)) / step) if regular.size else 0.0
    if deviation > tolerance:
        problems.append(f"non-uniform slice spacing: gaps deviate up to {deviation:.0%} from {step:.3f} mm")
    return problems, step


def _paths(series: Any) -> list[Path]:
    """The files of a Series, of a folder (all of it: one series), or the paths given."""
    if hasattr(series, "slices"):
        return [Path(s.path) for s in series.slices]
    if isinstance(series, (str, os.PathLike)):
        folder = Path(series)
        if not folder.is_dir():
            raise QaError(f"{folder} is not a folder of DICOM files: give a Series (medlib.datasets.series), a folder "
                          "or a list of file paths")
        return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [Path(p) for p in series]


def check_series(series: Any, *, name: str | None = None, modalities: Iterable[str] | None = None,
                 body_parts: Iterable[str] | None = None, reference: Reference | None = None,
                 ranges: Mapping[str, Mapping[str, Any]] | None = None, spacing_tolerance: float = 0.05,
                 decode_pixels: bool = True, values: bool = True) -> SeriesReport:
    """Check one series: a :class:`~medlib.datasets.series.Series`, a folder holding one series,
    or its files' paths. ``reference`` (a :class:`~medlib.qa.drift.Profile`) adds the training
    set's modalities, body parts and acquisition ranges to what is expected.

    Raises:
        QaError: the files belong to more than one series.
    """
    facts = [file_facts(p, decode_pixels, values, ranges) for p in _paths(series)]
    uids = {f.series for f in facts if f.series}
    if len(uids) > 1:
        raise QaError(f"these files hold {len(uids)} series; check each (qa.check_dataset groups a dataset's files "
                      "by series)")
    name = name or getattr(series, "uid", None) or next(iter(uids), "series")
    return check_facts(name, facts, modalities, spacing_tolerance, body_parts=body_parts, reference=reference,
                       ranges=ranges)


def screen(series: Sequence[Any], *, check: bool = True, reference: Reference | None = None
           ) -> tuple[list[Any], dict[str, list[str]], dict[str, dict[str, float | str]]]:
    """Split ``series`` by the checks: those that pass (all, without ``check``), the problems of
    those that do not (by Series Instance UID), and every series' acquisition parameters."""
    passed, excluded, acquisitions = [], {}, {}
    for item in series:
        if not check:
            acquisitions[item.uid] = series_acquisition(item)
            passed.append(item)
            continue
        report = check_series(item, reference=reference)
        acquisitions[item.uid] = report.acquisition
        if report.passed:
            passed.append(item)
        else:
            excluded[item.uid] = report.problems
    return passed, excluded, acquisitions


def check_dataset(dataset: str, version: str | None = None, *, modalities: Iterable[str] | None = None,
                  body_parts: Iterable[str] | None = None, reference: Reference | None = None,
                  ranges: Mapping[str, Mapping[str, Any]] | None = None, spacing_tolerance: float = 0.05,
                  decode_pixels: bool = True, values: bool = True, progress: bool = True) -> list[SeriesReport]:
    """Check every series of a granted dataset (at ``version``), grouping its files by Series
    Instance UID, with a progress bar; the options as :func:`check_series`. The reading is audited."""
    from tqdm.auto import tqdm

    from .. import audit
    from ..datasets.access import locate

    located = locate(dataset, version)
    files = sorted(p for p in located.root.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p != located.manifest)
    groups: dict[str, list[Facts]] = {}
    for path in tqdm(files, desc=f"checking {dataset}", unit="file", disable=not progress):
        facts = file_facts(path, decode_pixels, values, ranges)
        groups.setdefault(facts.series or facts.name, []).append(facts)
    reports = [check_facts(uid, members, modalities, spacing_tolerance, body_parts=body_parts, reference=reference,
                           ranges=ranges) for uid, members in groups.items()]
    audit.record("dataset-open", {**located.object, "series": len(reports)}, via="qa-check",
                 failed=sum(not r.passed for r in reports))
    return reports
