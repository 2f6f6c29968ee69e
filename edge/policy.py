"""What leaves the site, by the harvest's policy: each received instance becomes an output in
the harvest's outbox, or ends quarantined or failed with its reason.

- ``identifiable``: the file as received (only into a dataset catalogued identifiable; the hub checks).
- ``anonymized``: :func:`medlib.anonymize.tree.anonymize_file` with the site key, pseudonyms
  recorded in the site's mapping store; a file that may carry burned-in text is cleaned by the
  site's pixel settings (rectangle rules, then OCR), and stays in the site's quarantine only
  when they cannot decide.
- ``features``: radiomic features (:func:`medlib.radiomics.extract`) of each segment of each DICOM
  SEG, and each ROI of each RTSTRUCT, the harvest found (:mod:`.masks`), on the image series it
  references; only the table leaves, its rows named by keyed pseudonyms of the series.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from medlib.anonymize import Anonymizer, SiteKey
from medlib.anonymize.mapping import MappingStore
from medlib.anonymize.tree import PixelPolicy, anonymize_file
from medlib.contract import Policy
from medlib.manifest import sha256
from medlib.versions import link_or_copy

from .journal import Journal
from .qc import Facts, file_facts

#: The delivered table of a features harvest, in the dataset's version.
FEATURES_TABLE = "features/{harvest}.csv"


class Processor:
    """Makes a harvest's outputs in ``<state>/outbox/<harvest>/``."""

    def __init__(self, state_dir: Path, journal: Journal, key: SiteKey, options: tuple[str, ...] = (),
                 workers: int | None = None, pixels: PixelPolicy = PixelPolicy(),
                 keep_text: frozenset[int] = frozenset()):
        self.state_dir, self.journal, self.key, self.pixels = state_dir, journal, key, pixels
        self.keep_text = keep_text
        self.options, self.workers = options, workers or max(1, min(8, (os.cpu_count() or 2) - 1))
        self._pool: ProcessPoolExecutor | None = None

    @property
    def pool(self) -> ProcessPoolExecutor:
        """The anonymizing processes, started once (from a fork server: this process has threads)."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("forkserver"))
        return self._pool

    def start(self) -> None:
        """Start the anonymizing processes now, not at the first harvest."""
        list(self.pool.map(int, range(self.workers)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def outbox(self, harvest_id: str) -> Path:
        return self.state_dir / "outbox" / harvest_id

    def run(self, harvest_id: str, policy: Policy, instances: list[dict[str, Any]], inbox: dict[str, dict]) -> None:
        """Process ``instances`` (journal rows, received) of the harvest."""
        if not instances:
            return
        handler: Callable = {Policy.IDENTIFIABLE: self._identifiable, Policy.ANONYMIZED: self._anonymized,
                             Policy.FEATURES: self._features}[policy]
        handler(harvest_id, instances, inbox)

    def _identifiable(self, harvest_id: str, instances: list[dict], inbox: dict[str, dict]) -> None:
        out = self.outbox(harvest_id)
        for row in tqdm(instances, unit="file", desc="identifiable", disable=len(instances) < 50):
            rel = f"{row['study']}/{row['series']}/{row['sop']}.dcm"
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                link_or_copy(Path(inbox[row["sop"]]["path"]), target)
            self.journal.set(harvest_id, [row["sop"]], "processed", output=rel, sha256=sha256(target))

    def _anonymized(self, harvest_id: str, instances: list[dict], inbox: dict[str, dict]) -> None:
        anonymizer = Anonymizer(self.key, self.options, keep_text=self.keep_text)
        out, quarantine = self.outbox(harvest_id), self.state_dir / "quarantine" / harvest_id
        src = self.state_dir / "inbox"
        by_name = {Path(inbox[r["sop"]]["path"]).name: r["sop"] for r in instances}
        jobs = [(anonymizer, src, out, quarantine, name, self.pixels) for name in by_name]
        results = []
        with tqdm(total=len(jobs), unit="file", desc="anonymizing", disable=len(jobs) < 50) as bar:
            for result in self.pool.map(_anonymize, jobs, chunksize=max(1, len(jobs) // (self.workers * 4))):
                results.append(result)
                bar.update(1)
        store = MappingStore(self.state_dir / "mapping.sqlite", self.key)
        try:  # before the journal: a processed file's pseudonyms are stored
            store.add([row for _, mappings, _ in results for row in mappings])
        finally:
            store.close()
        for outcome, _, digest in results:
            sop = by_name[outcome.source]
            if outcome.outcome == "anonymized":
                self.journal.set(harvest_id, [sop], "processed", output=outcome.output, sha256=digest)
            elif outcome.outcome == "quarantined":
                self.journal.set(harvest_id, [sop], "quarantined", outcome.reason)
            else:  # skipped (not an image of the profile's kind), duplicate, failed
                self.journal.set(harvest_id, [sop], "failed", f"{outcome.outcome}: {outcome.reason}")

    def facts(self, paths: list[Path], decode_pixels: bool) -> list[Facts]:
        """The QC facts of ``paths``, read by the worker processes."""
        return list(self.pool.map(file_facts, paths, [decode_pixels] * len(paths),
                                  chunksize=max(1, len(paths) // (self.workers * 4))))

    def _features(self, harvest_id: str, instances: list[dict], inbox: dict[str, dict]) -> None:
        table, used, reasons = segmentation_features(instances, inbox, self.key,
                                                     self.state_dir / "work" / harvest_id)
        rel = FEATURES_TABLE.format(harvest=harvest_id)
        if not table.empty:
            target = self.outbox(harvest_id) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            table.to_csv(tmp, index=False)
            os.replace(tmp, target)
            self.journal.set(harvest_id, sorted(used), "processed", output=rel, sha256=sha256(target))
        for sop, reason in reasons.items():
            self.journal.set(harvest_id, [sop], "failed", reason)


def _anonymize(args: tuple):
    """One file, in a worker: its outcome, its pseudonyms, and its output's SHA-256."""
    anonymizer, src, out, quarantine, name, pixels = args
    outcome, mappings = anonymize_file(anonymizer, src, out, quarantine, name, True, pixels)
    digest = sha256(out / outcome.output) if outcome.outcome == "anonymized" else None
    return outcome, mappings, digest


