"""De-identification with nothing left behind: structured content, free text outside the
profile's table, the residual scan, burned-in text found by OCR, and corrupt input.

Each test plants identifying values where a real file carries them and asserts, byte for byte
on the output, that none is left; the OCR tests draw text as scanners do (tests/burned_in.py)
and compare pixels with the truth.
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import DicomDictionary, dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from scipy import ndimage

from burned_in import Patient, angiography, instance, ultrasound
from medlib.anonymize import Anonymizer, SiteKey, load_profile
from medlib.anonymize.anonymizer import Trace, encode
from medlib.anonymize.check import check_tree
from medlib.anonymize.free_text import load_free_text
from medlib.anonymize.mapping import MappingStore
from medlib.anonymize.ocr import OcrSettings, overlay_threshold, read_words, text_layer
from medlib.anonymize.rewrite import PartialFile
from medlib.anonymize.tree import PixelPolicy, anonymize_tree

KEY = SiteKey(bytes(range(32)))
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def both_engines(anonymizer: Anonymizer, ds: Dataset) -> list[tuple[bytes, Trace]]:
    """The output of the whole-dataset path and of the byte-level path, with their traces."""
    data = encode(ds)
    whole, fast = Trace(), Trace()
    out = encode(anonymizer.anonymize(pydicom.dcmread(io.BytesIO(data)), whole))
    return [(out, whole), (PartialFile(data, anonymizer).anonymize(fast), fast)]


def base(sop_class: str, modality: str) -> Dataset:
    """An instance of one patient, with the identifying values the tests look for."""
    ds = instance(sop_class, modality)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Whitfield^Margaret^Ann", "MRN90210", "19560314"
    ds.AccessionNumber, ds.ReferringPhysicianName = "ACC55501", "Okafor^Chidi"
    ds.InstitutionName = "Northbridge Royal Infirmary"
    return ds


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def content(value_type: str, name: Dataset, **values) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", value_type
    item.ConceptNameCodeSequence = Sequence([name])
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


ORIGINAL_UID = "1.2.826.0.1.3680043.10.999.424242"


def structured_report() -> Dataset:
    """A radiologist's report: typed text naming the patient and a colleague, a person, a date,
    a UID reference, a local code typed at the site, and coded and numeric findings."""
    ds = base(COMPREHENSIVE_SR, "SR")
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([code("18748-4", "LN", "Diagnostic Imaging Report")])
    finding = content("CODE", code("121071", "DCM", "Finding"),
                      ConceptCodeSequence=Sequence([code("10200004", "SCT", "Liver")]))
    local = content("CODE", code("121071", "DCM", "Finding"),
                    ConceptCodeSequence=Sequence([code("LX42", "99NRI", "Whitfield follow-up per Dr Okafor")]))
    size = content("NUM", code("410668003", "SCT", "Length"))
    measured = Dataset()
    measured.NumericValue = "42.5"
    measured.MeasurementUnitsCodeSequence = Sequence([code("mm", "UCUM", "millimeter")])
    size.MeasuredValueSequence = Sequence([measured])
    ds.ContentSequence = Sequence([
        content("TEXT", code("121071", "DCM", "Finding"),
                TextValue="Mrs Margaret Whitfield (MRN90210, born 14.03.1956) has a 42 mm lesion in the liver; "
                          "discussed with Dr Okafor."),
        content("PNAME", code("121008", "DCM", "Person Observer Name"), PersonName="Okafor^Chidi"),
        content("DATE", code("111060", "DCM", "Study Date"), Date="20240501"),
        content("UIDREF", code("121018", "DCM", "Procedure Study Instance UID"), UID=ORIGINAL_UID),
        finding, local, size,
    ])
    return ds


IDENTIFYING = [b"Whitfield", b"WHITFIELD", b"Margaret", b"Okafor", b"OKAFOR", b"MRN90210", b"14.03.1956", b"19560314",
               b"ACC55501", b"Northbridge", ORIGINAL_UID.encode()]


def test_a_report_keeps_no_typed_text_names_dates_or_uids_under_the_basic_profile():
    for output, trace in both_engines(Anonymizer(KEY), structured_report()):
        for value in IDENTIFYING + [b"20240501", b"follow-up", b"lesion"]:
            assert value not in output, value
        ds = pydicom.dcmread(io.BytesIO(output))
        items = {str(i.ValueType): i for i in ds.ContentSequence}
        assert items["TEXT"].TextValue == "ANONYMIZED" and str(items["PNAME"].PersonName) == "ANONYMIZED"
        assert items["DATE"].Date == "19000101" and items["UIDREF"].UID.startswith("2.25.")
        # coded content stays: standard meanings, numbers, units; a local scheme's meaning does not
        meanings = [str(i.ConceptCodeSequence[0].CodeMeaning) for i in ds.ContentSequence if i.ValueType == "CODE"]
        assert meanings == ["Liver", "ANONYMIZED"]
        assert items["NUM"].MeasuredValueSequence[0].NumericValue == 42.5
        assert all("ValueType" in i and "ConceptNameCodeSequence" in i for i in ds.ContentSequence)
        assert {"TextValue", "CodeMeaning (local coding scheme)"} <= trace.beyond_table


def test_clean_structured_content_keeps_the_text_less_the_identifiers():
    anonymizer = Anonymizer(KEY, {"clean_structured_content", "retain_modified_dates"})
    for output, trace in both_engines(anonymizer, structured_report()):
        for value in IDENTIFYING:
            assert value not in output, value
        ds = pydicom.dcmread(io.BytesIO(output))
        items = {str(i.ValueType): i for i in ds.ContentSequence}
        text = items["TEXT"].TextValue
        assert "has a 42 mm lesion in the liver; discussed with Dr" in text and "XXXXXXXXX" in text
        assert str(items["PNAME"].PersonName) == "ANONYMIZED"  # a person, by its value type
        assert items["DATE"].Date != "20240501" and len(items["DATE"].Date) == 8  # shifted
        local = [i for i in ds.ContentSequence if i.ValueType == "CODE"][1].ConceptCodeSequence[0].CodeMeaning
        assert local == "XXXXXXXXX follow-up per Dr XXXXXX"
        assert any(hit.startswith("ContentSequence[0]/TextValue") for hit in trace.residual)
        assert all("Whitfield" not in hit and "WHITFIELD" not in hit for hit in trace.residual)  # never the value


def free_text_attributes() -> list[tuple[int, str]]:
    """(tag, VR) of every standard attribute with a free-text VR that Table E.1-1 does not list."""
    profile, policy = load_profile(), load_free_text()
    out = []
    for tag, (vr, vm, name, retired, keyword) in DicomDictionary.items():
        if (vr in policy.text_vrs and keyword and tag >> 16 not in (0x0000, 0x0002, 0x0004) and tag & 0xFFFF
                and tag not in profile.by_tag and tag not in policy.act and tag >> 16 & 0xFF00 not in (0x5000, 0x6000)):
            out.append((tag, vr))
    return out


def test_free_text_outside_the_table_is_removed_unless_the_reviewed_list_keeps_it():
    ds = base("1.2.840.10008.5.1.4.1.1.2", "CT")
    planted = {}
    for n, (tag, vr) in enumerate(free_text_attributes()):
        value = f"FT{n:05d}"
        ds.add_new(tag, vr, value)
        planted[value.encode()] = tag
    ds.add_new(0xABCC0012, "LO", "UNDEFINED-GROUP-VALUE")  # a group the standard does not define
    keep = load_free_text().keep
    assert len(planted) > 400 and 0x00080070 in keep  # Manufacturer
    for output, trace in both_engines(Anonymizer(KEY), ds):
        survivors = {tag for value, tag in planted.items() if value in output}
        # DeidentificationMethod is kept, and written anew with what was done
        assert survivors == {tag for tag in planted.values() if tag in keep} - {0x00120063}
        assert b"UNDEFINED-GROUP-VALUE" not in output
        assert "an attribute the standard does not define" not in trace.beyond_table  # reported by tag
        assert "(ABCC,0012)" in trace.beyond_table and "CompletionFlagDescription" in trace.beyond_table
        assert "Manufacturer" not in trace.beyond_table
    assert check_tree_of(output) == []


def test_a_site_keeps_the_free_text_it_has_reviewed(tmp_path: Path):
    from medlib.anonymize.free_text import load_keep_text
    from medlib.errors import MedlibError

    src = tmp_path / "src"
    src.mkdir()
    ds = base("1.2.840.10008.5.1.4.1.1.2", "CT")
    ds.ContentDescription, ds.ImageID = "Portal venous phase", "IMG-7"
    ds.save_as(src / "ct.dcm", enforce_file_format=True)
    rows = tmp_path / "keep.json"
    rows.write_text('{"keep": [{"keyword": "ContentDescription", "reason": "the scanner\'s phase name"}]}')
    keep = load_keep_text(rows)
    report = anonymize_tree(Anonymizer(KEY, keep_text=keep), src, tmp_path / "out", progress=False, workers=2)
    (out,) = (tmp_path / "out").rglob("*.dcm")
    data = out.read_bytes()
    assert b"Portal venous phase" in data and b"IMG-7" not in data
    assert report.files[0].beyond_table == ["ImageID"]
    assert check_tree(tmp_path / "out", keep_text=keep)[1] == []
    assert [f.keyword for f in check_tree(tmp_path / "out")[1]] == ["ContentDescription"]  # without the site's list
    for row, error in (('{"keyword": "PatientComments", "reason": "x"}', "Table E.1-1 lists it"),
                       ('{"keyword": "Rows", "reason": "x"}', "cannot carry free text"),
                       ('{"keyword": "ImageID"}', "give the reason"),
                       ('{"keyword": "NoSuchThing", "reason": "x"}', "not an attribute keyword")):
        rows.write_text(f'{{"keep": [{row}]}}')
        with pytest.raises(MedlibError, match=error):
            load_keep_text(rows)


def check_tree_of(output: bytes) -> list:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "out.dcm").write_bytes(output)
        return check_tree(folder)[1]


def test_the_free_text_rules_are_data_about_attributes_outside_the_table():
    policy, profile = load_free_text(), load_profile()
    for tag in policy.keep | set(policy.act):
        assert tag not in profile.by_tag, keyword_for_tag(tag)
        assert dictionary_VR(tag) in policy.text_vrs, keyword_for_tag(tag)
    assert policy.is_local_scheme("99NRI") and policy.is_local_scheme("L") and not policy.is_local_scheme("SCT")


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_the_byte_level_path_finds_identifiers_in_every_value_the_residual_scan_reads(syntax):
    """The byte-level path looks for the input's identifiers only in the values the residual
    scan reads (not in pixel or waveform samples): a name typed at any depth, in any text VR,
    in either encoding, must still be found and replaced as the whole-dataset path does."""
    ds = base("1.2.840.10008.5.1.4.1.1.2", "CT")
    ds.file_meta.TransferSyntaxUID = syntax
    ds.ConvolutionKernel = "B30f MRN90210"  # SH, kept by the reviewed list
    inner = Dataset()  # two levels down, in a sequence with no rule (kept, its items follow the profile)
    inner.WindowCenterWidthExplanation = "for Whitfield"
    outer = Dataset()
    outer.ReferencedInstanceSequence = Sequence([inner])
    ds.ReferencedSeriesSequence = Sequence([outer])
    ds.add_new(0x54000110, "OW", b"MRN90210" * 4)  # ChannelSensitivity-like samples: not text, not read
    outputs = both_engines(Anonymizer(KEY), ds)
    for output, trace in outputs:
        assert b"MRN90210" * 4 in output  # samples are samples
        assert b"B30f MRN90210" not in output and b"Whitfield" not in output
        assert {"ConvolutionKernel: PatientID",
                "ReferencedSeriesSequence[0]/ReferencedInstanceSequence[0]/WindowCenterWidthExplanation: "
                "PatientName part"} <= set(trace.residual)
    (whole, whole_trace), (fast, fast_trace) = outputs
    assert pydicom.dcmread(io.BytesIO(fast)) == pydicom.dcmread(io.BytesIO(whole))
    assert fast_trace.residual == whole_trace.residual


def test_the_residual_scan_replaces_identifiers_the_profile_left_and_check_finds_them(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    ds = base("1.2.840.10008.5.1.4.1.1.2", "CT")
    ds.WindowCenterWidthExplanation = "WHITFIELD LIVER"  # kept by the reviewed list
    ds.ConvolutionKernel = "B30f MRN90210"
    other = Dataset()  # the patient's ID at another hospital, only in a sequence
    other.PatientID, other.IssuerOfPatientID = "NRI-77410", "Northbridge"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = "x"  # in the table: removed
    ds.SegmentAlgorithmName = "atlas NRI-77410 v2"  # kept by the reviewed list
    ds.add_new(0x00290010, "LO", "ACME 1.0")  # a private block the site declared safe
    ds.add_new(0x00291001, "OB", b"scan of Whitfield^Margaret ACC55501 ")
    ds.save_as(src / "ct.dcm", enforce_file_format=True)
    sr = structured_report()
    sr.save_as(src / "sr.dcm", enforce_file_format=True)
    site = tmp_path / "safe.json"
    site.write_text('{"rows": [{"creator": "ACME 1.0", "tag": "(0029,xx01)", "meaning": "scan note"}]}')
    from medlib.anonymize.profile import load_safe_private

    key = SiteKey.generate(tmp_path / "site.key")
    anonymizer = Anonymizer(key, {"retain_safe_private", "clean_structured_content"},
                            safe_private=load_safe_private(site))
    store = MappingStore(tmp_path / "mapping.sqlite", key)
    report = anonymize_tree(anonymizer, src, tmp_path / "out", progress=False, mapping_store=store)
    assert report.totals == {"anonymized": 2}
    for path in (tmp_path / "out").rglob("*.dcm"):
        data = path.read_bytes()
        for value in IDENTIFYING + [b"NRI-77410"]:
            assert value not in data, (path.name, value)
    ct = next(f for f in report.files if f.source == "ct.dcm")
    assert {"ConvolutionKernel: PatientID", "WindowCenterWidthExplanation: PatientName part",
            "(0029,1001): AccessionNumber", "SegmentAlgorithmName: PatientID"} <= set(ct.residual)
    assert '"residual": ' in report.to_json()

    # check, given the mapping store, runs the same scan: clean outputs have no finding...
    assert check_tree(tmp_path / "out", load_safe_private(site), store)[1] == []
    # ...and a name put back (another tool, a hand edit) is found; an unreadable file is reported
    out_ct = next((tmp_path / "out").rglob(ct.output.split("/")[-1]))
    edited = pydicom.dcmread(out_ct)
    edited.SeriesDescription = "for M. Whitfield"
    edited.save_as(out_ct, enforce_file_format=True)
    # an element with a VR that does not exist, in a group the standard does not define
    (tmp_path / "out" / "broken.dcm").write_bytes(out_ct.read_bytes() + b"\xcc\xab\x12\x00ZZ\x04\x00abcd")
    files, findings = check_tree(tmp_path / "out", load_safe_private(site), store)
    assert files == 3
    reasons = {(f.keyword, f.reason) for f in findings}
    assert ("SeriesDescription", "holds an original identifying value (PatientName part)") in reasons
    assert any(f.file == "broken.dcm" and f.reason.startswith("cannot be read") for f in findings)
    store.close()
    cli = subprocess.run([sys.executable, "-m", "medlib.cli", "anonymize", "check", str(tmp_path / "out"),
                          "--safe-private", str(site), "--mapping-store", str(tmp_path / "mapping.sqlite"),
                          "--key-file", str(tmp_path / "site.key")], capture_output=True, text=True,
                         env=cli_env(tmp_path))
    assert cli.returncode == 1 and "SeriesDescription" in cli.stdout and "broken.dcm: " in cli.stdout, cli.stderr


def cli_env(folder: Path) -> dict[str, str]:
    """The CLI's environment: its audit events wait in ``folder`` (no audit service here)."""
    import os

    return {k: v for k, v in os.environ.items() if k != "MEDHUB_AUDIT_URL"} | {
        "MEDHUB_AUDIT_BUFFER": str(folder / "audit-buffer.jsonl")}


