"""The batch service's jobs, in its own SQLite file: they outlive restarts of the service and
of the hub."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from medlib.contract import JobState

ACTIVE = (JobState.QUEUED, JobState.STARTING, JobState.RUNNING, JobState.CANCELLING)
FINAL = tuple(state for state in JobState if state.final)
HOLDING = (JobState.STARTING, JobState.RUNNING, JobState.CANCELLING)  # a job that holds a server
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, user TEXT NOT NULL, name TEXT NOT NULL, parameters TEXT NOT NULL,
    profile TEXT NOT NULL, datasets TEXT NOT NULL, status TEXT NOT NULL, error TEXT,
    server TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL,
    token TEXT, token_id TEXT, token_expires REAL
)
"""
#: Columns added after the first release, with their types: added to an older database on open.
ADDED_COLUMNS = {"token": "TEXT", "token_id": "TEXT", "token_expires": "REAL"}


class JobStore:
    """Jobs by id; notebooks (input and output) as files beside the database."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.folder / "jobs.sqlite", isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(SCHEMA)
        present = {row[1] for row in self.db.execute("PRAGMA table_info(jobs)")}
        for column, kind in ADDED_COLUMNS.items():
            if column not in present:
                self.db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")

    def notebook(self, job_id: str, which: str) -> Path:
        """The ``input`` or ``output`` notebook of a job."""
        return self.folder / job_id / f"{which}.ipynb"

    def add(self, user: str, name: str, notebook: dict, parameters: dict, profile: str, datasets: list[str]) -> dict:
        job_id = uuid.uuid4().hex[:12]
        path = self.notebook(job_id, "input")
        path.parent.mkdir()
        path.write_text(json.dumps(notebook))
        self.db.execute("INSERT INTO jobs (id, user, name, parameters, profile, datasets, status, server, created) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (job_id, user, name, json.dumps(parameters), profile, json.dumps(datasets), JobState.QUEUED,
                         f"batch-{job_id}", time.time()))
        return self.get(job_id)

    def get(self, job_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def list(self, user: str | None = None) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM jobs WHERE ? IS NULL OR user = ? ORDER BY created", (user, user))
        return [self._job(r) for r in rows]

    def active(self) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(ACTIVE))
        return [self._job(r) for r in self.db.execute(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY created",
                                                       ACTIVE)]

    def running(self, user: str) -> int:
        """The user's jobs that hold a server (starting, running or being cancelled)."""
        marks = ",".join("?" * len(HOLDING))
        return self.db.execute(f"SELECT count(*) FROM jobs WHERE user = ? AND status IN ({marks})",
                               (user, *HOLDING)).fetchone()[0]

    def update(self, job_id: str, **fields: Any) -> dict[str, Any]:
        if fields.get("status") == JobState.STARTING and "started" not in fields:
            fields["started"] = time.time()
        if fields.get("status") in FINAL and "finished" not in fields:
            fields["finished"] = time.time()
        assignments = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*fields.values(), job_id))
        return self.get(job_id)

    def token(self, job_id: str) -> tuple[str | None, str | None, float]:
        """The job's server token: (token, its id in the hub, when it expires); Nones if none."""
        row = self.db.execute("SELECT token, token_id, token_expires FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return (row[0], row[1], row[2] or 0.0) if row else (None, None, 0.0)

    @staticmethod
    def _job(row: sqlite3.Row) -> dict[str, Any]:
        job = {k: row[k] for k in row.keys() if k not in ADDED_COLUMNS}  # the token never leaves the service
        job["parameters"] = json.loads(job["parameters"])
        job["datasets"] = json.loads(job["datasets"])
        return job
