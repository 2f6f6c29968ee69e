"""The ingest service's harvest requests (SQLite) and the files delivered for them (on disk).

A delivered file is kept under its SHA-256 while it arrives (``<folder>/files/<harvest>/<sha256>.part``)
and renamed to ``<sha256>`` once its bytes hash to that name: a file is therefore received at
most once per harvest whatever the edge resends, and a resumed upload continues at the size
already on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from medlib.contract import COUNTS, HarvestState

SCHEMA = """
CREATE TABLE IF NOT EXISTS harvests (
    id TEXT PRIMARY KEY, dataset TEXT NOT NULL, site TEXT NOT NULL, policy TEXT NOT NULL,
    source TEXT NOT NULL, query TEXT NOT NULL, on_qc_failure TEXT NOT NULL, requested_by TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, state TEXT NOT NULL, counts TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '', delivery TEXT, version TEXT
)
"""
HEX = frozenset("0123456789abcdef")


def is_sha256(text: str) -> bool:
    return len(text) == 64 and set(text) <= HEX


class HarvestStore:
    """Harvest requests by id, and their delivered files."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db = sqlite3.connect(self.folder / "harvests.sqlite", isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(SCHEMA)

    def add(self, *, dataset: str, site: str, policy: str, source: str, query: dict[str, str], on_qc_failure: str,
            requested_by: str) -> dict[str, Any]:
        harvest_id, now = uuid.uuid4().hex[:12], time.time()
        self.db.execute("INSERT INTO harvests (id, dataset, site, policy, source, query, on_qc_failure, requested_by, "
                        "created, updated, state, counts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (harvest_id, dataset, site, policy, source, json.dumps(query), on_qc_failure, requested_by,
                         now, now, HarvestState.PENDING, json.dumps(dict.fromkeys(COUNTS, 0))))
        return self.get(harvest_id)

    def get(self, harvest_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM harvests WHERE id = ?", (harvest_id,)).fetchone()
        return self._harvest(row) if row else None

    def list(self, *, site: str | None = None, datasets: set[str] | None = None,
             states: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        clauses, args = [], []
        for column, values in (("site", None if site is None else [site]), ("dataset", datasets),
                               ("state", states or None)):
            if values is not None:
                clauses.append(f"{column} IN ({','.join('?' * len(values))})")
                args += sorted(values)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return [self._harvest(r) for r in self.db.execute(f"SELECT * FROM harvests{where} ORDER BY created", args)]

    def update(self, harvest_id: str, **fields: Any) -> dict[str, Any]:
        fields = {k: json.dumps(v) if k == "counts" else v for k, v in fields.items()} | {"updated": time.time()}
        assignments = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE harvests SET {assignments} WHERE id = ?", (*fields.values(), harvest_id))
        return self.get(harvest_id)

    # -- delivered files -------------------------------------------------------------------

    def file(self, harvest_id: str, digest: str) -> Path:
        """Where the file of SHA-256 ``digest`` lies once received completely."""
        return self.folder / "files" / harvest_id / digest

    def received(self, harvest_id: str, digest: str) -> tuple[int, bool]:
        """(bytes received, complete) of a file."""
        done = self.file(harvest_id, digest)
        if done.is_file():
            return done.stat().st_size, True
        part = done.with_name(digest + ".part")
        return (part.stat().st_size if part.is_file() else 0), False

    def append(self, harvest_id: str, digest: str, offset: int, size: int, chunk: bytes) -> tuple[int, bool]:
        """Write ``chunk`` at ``offset`` of the file of ``digest`` (``size`` bytes in all); returns
        (bytes received, complete).

        Raises:
            OffsetMismatch: ``offset`` is not the size received so far (the body says which).
            DigestMismatch: all bytes are in, and they do not hash to ``digest`` (they are dropped).
        """
        have, complete = self.received(harvest_id, digest)
        if complete:
            return have, True
        if offset != have:
            raise OffsetMismatch(have)
        if have + len(chunk) > size:
            raise ValueError(f"the chunk ends at byte {have + len(chunk)}, after the file's size {size}")
        part = self.file(harvest_id, digest).with_name(digest + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "ab") as f:
            f.write(chunk)
        have += len(chunk)
        if have < size:
            return have, False
        if offset == 0:  # the whole file in one chunk (most DICOM instances): hash what is in memory
            actual = hashlib.sha256(chunk).hexdigest()
        else:
            h = hashlib.sha256()
            with open(part, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            actual = h.hexdigest()
        if actual != digest:
            part.unlink()
            raise DigestMismatch(f"the {size} bytes received hash to {actual}, not {digest}; send the file again")
        part.chmod(0o444)
        os.replace(part, self.file(harvest_id, digest))  # made durable when published (medlib.versions.publish)
        return have, True

    def drop_files(self, harvest_id: str) -> None:
        """Remove a harvest's received files (once published: the version holds them)."""
        shutil.rmtree(self.folder / "files" / harvest_id, ignore_errors=True)

    @staticmethod
    def _harvest(row: sqlite3.Row) -> dict[str, Any]:
        harvest = dict(row)
        harvest["query"], harvest["counts"] = json.loads(harvest["query"]), json.loads(harvest["counts"])
        return harvest


class OffsetMismatch(Exception):
    """A chunk that does not continue the file where it stands; ``have`` is its size."""

    def __init__(self, have: int):
        super().__init__(f"the file holds {have} bytes; continue from there")
        self.have = have


class DigestMismatch(ValueError):
    """A file whose bytes do not hash to the digest it was announced with."""
