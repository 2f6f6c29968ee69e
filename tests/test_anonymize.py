"""medlib.anonymize: the profile as data, markers that must not survive, keyed UIDs, tree runs."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from conftest import shared_data
from medlib.anonymize import Action, Anonymizer, KeyFileError, OptionError, SiteKey, load_profile
from medlib.anonymize.profile import SafePrivate, load_safe_private
from medlib.errors import MedlibError
from medlib.anonymize import generate_profile, generate_requirements
from medlib.anonymize.check import check_dataset, check_tree
from medlib.anonymize.rewrite import NotRewritable, PartialFile
from medlib.anonymize.anonymizer import Trace
from medlib.anonymize.tree import JOURNAL, PixelPolicy, anonymize_tree, read_dicom
from medlib.synthetic import write_ct_series

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "dicom_ps3.15_annex_e_profile.json"
KEY = SiteKey(bytes(range(32)))


# -- the profile as data ---------------------------------------------------------------------

def test_profile_data_is_what_the_generator_makes_of_the_reference():
    reference = json.loads(shared_data(REFERENCE).read_text())
    assert json.loads(generate_profile.OUTPUT.read_text()) == generate_profile.generate(reference)
    assert len(reference) == 621


def test_requirements_data_is_what_the_generator_makes_of_the_module_tables():
    assert json.loads(generate_requirements.OUTPUT.read_text()) == generate_requirements.generate()


def test_every_action_code_resolves():
    profile = load_profile()
    basic = {r.basic for r in profile.by_tag.values()}
    assert basic == {"D", "Z", "X", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"}
    assert {code for r in profile.by_tag.values() for code in r.options.values()} == {"K", "C"}
    accession = profile.by_tag[keyword_dict["AccessionNumber"]]
    assert accession.action(frozenset()) is Action.ZERO
    referenced = profile.by_tag[keyword_dict["ReferencedImageSequence"]]
    assert referenced.action(frozenset()) is Action.UID_IN_SEQUENCE
    assert referenced.action(frozenset({"retain_uids"})) is Action.KEEP
    study_date = profile.by_tag[keyword_dict["StudyDate"]]
    assert study_date.action(frozenset({"retain_full_dates"})) is Action.KEEP
    assert study_date.action(frozenset({"retain_modified_dates"})) is Action.CLEAN
    assert profile.rule(0x50000010) is profile.curves and profile.rule(0x60003000).name == "Overlay Data"
    assert profile.rule(0x00091001) is profile.private


def test_combined_codes_keep_the_least_the_iod_allows():
    """X/Z, X/D, Z/D, X/Z/D and X/Z/U* resolve by the attribute's Type in the file's IOD."""
    anonymizer, ct, xrf, ecg = Anonymizer(KEY), (CT_IMAGE, ()), ("1.2.840.10008.5.1.4.1.1.12.2", ()), \
        ("1.2.840.10008.5.1.4.1.1.9.1.1", ())
    action = lambda keyword, scope: anonymizer.action(keyword_dict[keyword], scope)  # noqa: E731
    assert action("SourceImageSequence", ct) is Action.REMOVE  # X/Z/U*, Type 3 in CT
    assert action("ReferencedImageSequence", xrf) is Action.UID_IN_SEQUENCE  # X/Z/U*, Type 1 in XRF
    assert action("InstitutionName", ct) is Action.REMOVE  # X/Z/D, Type 3
    assert action("ContentDate", ct) is Action.ZERO  # Z/D, Type 2 in CT
    assert action("ContentDate", ecg) is Action.DUMMY  # Z/D, Type 1 in the 12-lead ECG
    assert action("AcquisitionDateTime", ecg) is Action.DUMMY  # X/Z/D, Type 1
    # nested: by the path of sequences; an unknown place or SOP class: a standard attribute counts as required
    assert action("InstitutionName", (CT_IMAGE, ("OperatorIdentificationSequence",))) is Action.DUMMY
    assert action("InstitutionName", ("1.2.3.4", ())) is Action.DUMMY
    assert action("ContentDate", (CT_IMAGE, ("SomePrivateSequence",))) is Action.DUMMY
    # an option's K or C is no combined code
    assert Anonymizer(KEY, ["retain_institution_identity"]).action(keyword_dict["InstitutionName"], ct) is Action.KEEP


def test_options_are_checked():
    with pytest.raises(OptionError, match="unknown option"):
        Anonymizer(KEY, ["retain_everything"])
    with pytest.raises(OptionError, match="exclude each other"):
        Anonymizer(KEY, ["retain_full_dates", "retain_modified_dates"])
    with pytest.raises(OptionError, match="only used with the option retain_safe_private"):
        Anonymizer(KEY, [], safe_private=SafePrivate(frozenset()))


def private_dataset() -> Dataset:
    """GE's acquisition block with one safe and one unsafe element, a block of an unknown
    creator, both at the top level and inside a kept sequence."""
    def blocks(ds: Dataset) -> Dataset:
        ge = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
        ge.add_new(0x23, "DS", "39.375")  # Table Speed: safe
        ge.add_new(0x9E, "LO", "SAFE-PULSE-SEQUENCE")  # Internal Pulse Sequence Name: safe
        ge.add_new(0x99, "LO", "UNSAFE-GE-VALUE")
        acme = ds.private_block(0x0019, "ACME IDENTITY", create=True)
        acme.add_new(0x23, "LO", "UNSAFE-ACME-VALUE")  # same element number, other creator
        return ds

    ds = blocks(Dataset())
    ds.VOILUTSequence = Sequence([blocks(Dataset())])
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    return ds


@pytest.mark.parametrize("engine", ["dataset", "bytes"])
def test_retain_safe_private_keeps_only_listed_attributes_of_their_creator(engine):
    original = as_bytes(private_dataset())
    without = anonymized_bytes(engine, Anonymizer(KEY), original)
    output = anonymized_bytes(engine, Anonymizer(KEY, ["retain_safe_private"]), original)
    assert b"GEMS_ACQU_01" not in without and b"39.375" not in without
    for kept in (b"GEMS_ACQU_01", b"39.375", b"SAFE-PULSE-SEQUENCE"):
        assert output.count(kept) == 2, kept  # top level and inside the sequence
    for gone in (b"ACME IDENTITY", b"UNSAFE-ACME-VALUE", b"UNSAFE-GE-VALUE"):
        assert gone not in output, gone
    ds = pydicom.dcmread(io.BytesIO(output))
    assert ds.private_block(0x0019, "GEMS_ACQU_01")[0x23].value == "39.375"
    assert check_dataset(ds, "safe") == []  # what the list keeps is no finding
    ds.private_block(0x0019, "GEMS_ACQU_01").add_new(0x99, "LO", "UNSAFE-GE-VALUE")
    assert [f.reason for f in check_dataset(ds, "unsafe")] == ["private attribute not in the safe list"]
    assert ("113111", "Retain Safe Private Option") in [(i.CodeValue, i.CodeMeaning)
                                                       for i in ds.DeidentificationMethodCodeSequence]


def test_a_site_adds_safe_private_attributes(tmp_path: Path):
    rows = tmp_path / "safe.json"
    rows.write_text(json.dumps({"rows": [{"creator": "ACME IDENTITY", "tag": "(0019,xx23)", "meaning": "dose"}]}))
    output = anonymized_bytes("bytes", Anonymizer(KEY, ["retain_safe_private"], safe_private=load_safe_private(rows)),
                              as_bytes(private_dataset()))
    assert b"UNSAFE-ACME-VALUE" in output and b"39.375" in output and b"UNSAFE-GE-VALUE" not in output
    rows.write_text(json.dumps({"rows": [{"creator": "ACME", "tag": "(0018,xx23)"}]}))
    with pytest.raises(MedlibError, match=r"row 1: expected a creator and a private tag like \(0019,xx23\)"):
        load_safe_private(rows)


# -- markers: every attribute of the table, nested, and private ------------------------------

STRING_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT", "UI", "OB", "OW",
              "UN"}


def marker(vr: str, n: int, dates) -> str | bytes:
    """A value unique to attribute ``n`` that cannot appear in an output by accident."""
    if vr in ("DA", "DT"):  # 12 years apart: no date shift (1-11 years) lands on another marker
        year = 1000 + 12 * next(dates)
        return f"{year:04d}0115" + ("101010" if vr == "DT" else "")
    if vr == "TM":
        return f"{n % 24:02d}{n % 60:02d}{(n // 60) % 60:02d}.{n:06d}"
    if vr == "AS":
        return f"{n % 1000:03d}W"
    if vr == "DS":
        return f"7.{n:05d}"
    if vr == "UI":
        return f"1.2.826.0.1.3680043.10.999.1{n:06d}"  # fixed width: no marker is a prefix of another
    if vr in ("OB", "OW", "UN"):
        return f"MK{n:06d}".encode()
    return f"MK{n:06d}"


def table_attributes():
    """(tag, keyword, VR) for every attribute of the table that pydicom's dictionary knows."""
    out = []
    for tag, rule in load_profile().by_tag.items():
        if rule.keyword and tag >> 16 not in (0x0000, 0x0002, 0x0012) and tag != keyword_dict[
                "LongitudinalTemporalInformationModified"]:
            vr = dictionary_VR(tag)
            if vr in STRING_VRS or vr == "SQ":
                out.append((tag, rule.keyword, vr))
    return out


CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
NESTED_PATH = ("ReferencedSeriesSequence", "ModalityLUTSequence", "VOILUTSequence")


def marked_dataset() -> tuple[Dataset, dict[bytes, tuple[int, int]]]:
    """Every table attribute with a marker at the top level and three sequences deep, plus
    private blocks at both levels. Returns the dataset and marker bytes → (tag, level)."""
    markers: dict[bytes, tuple[int, int]] = {}
    dates = itertools.count()

    def fill(ds: Dataset, level: int) -> None:
        for i, (tag, keyword, vr) in enumerate(table_attributes()):
            n = level * 1000 + i
            if vr == "SQ":
                item = Dataset()
                item.add_new(0x00080100, "SH", f"MQ{n:06d}")  # CodeValue inside the sequence
                ds.add_new(tag, vr, Sequence([item]))
                markers[f"MQ{n:06d}".encode()] = (tag, level)
                continue
            value = marker(vr, n, dates)
            ds.add_new(tag, vr, value)
            markers[value if isinstance(value, bytes) else value.encode()] = (tag, level)
        ds.add_new(0x00090010, "LO", f"MKPRIVCREATOR{level}")
        ds.add_new(0x00091001, "LO", f"MKPRIVVALUE{level}")
        markers[f"MKPRIVCREATOR{level}".encode()] = (0x00090010, level)
        markers[f"MKPRIVVALUE{level}".encode()] = (0x00091001, level)

    ds = Dataset()
    fill(ds, 0)
    # three sequences deep, through sequences the profile keeps (not in the table)
    inner = Dataset()
    fill(inner, 1)
    for keyword in reversed(NESTED_PATH):
        assert load_profile().rule(keyword_dict[keyword]) is None
        outer = Dataset()
        setattr(outer, keyword, Sequence([inner]))
        inner = outer
    for elem in inner:
        ds.add(elem)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID = str(ds.SOPInstanceUID)
    return ds, markers