def segmentation_features(instances: list[dict], inbox: dict[str, dict], key: SiteKey, work: Path):
    """The radiomic features of every segment of every SEG, and every ROI of every RTSTRUCT,
    among ``instances`` (``work``: a folder of the edge's own for the image series' links).

    Returns:
        (table, SOP Instance UIDs used, {SOP Instance UID: why it was not used}).
    """
    import pandas as pd

    from medlib.datasets.series import find_series
    from medlib.radiomics import extract

    from medlib.radiomics.masks import MASK_MODALITIES, Grid, masks, referenced_series

    by_series: dict[str, list[dict]] = defaultdict(list)
    for row in instances:
        by_series[row["series"]].append(row)
    rows, used, reasons = [], set(), {}
    masked: set[str] = set()
    for mask_row in (r for r in instances if r["modality"] in MASK_MODALITIES):
        path = inbox[mask_row["sop"]]["path"]
        try:
            referenced = referenced_series(path)
            images = by_series.get(referenced)
            if not images:
                reasons[mask_row["sop"]] = "the series it segments is not in this harvest"
                continue
            series = _image_series(images, inbox, work / referenced, find_series)
            volume = series.read()
            for label, mask in masks(path, Grid.of(series)):
                if not mask.any():
                    continue
                features = extract(volume, mask, spacing=series.spacing)
                features.insert(0, "segment", label)
                features.insert(0, "series", key.pseudonym("series", referenced))
                features.insert(2, "modality", str(series.attrs.get("Modality", "")))
                features.insert(3, "source", mask_row["modality"])
                rows.append(features)
            used.add(mask_row["sop"])
            used.update(r["sop"] for r in images)
            masked.add(referenced)
        except Exception as e:  # noqa: BLE001 - one bad segmentation is reported, the rest go on
            reasons[mask_row["sop"]] = f"cannot compute features from this segmentation ({type(e).__name__}: {e})"
    for row in instances:
        if row["sop"] not in used and row["sop"] not in reasons:
            reasons[row["sop"]] = ("no segmentation of this series at the site" if row["series"] not in masked
                                   else "not used")
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return table, used, reasons


def _image_series(images: list[dict], inbox: dict[str, dict], folder: Path, find_series):
    """The image series of ``images`` (linked into ``folder``, read in slice order)."""
    folder.mkdir(parents=True, exist_ok=True)
    for row in images:
        link = folder / f"{row['sop']}.dcm"
        if not link.is_symlink():
            link.symlink_to(inbox[row["sop"]]["path"])
    (series,) = find_series(folder)
    return series
