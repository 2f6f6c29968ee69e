"""The quality check of each series before delivery, by a predefined protocol.

Per series: slices missing (a gap between positions well above the series' spacing) or
duplicated (two at one position), non-uniform spacing, mixed orientations or sizes, a modality
the site does not deliver, and pixel data that cannot be decoded. The report travels with the
delivery (``qc.json`` of the version); a harvest's ``on_qc_failure`` says whether a failing
series is held back at the site or delivered flagged.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

#: Modalities of objects that are not image stacks (masks, structures): checked for decoding only.
NOT_STACKS = frozenset({"SEG", "RTSTRUCT", "SR", "RTPLAN", "RTDOSE", "KO", "PR"})


@dataclass
class SeriesReport:
    """The checks of one series: ``problems`` empty when it passed."""

    series: str  # a name that carries no identifier (an index of the harvest's series)
    modality: str
    instances: int
    problems: list[str] = field(default_factory=list)

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


def file_facts(path: str | Path, decode_pixels: bool = True) -> Facts:
    """Read one file's header and check that its pixel data decodes: natively encoded data must
    hold exactly the bytes its attributes say (read without loading it); compressed data is
    decoded."""
    name = Path(path).name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, defer_size=1024)
            if decode_pixels and "PixelData" in ds:
                if ds.file_meta.TransferSyntaxUID.is_compressed:
                    ds.pixel_array  # noqa: B018 - decoding is the check
                else:
                    _native_length(ds)
    except Exception as e:  # noqa: BLE001 - any failure to decode is the finding
        return Facts(name, problem=f"{name}: pixel data cannot be decoded ({type(e).__name__}: {e})")
    size = (int(ds.Rows), int(ds.Columns)) if "Rows" in ds and "Columns" in ds else None
    return Facts(name, str(ds.get("Modality", "")), size,
                 tuple(round(float(v), 4) for v in ds.get("ImageOrientationPatient", ())),
                 tuple(float(v) for v in ds.get("ImagePositionPatient", ())))


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


def check_series(name: str, paths: Iterable[Path], allowed_modalities: Iterable[str], spacing_tolerance: float = 0.05,
                 decode_pixels: bool = True) -> SeriesReport:
    """Check the instances of one series (files of the inbox)."""
    return check_facts(name, [file_facts(p, decode_pixels) for p in paths], allowed_modalities, spacing_tolerance)


def check_facts(name: str, facts: list[Facts], allowed_modalities: Iterable[str],
                spacing_tolerance: float = 0.05) -> SeriesReport:
    """Check one series from the facts of its files."""
    problems = [f.problem for f in facts if f.problem]
    readable = [f for f in facts if not f.problem]
    modalities = sorted({f.modality for f in readable})
    report = SeriesReport(name, "/".join(modalities), len(facts), problems)
    allowed = set(allowed_modalities)
    unexpected = [m for m in modalities if m not in allowed]
    if unexpected:
        report.problems.append(f"unexpected modality {', '.join(unexpected)} (the site delivers "
                               f"{', '.join(sorted(allowed))})")
    if len(modalities) > 1:
        report.problems.append(f"mixed modalities {', '.join(modalities)}")
    images = [f for f in readable if f.position and f.size and f.modality not in NOT_STACKS]
    if images:
        report.problems += _geometry(images, spacing_tolerance)
    return report


def _geometry(images: list[Facts], tolerance: float) -> list[str]:
    problems = []
    sizes = {f.size for f in images}
    if len(sizes) > 1:
        problems.append(f"mixed image sizes {sorted(sizes)}")
    orientations = {f.orientation for f in images}
    if len(orientations) > 1:
        problems.append(f"mixed orientations ({len(orientations)} different)")
        return problems
    orientation = next(iter(orientations))
    if len(images) < 2 or len(orientation) != 6:
        return problems
    normal = np.cross(np.array(orientation[:3]), np.array(orientation[3:]))
    positions = np.sort([float(np.dot(normal, f.position)) for f in images])
    gaps = np.diff(positions)
    duplicates = int(np.sum(np.isclose(gaps, 0, atol=1e-3)))
    if duplicates:
        problems.append(f"{duplicates} duplicated slice position(s)")
    gaps = gaps[~np.isclose(gaps, 0, atol=1e-3)]
    if gaps.size:
        step = float(np.median(gaps))
        missing = int(sum(round(g / step) - 1 for g in gaps if g > step * 1.5))
        if missing:
            problems.append(f"{missing} missing slice(s): gaps up to {gaps.max():.2f} mm in a {step:.2f} mm series")
        regular = gaps[gaps <= step * 1.5]
        deviation = float(np.max(np.abs(regular - step)) / step) if regular.size else 0.0
        if deviation > tolerance:
            problems.append(f"non-uniform slice spacing: gaps deviate up to {deviation:.0%} from {step:.3f} mm")
    return problems


def report(series: list[SeriesReport], on_failure: str) -> dict[str, Any]:
    """The QC report of a harvest, as delivered."""
    failed = [s for s in series if not s.passed]
    return {"protocol": "medhub edge QC 1: missing/duplicated slices, spacing, orientation, size, modality, decoding",
            "on_failure": on_failure,
            "summary": {"series": len(series), "passed": len(series) - len(failed), "failed": len(failed),
                        "held_back": len(failed) if on_failure == "hold" else 0},
            "series": [asdict(s) | {"passed": s.passed} for s in series]}