def as_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


OPTION_SETS = [
    (),
    ("retain_device_identity", "retain_institution_identity", "retain_patient_characteristics"),
    ("retain_full_dates", "retain_uids"),
    ("retain_modified_dates", "clean_descriptors", "clean_structured_content", "clean_graphics"),
]


def anonymized_bytes(engine: str, anonymizer: Anonymizer, original: bytes) -> bytes:
    """A file anonymized by the whole-dataset path or the byte-level one (tree runs use the latter)."""
    if engine == "dataset":
        return as_bytes(anonymizer.anonymize(pydicom.dcmread(io.BytesIO(original))))
    return PartialFile(original, anonymizer).anonymize()


@pytest.mark.parametrize("engine", ["dataset", "bytes"])
@pytest.mark.parametrize("options", OPTION_SETS)
def test_only_markers_the_options_keep_survive(options, engine):
    ds, markers = marked_dataset()
    original = as_bytes(ds)
    assert all(m in original for m in markers)
    anonymizer = Anonymizer(KEY, options)
    output = anonymized_bytes(engine, anonymizer, original)
    profile = load_profile()
    for m, (tag, level) in markers.items():
        rule = profile.rule(tag)
        action = anonymizer.action(tag, (CT_IMAGE, () if level == 0 else NESTED_PATH))
        kept = action is Action.KEEP and not (tag >> 16) % 2
        # Modified Dates moves dates; times of day are kept (they carry no date)
        kept |= action is Action.CLEAN and dictionary_VR(tag) == "TM" and "retain_modified_dates" in options
        if m.startswith(b"MQ"):  # inside a sequence: kept unless the sequence is removed or emptied
            kept = action not in (Action.REMOVE, Action.ZERO)
        assert (m in output) == kept, f"{rule.name} ({tag:08X}) level {level}: kept={kept}"
    assert check_dataset(pydicom.dcmread(io.BytesIO(output)), "marked") == []


