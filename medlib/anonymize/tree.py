"""Anonymize a folder tree: every DICOM file below ``src`` into ``dst``, in parallel, resumable.

Outputs are named by their new UIDs (``<study>/<series>/<instance>.dcm``), so that no source
path (which often holds a patient's name) reaches ``dst``. Each file is written under a
temporary name and renamed; originals are only read. A journal in ``dst`` (keyed hashes of
source paths, nothing identifying) lets an interrupted run skip finished files; given the
key, outputs are byte-identical whenever they are made. Files that may carry burned-in text
are cleaned (the site's rectangle rules, then OCR) and sent on; only those the detector cannot
decide, or whose pixels cannot be decoded, go to the quarantine folder for review. Unreadable
and non-DICOM files are skipped with their reason; the report (kept at the site: it names
source files) says what happened to each file, which attributes outside the profile's table
were acted on, what the residual scan replaced and what was blanked.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from tqdm.auto import tqdm

from .anonymizer import Anonymizer, Trace, encode
from .mapping import MappingStore
from .ocr import OcrSettings, OcrUnavailable, clean_frames
from .pixels import PixelRule, blank, decoded_frames, matching_rule, store_frames
from .rewrite import NotRewritable, PartialFile

JOURNAL = ".medlib-anonymize-journal"
#: Modalities and SOP classes where text is usually burned into the pixels.
BURNED_IN_MODALITIES = frozenset({"US", "SC", "XA", "OT", "DOC"})
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
STUDY_UID, SERIES_UID, SOP_INSTANCE_UID = 0x0020000D, 0x0020000E, 0x00080018


@dataclass(frozen=True)
class PixelPolicy:
    """How files that may carry burned-in text are cleaned.

    Attributes:
        rules: the site's rectangle rules (:func:`~medlib.anonymize.pixels.load_rules`),
            applied first.
        ocr: OCR's settings; None: no OCR (a candidate no rule matches stays in quarantine).
    """

    rules: tuple[PixelRule, ...] = ()
    ocr: OcrSettings | None = OcrSettings()


@dataclass
class FileOutcome:
    source: str
    outcome: str  # anonymized | quarantined | duplicate | skipped | failed | done-before
    output: str | None = None
    reason: str | None = None
    actions: dict[str, int] = field(default_factory=dict)
    beyond_table: list[str] = field(default_factory=list)  # attributes outside Table E.1-1 acted on
    residual: list[str] = field(default_factory=list)  # identifying values the residual scan replaced
    blanked: list[list[int]] = field(default_factory=list)  # [frame, x, y, width, height] cleaned


@dataclass
class Report:
    source: str
    destination: str
    quarantine: str
    options: list[str]
    key_fingerprint: str
    files: list[FileOutcome] = field(default_factory=list)
    written: set[str] = field(default_factory=set, repr=False)  # outputs made by this run

    @property
    def totals(self) -> dict[str, int]:
        return dict(Counter(f.outcome for f in self.files))

    @property
    def actions(self) -> dict[str, int]:
        total: Counter = Counter()
        for f in self.files:
            total.update(f.actions)
        return dict(sorted(total.items()))

    @property
    def beyond_table(self) -> dict[str, int]:
        """Attributes outside Table E.1-1 acted on: in how many files."""
        return dict(sorted(Counter(k for f in self.files for k in f.beyond_table).items()))

    @property
    def residual(self) -> int:
        """Identifying values the residual scan replaced, in all files."""
        return sum(len(f.residual) for f in self.files)

    def to_json(self) -> str:
        data = asdict(self)
        del data["written"]
        data["totals"], data["actions"] = self.totals, self.actions
        data["beyond_table"], data["residual"] = self.beyond_table, self.residual
        return json.dumps(data, indent=1)


def burned_in_reason(ds: pydicom.Dataset) -> str | None:
    """Why a file may carry burned-in text, or None."""
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        return "BurnedInAnnotation is YES"
    if ds.get("Modality") in BURNED_IN_MODALITIES:
        return f"modality {ds.Modality} often has burned-in text"
    if str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE_PREFIX):
        return "secondary capture"
    return None


def _short_pixel_data(ds: pydicom.Dataset, actual: int | None = None) -> str | None:
    """Why native (uncompressed) pixel data is shorter than its attributes say, or None.

    pydicom reads a file cut inside its last element without complaint; this catches the
    common case, a cut inside the pixel data. ``actual``: the pixel data's length, when ``ds``
    does not hold it (a :class:`PartialFile`'s dataset)."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if actual is None:
        if "PixelData" not in ds:
            return None
        actual = len(ds.PixelData)
    if syntax is None or syntax.is_compressed:
        return None
    # YBR_FULL_422 stores two samples per pixel (chroma subsampled), not three
    samples = 2 if ds.get("PhotometricInterpretation") == "YBR_FULL_422" else ds.get("SamplesPerPixel", 1)
    try:
        expected = (int(ds.Rows) * int(ds.Columns) * int(samples)
                    * int(ds.BitsAllocated) * int(ds.get("NumberOfFrames", 1) or 1) + 7) // 8
    except (AttributeError, TypeError, ValueError):
        return None
    return f"truncated: pixel data has {actual} of {expected} bytes" if actual < expected else None


def read_dicom(path: Path | BinaryIO) -> pydicom.Dataset:
    """Read a DICOM file, or a bare dataset without the Part 10 header (old PACS exports).

    A bare dataset is accepted only if it holds a SOP Class and Instance UID; it gets the
    file meta information it lacked, so that its output is a proper DICOM file. A dataset
    encoded with implicit VR under an explicit-VR transfer syntax is decoded whole, so that it
    can be written with the VRs its syntax needs.

    Raises:
        InvalidDicomError: neither.
    """
    try:
        ds = pydicom.dcmread(path)
        syntax = ds.file_meta.get("TransferSyntaxUID")
        if syntax is not None and not syntax.is_implicit_VR and any(ds.get_item(t).VR is None for t in ds.keys()):
            for _ in ds.iterall():  # each element gets its VR from the dictionary
                pass
        return ds
    except InvalidDicomError as e:
        try:
            with warnings.catch_warnings():  # probing: a stray text file must not fill the log
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, force=True)
        except Exception:
            raise e from None
        if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
            raise
    implicit, little = ds.original_encoding
    ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                      ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def plainly(error: Exception) -> str:
    """What is wrong with a file, in words a person acts on, from the exception reading or
    writing it raised (the first cause of a chain: pydicom re-raises with the tag)."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    lower = text.lower()
    if isinstance(error, NotImplementedError) and "pixel data" in lower:
        return f"no decoder here for its pixel data's transfer syntax ({text})"
    if (isinstance(error, (EOFError, struct.error, NotRewritable)) or "no tag to read" in lower
            or "cut off" in lower or "bytes" in lower and ("read" in lower or "expected" in lower)):
        return f"the file ends inside an element: it is truncated or corrupted ({text})"
    if isinstance(error, zlib.error):
        return f"its deflated data cannot be inflated: the file is truncated or corrupted ({text})"
    if "transfer syntax" in lower:
        return f"its file meta information names no valid transfer syntax: the file is corrupted ({text})"
    if isinstance(error, UnicodeError):
        return f"a text value cannot be decoded in the file's character set ({text})"
    if isinstance(error, (OverflowError, MemoryError)) or "length" in lower:
        return f"an element's length is impossible: the file is corrupted ({text})"
    if "VR" in text or "value representation" in lower:
        return f"an element's value representation is invalid: the file is corrupted ({text})"
    return f"the file cannot be read as DICOM: it is probably corrupted ({type(error).__name__}: {text})"


def _write_new(data: bytes, path: Path) -> bool:
    """Write ``data`` to ``path`` atomically, never replacing an existing file.

    The file is written under a temporary name (this process's own), then hard-linked into
    place (which fails if ``path`` exists, also against a parallel worker). An existing
    identical file (written by an interrupted run before it could journal it) counts as
    written. Returns False if ``path`` holds something else.
    """
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        try:
            f = open(tmp, "wb")
        except FileNotFoundError:  # the first file of its series
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(tmp, "wb")
        with f:
            f.write(data)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return path.read_bytes() == data
    finally:
        tmp.unlink(missing_ok=True)


def anonymize_file(anonymizer: Anonymizer, src: Path, dst: Path, quarantine: Path, rel: str,
                   keep_mappings: bool, pixels: PixelPolicy = PixelPolicy()) -> tuple[FileOutcome, list]:
    """Anonymize the file ``src/rel`` into ``dst`` (or ``quarantine``), named by its new UIDs.

    Returns:
        what happened to it, and (with ``keep_mappings``) the (kind, pseudonym, original) rows
        for a mapping store.
    """
    trace = Trace(mappings=set() if keep_mappings else None)
    outcome = _anonymize_file(anonymizer, src, dst, quarantine, rel, trace, pixels)
    outcome.actions, outcome.beyond_table = dict(trace.counts), sorted(trace.beyond_table)
    outcome.residual = trace.residual
    return outcome, sorted(trace.mappings or ())


def _clean_pixels(anonymizer: Anonymizer, out: pydicom.Dataset, reason: str, rule: PixelRule | None,
                  pixels: PixelPolicy, outcome: FileOutcome) -> str | None:
    """Blank burned-in text: the site's rule's rectangles, then what OCR finds. Records what
    was done in ``outcome``; returns why the file stays in quarantine, or None."""
    if rule is None and pixels.ocr is None:
        outcome.reason = f"{reason}; no pixel rule matches and OCR is off"
        return outcome.reason
    try:
        frames = decoded_frames(out)
    except Exception as e:  # no codec for this transfer syntax, odd bit depths: keep it for review
        outcome.reason = f"{reason}; its pixel data cannot be decoded ({plainly(e)}), so nobody can say it holds no text"
        return outcome.reason
    notes = [reason]
    if rule is not None:
        blank(frames, rule.rectangles)
        notes.append(f"rectangles of pixel rule {rule.name!r} blanked")
    if pixels.ocr is not None:
        try:
            found = clean_frames(frames, pixels.ocr)
        except OcrUnavailable as e:
            outcome.reason = f"{reason}; {e}"
            return outcome.reason
        outcome.blanked = [list(r) for r in found.rectangles]
        if found.undecided:
            outcome.reason = f"{reason}; OCR cannot decide: {found.undecided}"
            return outcome.reason
        notes.append(f"OCR blanked {len(found.rectangles)} text region(s)" if found.rectangles else "OCR found no text")
    syntax = store_frames(out, frames)
    if syntax:
        notes.append(syntax)
    anonymizer.mark_pixels_cleaned(out)
    outcome.reason = "; ".join(notes)
    return None


def _anonymize_file(anonymizer: Anonymizer, src: Path, dst: Path, quarantine: Path, rel: str,
                    trace: Trace, pixels: PixelPolicy) -> FileOutcome:
    try:
        try:  # the fast path: elements the profile leaves alone are copied, not decoded
            partial: PartialFile | None = PartialFile((src / rel).read_bytes(), anonymizer)
            ds = partial.dataset
        except NotRewritable:
            partial, ds = None, read_dicom(src / rel)
        missing = [k for k in ("SOPClassUID", "SOPInstanceUID") if k not in ds]
        if missing:
            return FileOutcome(rel, "skipped", reason=f"incomplete DICOM object: no {' or '.join(missing)} (truncated?)")
        short = _short_pixel_data(ds, partial.pixel_length if partial else None)
        if short:
            return FileOutcome(rel, "skipped", reason=short)
        reason = burned_in_reason(ds)
        outcome = FileOutcome(rel, "anonymized", reason=reason)
        if partial and reason and (pixels.rules or pixels.ocr is not None):  # cleaning needs the whole dataset
            partial, ds = None, read_dicom(src / rel)
        if partial:
            try:
                data, uid = partial.anonymize(attempt := trace.fresh()), partial.output_uid
                trace.update(attempt)
            except NotRewritable:  # found inside a sequence: the ordinary path reads it, or says why not
                partial, ds = None, read_dicom(src / rel)
        if partial:
            if reason:
                reason = outcome.reason = f"{reason}; no pixel rule and no OCR to clean it"
        else:
            # rules match on the device as the original names it (anonymization may blank it)
            rule = matching_rule(pixels.rules, ds) if reason else None
            out = anonymizer.anonymize(ds, trace, in_place=True)
            if reason:
                reason = _clean_pixels(anonymizer, out, reason, rule, pixels, outcome)
            data, uid = encode(out), lambda tag: str(out[tag].value) if tag in out else ""
        name = Path(uid(STUDY_UID) or "no-study", uid(SERIES_UID) or "no-series", f"{uid(SOP_INSTANCE_UID)}.dcm")
        target = (quarantine if reason else dst) / name
        outcome.output = str(name)
        if not _write_new(data, target):
            outcome.outcome = "duplicate"
            outcome.reason = "another file has the same SOP Instance UID; its output was kept and this one not written"
        elif reason:
            outcome.outcome = "quarantined"
        return outcome
    except InvalidDicomError as e:
        return FileOutcome(rel, "skipped", reason=f"not a DICOM file ({e})")
    except Exception as e:  # a batch reports what failed and goes on
        return FileOutcome(rel, "failed", reason=f"{plainly(e)}; the original is untouched: export it again, "
                                                 "or remove it from the source")


#: a worker process's share of the run (:func:`_start_worker`): the anonymizer and the folders,
#: given once per process rather than with every file
_run: tuple = ()


def _start_worker(*run) -> None:
    global _run
    _run = run


def _work(rel: str) -> tuple[FileOutcome, list]:
    anonymizer, src, dst, quarantine, keep_mappings, pixels = _run
    return anonymize_file(anonymizer, src, dst, quarantine, rel, keep_mappings, pixels)


def anonymize_tree(
    anonymizer: Anonymizer,
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    quarantine: str | os.PathLike[str] | None = None,
    workers: int = 1,
    progress: bool = True,
    mapping_store: MappingStore | None = None,
    pixels: PixelPolicy = PixelPolicy(),
) -> Report:
    """Anonymize every file below ``src`` into ``dst``.

    Args:
        anonymizer: the profile, options and key to apply.
        quarantine: where files that may carry burned-in text go (default ``<dst>.quarantine``,
            beside ``dst``, never inside it).
        workers: processes to use (1: in this process).
        progress: show a progress bar (a widget in notebooks, a bar in terminals).
        mapping_store: record pseudonym → original there, for re-identification at the site
            (it must not lie inside ``dst``).
        pixels: how files that may carry burned-in text are cleaned (:class:`PixelPolicy`:
            the site's rectangle rules, then OCR).

    Returns:
        the run's :class:`Report`.
    """
    src, dst = Path(src).resolve(), Path(dst).resolve()
    quarantine = Path(quarantine).resolve() if quarantine else dst.with_name(dst.name + ".quarantine")
    if dst == src or src in dst.parents:
        raise ValueError(f"the destination {dst} must not lie inside the source {src}")
    if mapping_store is not None and dst in mapping_store.path.resolve().parents:
        raise ValueError(f"the mapping store {mapping_store.path} must stay at the site, not inside {dst}")
    dst.mkdir(parents=True, exist_ok=True)
    report = Report(str(src), str(dst), str(quarantine), sorted(anonymizer.options), anonymizer.key.fingerprint)

    journal_path = dst / JOURNAL
    done = set(journal_path.read_text().split()) if journal_path.exists() else set()
    todo = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src).as_posix()
        if anonymizer.key.digest("journal", rel).hex() in done:
            report.files.append(FileOutcome(rel, "done-before"))
        else:
            todo.append(rel)

    run = (anonymizer, src, dst, quarantine, mapping_store is not None, pixels)
    with open(journal_path, "a") as journal, tqdm(total=len(todo), unit="file", disable=not progress,
                                                  desc="anonymizing") as bar:
        if workers > 1:
            with ProcessPoolExecutor(workers, initializer=_start_worker, initargs=run) as pool:
                results = pool.map(_work, todo, chunksize=max(1, min(64, len(todo) // (workers * 8) or 1)))
                for outcome, mappings in results:
                    _finish(outcome, mappings, report, journal, anonymizer, mapping_store, bar)
        else:
            for rel in todo:
                outcome, mappings = anonymize_file(anonymizer, src, dst, quarantine, rel, mapping_store is not None, pixels)
                _finish(outcome, mappings, report, journal, anonymizer, mapping_store, bar)
    return report


def _finish(outcome: FileOutcome, mappings: list, report: Report, journal, anonymizer: Anonymizer,
            mapping_store: MappingStore | None, bar) -> None:
    if mapping_store is not None and mappings:
        mapping_store.add(mappings)  # before the journal: a journaled file's mappings are stored
    if outcome.outcome in ("anonymized", "quarantined"):
        written = f"{outcome.outcome}:{outcome.output}"  # the quarantine is another folder
        if written in report.written:
            # another source file of this run made the same output (byte for byte): one file, one output
            outcome.outcome, outcome.reason = "duplicate", "another file of this run has the same SOP Instance UID and gave the same output"
        report.written.add(written)
    report.files.append(outcome)
    if outcome.outcome in ("anonymized", "quarantined", "duplicate", "skipped"):
        journal.write(anonymizer.key.digest("journal", outcome.source).hex() + "\n")
        journal.flush()
    bar.update(1)