# -- burned-in text -----------------------------------------------------------------------------

def burned_in_cases(rng: np.random.Generator) -> dict[str, tuple[Dataset, np.ndarray, Patient]]:
    """Ultrasound (grey, RGB cine, small font, RLE-compressed) and angiography (10-bit, multi-frame),
    each with another patient and another scanner's layout."""
    patients = [Patient(), Patient("NAKAMURA^HIROSHI", "PID0042137", birth=__import__("datetime").date(1949, 11, 2),
                                   accession="A2024117", institution="Lakeside General", physician="QUINN^MAEVE"),
                Patient("O'BRIEN^SIOBHAN", "H77310942", accession="RX993311", physician="ADEYEMI^TUNDE")]
    cases = {}
    ds, mask = ultrasound(rng, patients[0], style=0)
    cases["us-grey"] = (ds, mask, patients[0])
    ds, mask = ultrasound(rng, patients[1], frames=3, rgb=True, style=1, size=14)
    cases["us-rgb-cine"] = (ds, mask, patients[1])
    ds, mask = ultrasound(rng, patients[2], style=2, size=11)
    ds.compress(RLELossless)
    cases["us-rle"] = (ds, mask, patients[2])
    ds, mask = angiography(rng, patients[1], frames=2)
    cases["xa-cine"] = (ds, mask, patients[1])
    return cases