def equivalence_cases() -> list[tuple[str, bytes]]:
    """Every readable file pydicom ships, and the marked dataset in both little-endian encodings."""
    from pydicom.data import get_testdata_file

    cases = [(p.name, p.read_bytes()) for p in sorted(Path(get_testdata_file("CT_small.dcm")).parent.glob("*.dcm"))]
    marked, _ = marked_dataset()
    cases.append(("marked", as_bytes(marked)))
    marked.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    cases.append(("marked, implicit VR", as_bytes(marked)))
    return cases


@pytest.mark.parametrize("options", OPTION_SETS[::3])
def test_byte_level_path_makes_the_same_dataset_as_the_whole_dataset_path(options):
    """Tree runs copy what the profile leaves alone instead of decoding it; the result must be
    the dataset that anonymizing the decoded file gives, with the same counts and mappings."""
    anonymizer = Anonymizer(KEY, options)
    compared = 0
    for name, data in equivalence_cases():
        try:
            partial = PartialFile(data, anonymizer)
        except NotRewritable:
            continue  # big endian, deflated, no Part 10 header, broken: the whole-dataset path's
        if "SOPInstanceUID" not in partial.dataset:
            continue
        fast_trace, trace = Trace(mappings=set()), Trace(mappings=set())
        fast = pydicom.dcmread(io.BytesIO(partial.anonymize(fast_trace)))
        whole = anonymizer.anonymize(read_dicom(io.BytesIO(data)), trace, in_place=True)
        whole = pydicom.dcmread(io.BytesIO(as_bytes(whole)))
        assert fast == whole, f"{name}: {sorted(set(fast.keys()) ^ set(whole.keys()))}"
        assert fast.file_meta == whole.file_meta, name
        assert fast_trace == trace, name
        assert fast.preamble == whole.preamble == b"\0" * 128
        compared += 1
    assert compared >= 55


def test_shifted_dates_stay_valid_even_for_early_years():
    from medlib.anonymize.anonymizer import _shift_one

    assert _shift_one("10000115", "DA", -400) == "09981211"
    assert _shift_one("00010105", "DA", -400) == ""  # before year 1: nothing to keep
    assert _shift_one("20240314101010.5+0100", "DT", -1) == "20240313101010.5+0100"


def test_a_dataset_is_not_modified_in_place():
    ds, _ = marked_dataset()
    before = as_bytes(ds)
    Anonymizer(KEY).anonymize(ds)
    assert as_bytes(ds) == before


# -- keyed UIDs, pseudonyms, dates --------------------------------------------------------------

def study(folder: Path, patient: str = "PAT-0001", name: str = "Doe^Jane", date=dt.date(2024, 3, 14)) -> list[Path]:
    """A CT series plus a derived image that references its first slice."""
    paths = write_ct_series(folder / "ct", patient_id=patient, patient_name=name, shape=(3, 8, 8), study_date=date)
    first = pydicom.dcmread(paths[0])
    derived = pydicom.dcmread(paths[1])
    derived.SOPInstanceUID = derived.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    derived.SeriesInstanceUID = generate_uid()
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = first.SOPClassUID, first.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID, series.ReferencedInstanceSequence = first.SeriesInstanceUID, Sequence([ref])
    derived.ReferencedSeriesSequence = Sequence([series])  # no rule: kept, its UIDs replaced
    (folder / "derived").mkdir()
    derived.save_as(folder / "derived" / "d1.dcm", enforce_file_format=True)
    return [*paths, folder / "derived" / "d1.dcm"]


def read_tree(root: Path) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in sorted(root.rglob("*.dcm"))]


