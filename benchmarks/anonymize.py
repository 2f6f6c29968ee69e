"""DICOM de-identification throughput and residual identifiers: medlib against its peers.

A corpus is built from pydicom's own test files (CT, MR, RT dose/plan, SR, multi-frame,
compressed, waveform, secondary capture) with varied patients and fresh UIDs. In the same run
each tool anonymizes the whole corpus as a separate process (interpreter start included):
medlib with one worker (and without OCR, as before it had OCR) and with every core, dicognito,
deid (pydicom/deid) and dicom-anonymizer (KitwareMedical), and a plain copy as the floor. Every output is then
scanned by ``medlib anonymize check``, and searched byte for byte for the corpus's original
identifying values. medlib's own report says how many files it delivered, how many burned-in
candidates OCR cleaned and sent on, and how many stayed in quarantine and why.

Every run starts with the page cache written back (``sync``), so that none pays for the writes of
the one before. The copy and the byte-level path, the shortest runs and so the most swayed by the
disk, run in turn for ``--rounds`` rounds, and their medians are shown.

Peers are installed in their own virtual environments (../shared/PEERS.md):

    python3 -m venv PEERS/dicognito && PEERS/dicognito/bin/pip install dicognito
    python3 -m venv PEERS/deid && PEERS/deid/bin/pip install deid
    python3 -m venv PEERS/dicom-anonymizer && PEERS/dicom-anonymizer/bin/pip install dicom-anonymizer

    python benchmarks/anonymize.py --peers PEERS            # 2,000 files
    python benchmarks/anonymize.py --peers PEERS --quick    # 200 files
    python benchmarks/anonymize.py --peers PEERS --record   # append the table to README.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medlib.anonymize import Anonymizer, SiteKey
from medlib.anonymize.check import check_tree
from medlib.anonymize.rewrite import NotRewritable, PartialFile
from results import append as record

TEMPLATES = ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "rtplan.dcm", "test-SR.dcm", "JPEG2000.dcm",
             "MR_small_RLE.dcm", "liver_1frame.dcm", "waveform_ecg.dcm", "SC_rgb_small_odd.dcm",
             "examples_overlay.dcm", "rtdose_1frame.dcm")
PATIENTS = 50

DEID_SCRIPT = """
import sys
from pathlib import Path
from deid.config import DeidRecipe
from deid.dicom import replace_identifiers
src, dst = Path(sys.argv[1]), sys.argv[2]
files = [str(p) for p in src.rglob("*.dcm")]
replace_identifiers(dicom_files=files, deid=DeidRecipe(), save=True, output_folder=dst, remove_private=True,
                    overwrite=True)
"""


#: The identifying values the corpus writes, as patterns: a survivor in an output is a leak. Digit
#: runs are bounded: a birth date's digits inside a longer number (a 2.25 UID) are not one.
ORIGINAL_VALUES = re.compile(rb"Case\^Patient\d{3}|PID\d{5}(?!\d)|Hospital \d(?!\d)|(?<![0-9])19[5-8]\d0101(?![0-9])"
                             rb"|[0-9]+(?:\.[0-9]+){3,}")


def build_corpus(root: Path, n: int) -> set[bytes]:
    """Write the corpus; return the identifying values it holds (names, IDs, birth dates,
    institutions, and every UID it made)."""
    originals: set[bytes] = set()
    templates = [pydicom.dcmread(get_testdata_file(name)) for name in TEMPLATES]
    studies = {p: generate_uid() for p in range(PATIENTS)}
    for i in range(n):
        ds = templates[i % len(templates)].copy()
        patient = i % PATIENTS
        ds.PatientName, ds.PatientID = f"Case^Patient{patient:03d}", f"PID{patient:05d}"
        ds.PatientBirthDate, ds.InstitutionName = f"19{50 + patient % 40:02d}0101", f"Hospital {patient % 7}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = studies[patient], generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        originals.update(str(v).encode() for v in (ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.InstitutionName,
                                                   ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID))
        root.mkdir(parents=True, exist_ok=True)  # flat: dicom-anonymizer reads one folder level only
        ds.save_as(root / f"p{patient:03d}-{i:05d}.dcm", enforce_file_format=True)
    return originals


def leaked(root: Path, originals: set[bytes]) -> int:
    """How many original identifying values appear, byte for byte, in the files below root
    (the first few are printed, with where they are, for whoever looks into them)."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [(path, m.start(), m.group(0)) for m in ORIGINAL_VALUES.finditer(data) if m.group(0) in originals]
    for path, at, value in found[:3]:
        print(f"left in {path.relative_to(root)} at byte {at} of {path.stat().st_size}: {value!r}", file=sys.stderr)
    return len(found)