def frames_of(ds: Dataset) -> np.ndarray:
    pixels = ds.pixel_array
    return pixels if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels[np.newaxis]


def test_ocr_blanks_burned_in_text_and_sends_the_file_on(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    cases = burned_in_cases(np.random.default_rng(20))
    originals = {}
    for name, (ds, mask, patient) in cases.items():
        ds.save_as(src / f"{name}.dcm", enforce_file_format=True)
        originals[name] = frames_of(pydicom.dcmread(src / f"{name}.dcm"))
    report = anonymize_tree(Anonymizer(KEY), src, tmp_path / "out", progress=False, workers=2)
    assert report.totals == {"anonymized": len(cases)}, [(f.source, f.reason) for f in report.files]
    settings = OcrSettings()
    for outcome in report.files:
        name = outcome.source.removesuffix(".dcm")
        _, mask, patient = cases[name]
        out = pydicom.dcmread(tmp_path / "out" / outcome.output)
        assert out.BurnedInAnnotation == "NO" and out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert "113101" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
        assert outcome.blanked and "OCR blanked" in outcome.reason
        if name == "us-rle":
            assert "decoded from RLE Lossless and written uncompressed" in outcome.reason
        before, after = originals[name], frames_of(out)
        grey = (lambda f: f.max(axis=-1)) if after.ndim == 4 else (lambda f: f)
        # every pixel a glyph touched is blank, in every frame
        assert (grey(after)[:, mask] == 0).all(), f"{name}: {(grey(after)[:, mask] != 0).sum()} glyph pixels left"
        # the image away from the text is as it was
        near_text = ndimage.binary_dilation(mask, np.ones((21, 21), bool))
        assert (grey(after)[:, ~near_text] == grey(before)[:, ~near_text]).all(), name
        # and OCR finds none of the identifiers in what was sent on
        for frame, original in zip(after, before):
            layer = text_layer(frame, overlay_threshold(original, settings), settings.scale)
            words = read_words(layer, settings) if layer is not None else []
            assert not words, f"{name}: OCR still reads {words}"
        read = " ".join(w for f in before for w in ocr_text(f, settings)).upper()
        assert any(token in read for token in patient.identifiers()), f"{name}: the input's text was not legible: {read}"


def ocr_text(frame: np.ndarray, settings: OcrSettings) -> list[str]:
    """What Tesseract reads in a frame (to show the input was legible)."""
    layer = text_layer(frame, overlay_threshold(frame, settings), settings.scale)
    return [] if layer is None else [w.text for w in read_words(layer, settings)]


def test_what_ocr_cannot_decide_or_decode_stays_in_quarantine(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(5)
    # a scanned page: text over most of the frame reads as text everywhere
    page, _ = ultrasound(rng, Patient(), style=0)
    frame = np.zeros((480, 640), np.uint8)
    from PIL import Image, ImageDraw

    from burned_in import font

    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    for row in range(20):
        draw.text((8, 6 + 23 * row), "Clinical history and findings dictated for the referring team " * 2,
                  fill=255, font=font(18, 0))
    page.PixelData = np.array(image).tobytes()
    page.Modality = "DOC"
    page.save_as(src / "page.dcm", enforce_file_format=True)
    # a secondary capture compressed with a codec this machine lacks
    shutil.copy(get_testdata_file("SC_rgb_jpeg_gdcm.dcm"), src / "jpeg-lossless.dcm")
    report = anonymize_tree(Anonymizer(KEY), src, tmp_path / "out", progress=False)
    reasons = {f.source: f.reason for f in report.files}
    assert report.totals == {"quarantined": 2}, reasons
    assert "OCR cannot decide" in reasons["page.dcm"] and "reads as text" in reasons["page.dcm"]
    assert "cannot be decoded" in reasons["jpeg-lossless.dcm"]
    # without the language's data, candidates wait in quarantine and the report says what to install
    ultrasound(rng, Patient(), style=1)[0].save_as(src / "us.dcm", enforce_file_format=True)
    report = anonymize_tree(Anonymizer(KEY), src, tmp_path / "out2", progress=False,
                            pixels=PixelPolicy(ocr=OcrSettings(language="xyz")))
    assert "apt-get install tesseract-ocr-xyz" in next(f.reason for f in report.files if f.source == "us.dcm")


# -- corrupt input ------------------------------------------------------------------------------

def corrupted(data: bytes, rng: random.Random) -> bytes:
    """``data`` damaged as storage and transfers damage files: flipped bytes, a truncation, an
    insertion, or a broken length field."""
    kind = rng.randrange(4)
    if kind == 0:
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(132, len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == 1:
        return data[:rng.randrange(140, len(data))]
    if kind == 2:
        at = rng.randrange(132, len(data))
        return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))) + data[at:]
    out = bytearray(data)  # a length field: the two or four bytes after a VR
    starts = [i for i in range(132, len(data) - 8) if data[i:i + 2].isalpha() and data[i:i + 2].isupper()]
    at = rng.choice(starts) + 2 if starts else 140
    out[at:at + 2] = rng.randrange(65536).to_bytes(2, "little")
    return bytes(out)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns of every invalid value it reads: expected here