def test_uid_references_stay_consistent_across_files(tmp_path: Path):
    study(tmp_path / "src")
    report = anonymize_tree(Anonymizer(KEY), tmp_path / "src", tmp_path / "out", workers=2, progress=False)
    assert report.totals == {"anonymized": 4}
    out = {str(ds.SOPInstanceUID): ds for ds in read_tree(tmp_path / "out")}
    originals = {str(ds.SOPInstanceUID): ds for ds in read_tree(tmp_path / "src")}
    assert len({str(ds.StudyInstanceUID) for ds in out.values()}) == 1
    assert len({str(ds.FrameOfReferenceUID) for ds in out.values()}) == 1
    for uid, ds in out.items():
        assert uid.startswith("2.25.") and uid == ds.file_meta.MediaStorageSOPInstanceUID
        assert uid not in originals
    derived = next(ds for ds in out.values() if "ReferencedSeriesSequence" in ds)
    referenced = derived.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID in out  # points at the anonymized first slice
    assert referenced.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert derived.ReferencedSeriesSequence[0].SeriesInstanceUID == out[referenced.ReferencedSOPInstanceUID].SeriesInstanceUID
    assert {str(ds.PatientID) for ds in out.values()} == {"ANON-" + KEY.pseudonym("patient-id", "PAT-0001")}
    assert all(ds.PatientIdentityRemoved == "YES" for ds in out.values())
    assert all(ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100" for ds in out.values())


def test_same_key_same_outputs_other_key_other_outputs(tmp_path: Path):
    study(tmp_path / "src")
    anonymize_tree(Anonymizer(KEY), tmp_path / "src", tmp_path / "a", progress=False)
    anonymize_tree(Anonymizer(KEY), tmp_path / "src", tmp_path / "b", workers=2, progress=False)
    anonymize_tree(Anonymizer(SiteKey(bytes(range(1, 33)))), tmp_path / "src", tmp_path / "c", progress=False)

    def digests(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in root.rglob("*.dcm")}

    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    assert not set(digests(tmp_path / "a")) & set(digests(tmp_path / "c"))


def test_modified_dates_shift_per_patient_and_keep_intervals(tmp_path: Path):
    study(tmp_path / "src" / "p1", date=dt.date(2024, 3, 14))
    write_ct_series(tmp_path / "src" / "p1-later", patient_id="PAT-0001", shape=(1, 8, 8), study_date=dt.date(2024, 5, 1))
    write_ct_series(tmp_path / "src" / "p2", patient_id="PAT-0002", shape=(1, 8, 8), study_date=dt.date(2024, 3, 14))
    anonymize_tree(Anonymizer(KEY, ["retain_modified_dates"]), tmp_path / "src", tmp_path / "out", progress=False)
    dates: dict[str, set] = {}
    for ds in read_tree(tmp_path / "out"):
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
        dates.setdefault(str(ds.PatientID), set()).add(dt.datetime.strptime(ds.StudyDate, "%Y%m%d").date())
    p1 = sorted(dates["ANON-" + KEY.pseudonym("patient-id", "PAT-0001")])
    p2 = sorted(dates["ANON-" + KEY.pseudonym("patient-id", "PAT-0002")])
    assert len(p1) == 2 and (p1[1] - p1[0]).days == (dt.date(2024, 5, 1) - dt.date(2024, 3, 14)).days
    assert p1[0] == dt.date(2024, 3, 14) + dt.timedelta(days=KEY.date_shift_days("PAT-0001"))
    assert p1[0] != p2[0] and p1[0] < dt.date(2024, 3, 14) and p2[0] < dt.date(2024, 3, 14)


# -- tree runs: nothing lost, resumable, quarantine --------------------------------------------

def test_bad_files_are_reported_and_originals_untouched(tmp_path: Path):
    src = tmp_path / "src"
    study(src)
    (src / "notes.txt").write_text("not DICOM")
    good = next((src / "ct").glob("*.dcm"))
    (src / "truncated.dcm").write_bytes(good.read_bytes()[:300])
    (src / "cut-in-pixels.dcm").write_bytes(good.read_bytes()[:-40])
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.rglob("*") if p.is_file()}
    report = anonymize_tree(Anonymizer(KEY), src, tmp_path / "out", progress=False)
    outcomes = {f.source: f for f in report.files}
    assert outcomes["notes.txt"].outcome == "skipped" and "not a DICOM file" in outcomes["notes.txt"].reason
    for name in ("truncated.dcm", "cut-in-pixels.dcm"):
        assert outcomes[name].outcome in ("skipped", "failed") and outcomes[name].reason, outcomes[name]
    assert report.totals["anonymized"] == 4
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.rglob("*") if p.is_file()} == before
    assert not list((tmp_path / "out").rglob(".tmp-*"))