def byte_level_alone(corpus: Path, key: Path) -> float:
    """Milliseconds a file of the byte-level path alone: files already in memory, one process,
    nothing written (best of 3). The rest of a run's time is starting, reading and writing."""
    anonymizer = Anonymizer(SiteKey.load(key))
    files = [p.read_bytes() for p in sorted(corpus.iterdir())]
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for data in files:
            try:
                PartialFile(data, anonymizer).anonymize()
            except NotRewritable:
                continue
        best = min(best, time.perf_counter() - t0)
    return best / len(files) * 1e3


@dataclass
class Run:
    tool: str
    seconds: float
    output: Path
    residuals: int | None = None
    leaks: int | None = None
    files_out: int = 0


def timed(argv: list[str], output: Path, tool: str) -> Run:
    os.sync()  # the runs before leave no writeback to compete with this one
    t0 = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        print(f"{tool} failed ({result.returncode}): {result.stderr[-500:]}", file=sys.stderr)
    return Run(tool, seconds, output)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--quick", action="store_true", help="200 files")
    p.add_argument("--peers", type=Path, help="folder holding the peers' virtual environments")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the copy and the byte-level path (medians)")
    p.add_argument("--record", action="store_true", help="append the result to benchmarks/README.md")
    args = p.parse_args()
    n = 200 if args.quick else args.files
    cores = os.cpu_count() or 1
    medlib = [sys.executable, "-m", "medlib.cli", "anonymize", "run"]

    with tempfile.TemporaryDirectory(prefix="medlib-anon-bench-") as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus"
        originals = build_corpus(corpus, n)
        SiteKey.generate(tmp / "site.key")
        # the measure, the byte-level path against the copy: rounds in turn, medians
        copies, byte_level = [], []
        byte_level_row = f"medlib, {cores} workers, no OCR (the byte-level path)"
        byte_level_argv = medlib + [str(corpus), str(tmp / "medlibN-no-ocr"), "--key-file", str(tmp / "site.key"),
                                    "--workers", str(cores), "--no-ocr", "--report", str(tmp / "rN0.json")]
        for _ in range(args.rounds):
            for folder in ("copy", "medlibN-no-ocr", "medlibN-no-ocr.quarantine"):
                shutil.rmtree(tmp / folder, ignore_errors=True)
            os.sync()
            t0 = time.perf_counter()
            shutil.copytree(corpus, tmp / "copy")
            copies.append(time.perf_counter() - t0)
            byte_level.append(timed(byte_level_argv, tmp / "medlibN-no-ocr", byte_level_row).seconds)
        runs = [Run("plain copy (floor)", statistics.median(copies), tmp / "copy")]
        runs.append(timed(medlib + [str(corpus), str(tmp / "medlib1"), "--key-file", str(tmp / "site.key"),
                                    "--workers", "1", "--report", str(tmp / "r1.json")], tmp / "medlib1", "medlib, 1 worker"))
        runs.append(timed(medlib + [str(corpus), str(tmp / "medlib1-no-ocr"), "--key-file", str(tmp / "site.key"),
                                    "--workers", "1", "--no-ocr", "--report", str(tmp / "r0.json")],
                          tmp / "medlib1-no-ocr", "medlib, 1 worker, no OCR (burned-in candidates to quarantine)"))
        runs.append(timed(medlib + [str(corpus), str(tmp / "medlibN"), "--key-file", str(tmp / "site.key"),
                                    "--workers", str(cores), "--report", str(tmp / "rN.json")], tmp / "medlibN",
                          f"medlib, {cores} workers"))
        runs.append(Run(byte_level_row, statistics.median(byte_level), tmp / "medlibN-no-ocr"))
        (tmp / "empty").mkdir()
        empty = timed(medlib + [str(tmp / "empty"), str(tmp / "empty-out"), "--key-file", str(tmp / "site.key"),
                                "--workers", str(cores), "--no-ocr", "--report", str(tmp / "r-empty.json")],
                      tmp / "empty-out", "no files")
        alone = byte_level_alone(corpus, tmp / "site.key")
        if args.peers:
            peers = args.peers.resolve()
            shutil.copytree(corpus, tmp / "dicognito")  # it anonymizes in place
            runs.append(timed([str(peers / "dicognito/bin/python"), "-m", "dicognito", str(tmp / "dicognito")],
                              tmp / "dicognito", "dicognito"))
            (tmp / "deid").mkdir()
            runs.append(timed([str(peers / "deid/bin/python"), "-c", DEID_SCRIPT, str(corpus), str(tmp / "deid")],
                              tmp / "deid", "deid"))
            (tmp / "dicom-anonymizer").mkdir()
            runs.append(timed([str(peers / "dicom-anonymizer/bin/dicom-anonymizer"), str(corpus),
                               str(tmp / "dicom-anonymizer")], tmp / "dicom-anonymizer", "dicom-anonymizer"))
        for run in runs:
            run.files_out, findings = check_tree(run.output)
            run.residuals = len(findings)
            run.leaks = leaked(run.output, originals)
        report = json.loads((tmp / "r1.json").read_text())

    medlib1 = next(r for r in runs if r.tool == "medlib, 1 worker")
    floor = runs[0]
    rows = ["| tool | files out | seconds | files/s | × medlib 1-worker time | × copy time | "
            "`medlib anonymize check` findings | original identifiers left |",
            "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        rows.append(f"| {r.tool} | {r.files_out}/{n} | {r.seconds:.2f} | {n / r.seconds:.0f} | "
                    f"{r.seconds / medlib1.seconds:.2f} | {r.seconds / floor.seconds:.1f} | {r.residuals} | {r.leaks} |")
    totals = report["totals"]
    cleaned = sum(1 for f in report["files"] if f["outcome"] == "anonymized" and f["reason"])
    why: dict[str, int] = {}
    for f in report["files"]:
        if f["outcome"] == "quarantined":
            reason = f["reason"].split("; ", 1)[-1].split(" (")[0]
            why[reason] = why.get(reason, 0) + 1
    rows.append(f"\nmedlib (1 worker) delivered {totals.get('anonymized', 0)} files, {cleaned} of them burned-in "
                f"candidates (secondary captures, US/SC/XA) that OCR read and cleaned; it kept "
                f"{totals.get('quarantined', 0)} in quarantine"
                + (": " + "; ".join(f"{n} {r}" for r, n in sorted(why.items())) if why else "")
                + f". Its residual scan replaced {report['residual']} value(s); attributes outside the profile's "
                f"table acted on: {', '.join(report['beyond_table']) or 'none'}.")
    rows.append(f"\nThe copy and the byte-level path ran in turn, {args.rounds} rounds, medians shown: the copy took "
                f"{min(copies):.2f}–{max(copies):.2f} s, the byte-level path {min(byte_level):.2f}–{max(byte_level):.2f} s.")
    rows.append(f"\nWhere the byte-level row's time goes: a run with no files (the "
                f"interpreter and its imports) takes {empty.seconds:.2f} s; the byte-level path alone, the files in memory and "
                f"nothing written, takes {alone:.2f} ms a file on one core.")
    text = "\n".join(rows)
    print(text)
    if args.record:
        command = ("python benchmarks/anonymize.py" + (" --peers PEERS" if args.peers else "")
                   + (" --quick" if args.quick else f" --files {n}") + f" --rounds {args.rounds}")
        record(f"DICOM anonymization, {n} files", command, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
