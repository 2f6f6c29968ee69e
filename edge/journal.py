"""What the edge knows, in one SQLite file of its state folder: the inbox (every instance that
arrived, whoever sent it) and, per harvest, what became of every instance found for it.

An instance of a harvest goes ``found`` → ``received`` → ``processed`` (its output made) →
``uploaded`` → ``delivered``, or ends ``quarantined`` or ``failed`` with a reason. The journal
is written before each step is reported, so that an edge killed at any point resumes where it
stood: nothing is fetched, anonymized or uploaded twice, and nothing is skipped.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    sop TEXT PRIMARY KEY, study TEXT NOT NULL, series TEXT NOT NULL, patient TEXT NOT NULL,
    modality TEXT NOT NULL, study_date TEXT NOT NULL, accession TEXT NOT NULL, path TEXT NOT NULL,
    caller TEXT NOT NULL, arrived REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_study ON inbox (study);
CREATE INDEX IF NOT EXISTS inbox_series ON inbox (series);
CREATE TABLE IF NOT EXISTS harvests (
    id TEXT PRIMARY KEY, request TEXT NOT NULL, state TEXT NOT NULL, delivery TEXT, version TEXT,
    message TEXT NOT NULL DEFAULT '', started REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    harvest TEXT NOT NULL, sop TEXT NOT NULL, study TEXT NOT NULL, series TEXT NOT NULL, modality TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT, output TEXT, sha256 TEXT,
    PRIMARY KEY (harvest, sop)
);
"""
#: An instance's states, and which of them end it.
STATES = ("found", "received", "processed", "uploaded", "delivered", "quarantined", "failed")
FINAL = ("delivered", "quarantined", "failed")


class Journal:
    """The edge's journal; safe to use from the SCP's threads and the runner's."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.lock = threading.Lock()
        with self.lock:
            self.db.execute("PRAGMA journal_mode=WAL")
            # a crash of the edge loses nothing; a power cut at most the last steps, which are done again
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)

    def _rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(r) for r in self.db.execute(sql, args)]

    def _do(self, sql: str, *args: Any) -> None:
        with self.lock:
            self.db.execute(sql, args)

    # -- the inbox ----------------------------------------------------------------------------

    def arrived(self, *, sop: str, study: str, series: str, patient: str, modality: str, study_date: str,
                accession: str, path: str, caller: str) -> None:
        self._do("INSERT OR REPLACE INTO inbox VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 sop, study, series, patient, modality, study_date, accession, path, caller, time.time())

    def inbox(self, sops: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Instances in the inbox by SOP Instance UID (all, or those of ``sops``)."""
        if sops is None:
            return {r["sop"]: r for r in self._rows("SELECT * FROM inbox")}
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(sops), 500):
            part = sops[start:start + 500]
            marks = ",".join("?" * len(part))
            found.update({r["sop"]: r for r in self._rows(f"SELECT * FROM inbox WHERE sop IN ({marks})", *part)})
        return found

    def inbox_series(self, series: str) -> list[dict[str, Any]]:
        """The instances of one series in the inbox."""
        return self._rows("SELECT * FROM inbox WHERE series = ?", series)

    def last_arrival(self, studies: set[str]) -> float:
        """When the latest instance of ``studies`` arrived (0: none)."""
        if not studies:
            return 0.0
        marks = ",".join("?" * len(studies))
        row = self._rows(f"SELECT max(arrived) AS t FROM inbox WHERE study IN ({marks})", *studies)[0]
        return row["t"] or 0.0

    # -- harvests -----------------------------------------------------------------------------

    def start(self, request: dict[str, Any]) -> dict[str, Any]:
        """The journal's record of a harvest: made on first sight, kept on resumption."""
        with self.lock:
            self.db.execute("INSERT OR IGNORE INTO harvests (id, request, state, started) VALUES (?, ?, ?, ?)",
                            (request["id"], json.dumps(request), "running", time.time()))
        return self.harvest(request["id"])

    def harvest(self, harvest_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM harvests WHERE id = ?", harvest_id)
        return {**rows[0], "request": json.loads(rows[0]["request"])} if rows else None

    def unfinished(self) -> list[dict[str, Any]]:
        """Harvests started and not ended: resumed first after a restart."""
        return [{**r, "request": json.loads(r["request"])}
                for r in self._rows("SELECT * FROM harvests WHERE state = 'running' ORDER BY started")]

    def set_harvest(self, harvest_id: str, **fields: Any) -> None:
        assignments = ", ".join(f"{k} = ?" for k in fields)
        self._do(f"UPDATE harvests SET {assignments} WHERE id = ?", *fields.values(), harvest_id)

    # -- a harvest's instances --------------------------------------------------------------

    def found(self, harvest_id: str, rows: list[tuple[str, str, str, str]]) -> None:
        """Instances (sop, study, series, modality) found for a harvest; those known keep their state."""
        with self.lock:
            self.db.executemany("INSERT OR IGNORE INTO instances (harvest, sop, study, series, modality, state) "
                                "VALUES (?, ?, ?, ?, ?, 'found')", [(harvest_id, *r) for r in rows])

    def instances(self, harvest_id: str, *states: str) -> list[dict[str, Any]]:
        rows = self._rows("SELECT * FROM instances WHERE harvest = ? ORDER BY study, series, sop", harvest_id)
        return [r for r in rows if not states or r["state"] in states]

    def set(self, harvest_id: str, sops: list[str], state: str, reason: str | None = None, **fields: Any) -> None:
        """Move instances to ``state`` (with a reason, or outputs)."""
        columns = {"state": state, "reason": reason, **fields}
        assignments = ", ".join(f"{k} = ?" for k in columns)
        with self.lock:
            self.db.executemany(f"UPDATE instances SET {assignments} WHERE harvest = ? AND sop = ?",
                                [(*columns.values(), harvest_id, sop) for sop in sops])

    def counts(self, harvest_id: str) -> dict[str, int]:
        """The report's counts: found, received (in the inbox), and how many reached or passed
        each later step or ended there."""
        rows = self.instances(harvest_id)
        states = Counter(r["state"] for r in rows)
        passed = lambda *names: sum(states[n] for n in names)  # noqa: E731
        return {"found": len(rows), "received": len(self.inbox([r["sop"] for r in rows])),
                "processed": passed("processed", "uploaded", "delivered"),
                "quarantined": states["quarantined"], "failed": states["failed"], "delivered": states["delivered"]}

    def reasons(self, harvest_id: str, state: str) -> dict[str, int]:
        """How many instances ended in ``state`` for each reason."""
        return dict(Counter(r["reason"] or "" for r in self.instances(harvest_id, state)))