def test_interrupted_run_resumes_byte_identically(tmp_path: Path):
    src, out = tmp_path / "src", tmp_path / "out"
    study(src)
    first = anonymize_tree(Anonymizer(KEY), src, out, progress=False)
    finished = {p: p.read_bytes() for p in out.rglob("*.dcm")}
    # interrupted: two files journaled, a third written but not journaled, the fourth not written
    journal = (out / JOURNAL).read_text().splitlines()
    (out / JOURNAL).write_text("\n".join(journal[:2]) + "\n")
    (out / first.files[3].output).unlink()
    report = anonymize_tree(Anonymizer(KEY), src, out, progress=False)
    assert report.totals == {"done-before": 2, "anonymized": 2}
    assert {p: p.read_bytes() for p in out.rglob("*.dcm")} == finished
    assert len((out / JOURNAL).read_text().split()) == 4


def test_burned_in_candidates_are_quarantined(tmp_path: Path):
    src = tmp_path / "src"
    paths = write_ct_series(src, shape=(2, 8, 8))
    us = pydicom.dcmread(paths[1])
    us.Modality = "US"
    us.save_as(paths[1], enforce_file_format=True)
    report = anonymize_tree(Anonymizer(KEY), src, tmp_path / "out", progress=False, pixels=PixelPolicy(ocr=None))
    assert report.totals == {"anonymized": 1, "quarantined": 1}
    quarantined = next(f for f in report.files if f.outcome == "quarantined")
    assert "US" in quarantined.reason and "no pixel rule and no OCR" in quarantined.reason
    assert (tmp_path / "out.quarantine" / quarantined.output).is_file()
    assert not (tmp_path / "out" / quarantined.output).exists()
    # with OCR (the default) a candidate without text is read, found clean and sent on
    report = anonymize_tree(Anonymizer(KEY), src, tmp_path / "ocr", progress=False)
    assert report.totals == {"anonymized": 2}
    cleaned = next(f for f in report.files if f.reason)
    assert "OCR found no text" in cleaned.reason and cleaned.blanked == []
    assert pydicom.dcmread(tmp_path / "ocr" / cleaned.output).BurnedInAnnotation == "NO"


def test_pydicom_test_files_anonymize_and_read_back(tmp_path: Path):
    """Every file pydicom ships for its own tests: CT, MR, RT, SR, US, multi-frame, compressed,
    big endian, implicit VR, private sequences, and deliberately broken ones."""
    from pydicom.data import get_testdata_file

    shipped = Path(get_testdata_file("CT_small.dcm")).parent
    src = tmp_path / "src"
    src.mkdir()
    for path in shipped.glob("*.dcm"):
        shutil.copy(path, src / path.name)
    report = anonymize_tree(Anonymizer(KEY), src, tmp_path / "out", workers=2, progress=False)
    made = report.totals.get("anonymized", 0) + report.totals.get("quarantined", 0)
    assert "failed" not in report.totals, [f for f in report.files if f.outcome == "failed"]
    assert made >= 35 and made + report.totals.get("duplicate", 0) >= 60, report.totals
    for f in report.files:
        assert f.outcome in ("anonymized", "quarantined") or f.reason, f
    # bare datasets without the Part 10 header are anonymized into proper DICOM files
    for name in ("ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm", "rtstruct.dcm"):
        assert next(f for f in report.files if f.source == name).outcome in ("anonymized", "quarantined", "duplicate")
    assert next(f for f in report.files if f.source == "no_meta.dcm").outcome == "skipped"  # it has no SOP UIDs
    # cut inside its pixel data (rtplan_truncated.dcm ends on an element boundary: it reads as a
    # shorter, valid dataset, and is anonymized as such)
    assert next(f for f in report.files if f.source == "MR_truncated.dcm").outcome == "skipped"
    for root in (tmp_path / "out", tmp_path / "out.quarantine"):
        for ds in read_tree(root):
            assert ds.PatientIdentityRemoved == "YES"
            assert not any(elem.tag.is_private for elem in ds.iterall())
    files, findings = check_tree(tmp_path / "out")
    assert files == report.totals["anonymized"] and findings == []
    # variants of one instance (other transfer syntaxes) share its UID: one output, the rest reported
    duplicates = [f for f in report.files if f.outcome == "duplicate"]
    assert duplicates and all("same SOP Instance UID" in f.reason for f in duplicates)
    written = {f.output for f in report.files if f.outcome in ("anonymized", "quarantined")}
    assert {f.output for f in duplicates} <= written


