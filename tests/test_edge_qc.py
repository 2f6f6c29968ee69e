"""The edge's quality check of a series (medhub_edge.qc: medlib.qa.series's checks), on real DICOM files."""

from __future__ import annotations

from pathlib import Path

import pydicom

from medhub_edge.qc import check_series, report
from medlib.synthetic import write_ct_series

CT = ("CT",)


def series(tmp_path: Path, name: str, slices: int = 8) -> list[Path]:
    return write_ct_series(tmp_path / name, shape=(slices, 16, 16))


def edit(path: Path, **values) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def test_a_whole_regular_series_passes(tmp_path: Path):
    result = check_series(series(tmp_path, "ok"), name="series-1", modalities=CT)
    assert result.passed and result.instances == 8 and result.modality == "CT"


def test_missing_duplicated_and_uneven_slices_are_found(tmp_path: Path):
    files = series(tmp_path, "gaps", 10)
    files.pop(3).unlink()
    files.pop(5).unlink()
    assert check_series(files, name="s", modalities=CT).problems == ["2 missing slice(s): gaps up to 5.00 mm in a 2.50 mm series"]

    files = series(tmp_path, "twice")
    edit(files[2], ImagePositionPatient=pydicom.dcmread(files[1]).ImagePositionPatient)
    problems = check_series(files, name="s", modalities=CT).problems
    assert "1 duplicated slice position(s)" in problems

    files = series(tmp_path, "uneven")
    position = pydicom.dcmread(files[4]).ImagePositionPatient
    edit(files[4], ImagePositionPatient=[position[0], position[1], float(position[2]) + 0.5])
    assert any(p.startswith("non-uniform slice spacing") for p in check_series(files, name="s", modalities=CT).problems)


def test_mixed_sizes_orientations_modalities_and_undecodable_pixels_are_found(tmp_path: Path):
    files = series(tmp_path, "mixed")
    edit(files[0], ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    assert "mixed orientations (2 different)" in check_series(files, name="s", modalities=CT).problems

    files = series(tmp_path, "sizes")
    small = write_ct_series(tmp_path / "small", shape=(1, 8, 8))[0]
    ds = pydicom.dcmread(small)
    ds.SeriesInstanceUID = pydicom.dcmread(files[0]).SeriesInstanceUID
    ds.save_as(files[0])
    assert "mixed image sizes [(8, 8), (16, 16)]" in check_series(files, name="s", modalities=CT).problems

    files = series(tmp_path, "mr")
    assert check_series(files, name="s", modalities=("MR",)).problems == ["unexpected modality CT (expected MR)"]

    files = series(tmp_path, "broken")
    ds = pydicom.dcmread(files[1])
    ds.PixelData = ds.PixelData[:100]  # cut short: no image can be made of it
    ds.save_as(files[1])
    problems = check_series(files, name="s", modalities=CT).problems
    assert problems[0].startswith("CT000002.dcm: pixel data cannot be decoded (ValueError: The number of bytes")
    assert problems[1].startswith("1 missing slice(s)")  # and the stack has a hole where it was


def test_the_report_says_what_a_hold_keeps_back(tmp_path: Path):
    good = check_series(series(tmp_path, "a"), name="series-1", modalities=CT)
    bad = check_series(series(tmp_path, "b"), name="series-2", modalities=("MR",))
    held = report([good, bad], "hold")
    assert held["summary"] == {"series": 2, "passed": 1, "failed": 1, "held_back": 1}
    assert [s["passed"] for s in held["series"]] == [True, False]
    assert report([good, bad], "flag")["summary"]["held_back"] == 0