def test_corrupt_input_never_yields_corrupt_output(tmp_path: Path):
    rng = random.Random(19)
    shipped = sorted(p for p in Path(get_testdata_file("CT_small.dcm")).parent.glob("*.dcm")
                     if p.stat().st_size < 400_000)
    src = tmp_path / "src"
    src.mkdir()
    for n in range(300):
        template = shipped[n % len(shipped)]
        (src / f"{n:03d}-{template.name}").write_bytes(corrupted(template.read_bytes(), rng))
    report = anonymize_tree(Anonymizer(KEY), src, tmp_path / "out", progress=False, workers=2,
                            pixels=PixelPolicy(ocr=None))
    assert len(report.files) == 300 and {f.source for f in report.files} == {p.name for p in src.iterdir()}
    for f in report.files:
        if f.outcome in ("failed", "skipped"):
            assert f.reason and not f.reason.split(":")[0].endswith(("Error", "Exception")), f.reason
    outputs = [p for folder in ("out", "out.quarantine") for p in (tmp_path / folder).rglob("*.dcm")]
    assert len(outputs) >= 50  # copies of one template share its SOP Instance UID: one output each
    for path in outputs:  # every output parses completely
        ds = pydicom.dcmread(path)
        for elem in ds.iterall():
            elem.value
    # check reads the corrupt inputs too: it reports what it cannot read and goes on
    files, findings = check_tree(src)
    assert files >= 250 and any(f.reason.startswith("cannot be read") for f in findings)