# -- the key --------------------------------------------------------------------------------

def test_key_file_is_private_and_never_overwritten(tmp_path: Path):
    path = tmp_path / "site.key"
    key = SiteKey.generate(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert SiteKey.load(path).uid("1.2.3") == key.uid("1.2.3")
    with pytest.raises(KeyFileError, match="never overwritten"):
        SiteKey.generate(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        SiteKey.load(path)
    assert path.read_text().strip() not in repr(key)


# -- the command line and an independent validator ------------------------------------------

def medlib(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the CLI; its audit events wait in ``cwd/audit-buffer.jsonl`` (no audit service here)."""
    env = {k: v for k, v in os.environ.items() if k != "MEDHUB_AUDIT_URL"} | {
        "MEDHUB_AUDIT_BUFFER": str(cwd / "audit-buffer.jsonl")}
    return subprocess.run([sys.executable, "-m", "medlib.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env)


def test_cli_keygen_run_check(tmp_path: Path):
    study(tmp_path / "src")
    assert medlib("anonymize", "keygen", "site.key", cwd=tmp_path).returncode == 0
    run = medlib("anonymize", "run", "src", "out", "--key-file", "site.key", "--workers", "2",
                 "--option", "retain_modified_dates", "--report", "report.json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["totals"] == {"anonymized": 4} and report["actions"]["U"] > 0
    (event,) = [json.loads(line) for line in (tmp_path / "audit-buffer.jsonl").read_text().splitlines()]
    assert (event["action"], event["source"], event["object"]) == ("anonymize-run", "cli", {"files": 4, "anonymized": 4})
    key_hex = (tmp_path / "site.key").read_text().strip()
    for path in [tmp_path / "report.json", *(tmp_path / "out").rglob("*")]:
        if path.is_file():
            assert key_hex.encode() not in path.read_bytes()
    assert medlib("anonymize", "check", "out", cwd=tmp_path).returncode == 0
    dirty = medlib("anonymize", "check", "src", cwd=tmp_path)
    assert dirty.returncode == 1 and "PatientName" in dirty.stdout
    bad = medlib("anonymize", "run", "src", "out2", "--key-file", "missing.key", cwd=tmp_path)
    assert bad.returncode == 2 and "medlib anonymize keygen" in bad.stderr


def test_dciodvfy_finds_no_new_error(tmp_path: Path):
    paths = study(tmp_path / "src")
    anonymize_tree(Anonymizer(KEY), tmp_path / "src", tmp_path / "out", progress=False)

    def errors(path: Path) -> set[str]:
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        return {line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")}

    source_errors = set().union(*(errors(p) for p in paths))
    for path in (tmp_path / "out").rglob("*.dcm"):
        assert errors(path) <= source_errors, path


# -- the site-local mapping store -------------------------------------------------------------

def test_mapping_store_reidentifies_and_keeps_originals_encrypted(tmp_path: Path):
    from medlib.anonymize.mapping import MappingStore, MappingStoreError

    study(tmp_path / "src")
    originals = read_tree(tmp_path / "src")
    store = MappingStore(tmp_path / "site-mapping.sqlite", KEY)
    anonymize_tree(Anonymizer(KEY), tmp_path / "src", tmp_path / "out", workers=2, progress=False, mapping_store=store)
    out = read_tree(tmp_path / "out")
    assert store.lookup(str(out[0].PatientID)) == [("patient-id", "PAT-0001")]
    assert store.lookup(str(out[0].PatientName)) == [("patient-name", "Doe^Jane")]
    assert store.lookup(str(out[0].StudyInstanceUID)) == [("uid", str(originals[0].StudyInstanceUID))]
    assert {o for ds in out for kind, o in store.lookup(str(ds.SOPInstanceUID)) if kind == "uid"} == {
        str(ds.SOPInstanceUID) for ds in originals}
    # and each output's original identifying values, for `check`'s residual scan
    identifiers = {tuple(pair) for pair in json.loads(next(o for kind, o in store.lookup(str(out[0].SOPInstanceUID))
                                                            if kind == "identifiers"))}
    assert {("PatientID", "PAT-0001"), ("PatientName part", "DOE"), ("PatientName part", "JANE")} <= identifiers
    store.close()

    raw = (tmp_path / "site-mapping.sqlite").read_bytes()
    assert b"PAT-0001" not in raw and b"Doe^Jane" not in raw
    assert str(originals[0].StudyInstanceUID).encode() not in raw
    assert os.stat(tmp_path / "site-mapping.sqlite").st_mode & 0o777 == 0o600
    with pytest.raises(MappingStoreError, match="another site key"):
        MappingStore(tmp_path / "site-mapping.sqlite", SiteKey(bytes(range(1, 33))))
    (tmp_path / "out2").mkdir()
    inside = MappingStore(tmp_path / "out2" / "m.sqlite", KEY)
    with pytest.raises(ValueError, match="must stay at the site"):
        anonymize_tree(Anonymizer(KEY), tmp_path / "src", tmp_path / "out2", progress=False, mapping_store=inside)
    inside.close()


def test_cli_reidentify(tmp_path: Path):
    study(tmp_path / "src")
    medlib("anonymize", "keygen", "site.key", cwd=tmp_path)
    run = medlib("anonymize", "run", "src", "out", "--key-file", "site.key", "--mapping-store", "map.sqlite",
                 "--report", "r.json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    pid = str(read_tree(tmp_path / "out")[0].PatientID)
    found = medlib("anonymize", "reidentify", pid, "--key-file", "site.key", "--store", "map.sqlite", cwd=tmp_path)
    assert found.returncode == 0 and found.stdout.split("\t")[1:] == ["patient-id", "PAT-0001\n"]
    missing = medlib("anonymize", "reidentify", "ANON-NOPE", "--key-file", "site.key", "--store", "map.sqlite",
                     cwd=tmp_path)
    assert missing.returncode == 1 and "not in the store" in missing.stdout


# -- Clean Pixel Data -------------------------------------------------------------------------

PIXEL_RULES = """
[[rule]]
name = "synthetic US banner"
modality = "US"
manufacturer = "MEDH*"
rows = 16
columns = 16
rectangles = [[0, 0, 16, 3], [12, 12, 4, 4]]
"""


def test_pixel_rules_blank_burned_in_text_and_release_the_file(tmp_path: Path):
    from medlib.anonymize.pixels import PixelRuleError, load_rules

    src = tmp_path / "src"
    paths = write_ct_series(src, shape=(3, 16, 16))
    for path in paths[:2]:  # the synthetic series' manufacturer is "medhub"
        ds = pydicom.dcmread(path)
        ds.Modality, ds.BurnedInAnnotation = "US", "YES"
        ds.save_as(path, enforce_file_format=True)
    other = pydicom.dcmread(paths[2])
    other.Modality, other.Manufacturer = "US", "OtherVendor"
    other.save_as(paths[2], enforce_file_format=True)
    (tmp_path / "rules.toml").write_text(PIXEL_RULES)
    rules = load_rules(tmp_path / "rules.toml")

    report = anonymize_tree(Anonymizer(KEY), src, tmp_path / "out", progress=False,
                            pixels=PixelPolicy(rules=rules, ocr=None))
    assert report.totals == {"anonymized": 2, "quarantined": 1}
    assert "no pixel rule matches and OCR is off" in next(f for f in report.files if f.outcome == "quarantined").reason
    for ds in read_tree(tmp_path / "out"):
        original = pydicom.dcmread(next(p for p in paths[:2] if pydicom.dcmread(p).InstanceNumber == ds.InstanceNumber))
        pixels, before = ds.pixel_array, original.pixel_array
        assert (pixels[:3, :] == 0).all() and (pixels[12:, 12:] == 0).all()
        assert (pixels[3:12, :12] == before[3:12, :12]).all()  # the rest untouched
        assert ds.BurnedInAnnotation == "NO"
        assert "113101" in [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
    (tmp_path / "bad.toml").write_text('[[rule]]\nname = "x"\nrectangles = [[0, 0, -1, 2]]\n')
    with pytest.raises(PixelRuleError, match="rule\\[0\\] \\(x\\): rectangles"):
        load_rules(tmp_path / "bad.toml")
