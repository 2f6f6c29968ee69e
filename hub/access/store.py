"""Access requests, personal grants, published derivatives and the servers that mount
datasets, in one SQLite file.

The access service writes requests, grants and the catalog entries of published derivatives
(:mod:`medhub.access.service`); the hub's spawners read a user's active grants and the
published entries at spawn, and note which server mounts which dataset (and by which grant), so
that the service can stop exactly those servers when a grant ends or a version is deleted. Times are seconds since
the epoch here and :data:`medlib.contract.TIME_FORMAT` strings in what leaves the store.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
import uuid
from enum import StrEnum
from pathlib import Path
from typing import Any

from medlib.contract import TIME_FORMAT

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, user TEXT NOT NULL, dataset TEXT NOT NULL, purpose TEXT NOT NULL,
    approval TEXT NOT NULL, until REAL NOT NULL, created REAL NOT NULL, state TEXT NOT NULL,
    decided_by TEXT, decided_at REAL, reason TEXT, grant_id TEXT
);
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY, user TEXT NOT NULL, dataset TEXT NOT NULL, purpose TEXT NOT NULL,
    approval TEXT NOT NULL, approver TEXT NOT NULL, request TEXT, starts REAL NOT NULL, expires REAL NOT NULL,
    revoked REAL, revoked_by TEXT, revoke_reason TEXT, expiry_recorded INTEGER NOT NULL DEFAULT 0,
    versions TEXT
);
CREATE TABLE IF NOT EXISTS mounts (
    user TEXT NOT NULL, server TEXT NOT NULL, dataset TEXT NOT NULL, grant_id TEXT, since REAL NOT NULL,
    PRIMARY KEY (user, server, dataset)
);
CREATE TABLE IF NOT EXISTS published (
    id TEXT PRIMARY KEY, entry TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS mount_history (
    user TEXT NOT NULL, dataset TEXT NOT NULL, first REAL NOT NULL, last REAL NOT NULL, PRIMARY KEY (user, dataset)
);
CREATE TABLE IF NOT EXISTS exports (
    id TEXT PRIMARY KEY, user TEXT NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
    justification TEXT NOT NULL, created REAL NOT NULL, state TEXT NOT NULL, kind TEXT NOT NULL,
    flags TEXT NOT NULL, decided REAL, download_until REAL
);
CREATE TABLE IF NOT EXISTS export_reviews (
    export TEXT NOT NULL, dataset TEXT NOT NULL, decision TEXT, by TEXT, reason TEXT, at REAL,
    PRIMARY KEY (export, dataset)
);
CREATE INDEX IF NOT EXISTS grants_by_user ON grants (user, expires);
"""
TIMES = ("until", "created", "decided_at", "starts", "expires", "revoked", "since", "decided", "download_until", "at")


class RequestState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REFUSED = "refused"
    WITHDRAWN = "withdrawn"


class ExportState(StrEnum):
    PENDING = "pending"  # waiting for an owner of each dataset that holds it back
    APPROVED = "approved"  # downloadable by its requester until download_until
    REFUSED = "refused"


class GrantState(StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


def iso(seconds: float) -> str:
    """``seconds`` since the epoch in :data:`medlib.contract.TIME_FORMAT`."""
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime(TIME_FORMAT)


def grant_state(grant: dict[str, Any], now: float | None = None) -> GrantState:
    """Whether a grant (a row, times in seconds) is active, expired or revoked at ``now``."""
    if grant["revoked"] is not None:
        return GrantState.REVOKED
    return GrantState.ACTIVE if grant["expires"] > (time.time() if now is None else now) else GrantState.EXPIRED


class AccessStore:
    """Requests and grants by id; opened by the access service and, briefly, by the hub."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- requests ---------------------------------------------------------------------------
    def add_request(self, user: str, dataset: str, purpose: str, approval: str, until: float) -> dict[str, Any]:
        request_id = uuid.uuid4().hex[:12]
        self.db.execute("INSERT INTO requests (id, user, dataset, purpose, approval, until, created, state) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (request_id, user, dataset, purpose, approval, until, time.time(), RequestState.PENDING))
        return self.request(request_id)

    def request(self, request_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        return _public(row) if row else None

    def requests(self, *, user: str | None = None, datasets: set[str] | None = None,
                 states: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Requests of ``user``, or of ``datasets``, in ``states`` (any if empty), oldest first."""
        rows = self.db.execute("SELECT * FROM requests ORDER BY created")
        return [_public(r) for r in rows if (user is None or r["user"] == user)
                and (datasets is None or r["dataset"] in datasets) and (not states or r["state"] in states)]

    def decide(self, request_id: str, state: RequestState, by: str, reason: str,
               grant_id: str | None = None) -> dict[str, Any]:
        """Record the decision on a pending request; the request as it is afterwards."""
        self.db.execute("UPDATE requests SET state = ?, decided_by = ?, decided_at = ?, reason = ?, grant_id = ? "
                        "WHERE id = ? AND state = ?",
                        (state, by, time.time(), reason, grant_id, request_id, RequestState.PENDING))
        return self.request(request_id)

    # --- grants -----------------------------------------------------------------------------
    def add_grant(self, user: str, dataset: str, purpose: str, approval: str, approver: str, expires: float,
                  request: str | None = None, versions: list[str] | None = None) -> dict[str, Any]:
        """A new grant; ``versions``: only those of a versioned dataset (None: all)."""
        grant_id = uuid.uuid4().hex[:12]
        self.db.execute("INSERT INTO grants (id, user, dataset, purpose, approval, approver, request, starts, expires, "
                        "versions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (grant_id, user, dataset, purpose, approval, approver, request, time.time(), expires,
                         json.dumps(versions) if versions else None))
        return self.grant(grant_id)

    def grant(self, grant_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM grants WHERE id = ?", (grant_id,)).fetchone()
        return _public(row) if row else None

    def grants(self, *, user: str | None = None, datasets: set[str] | None = None) -> list[dict[str, Any]]:
        """Every grant of ``user``, or of ``datasets``, with its state, oldest first."""
        rows = self.db.execute("SELECT * FROM grants ORDER BY starts")
        return [_public(r) for r in rows if (user is None or r["user"] == user)
                and (datasets is None or r["dataset"] in datasets)]

    def active(self, user: str, now: float | None = None) -> list[dict[str, Any]]:
        """``user``'s grants in force at ``now`` (default: now), as rows with times in seconds."""
        now = time.time() if now is None else now
        rows = self.db.execute("SELECT * FROM grants WHERE user = ? AND revoked IS NULL AND expires > ? "
                               "ORDER BY expires", (user, now))
        return [dict(r) | {"versions": json.loads(r["versions"]) if r["versions"] else None} for r in rows]

    def revoke(self, grant_id: str, by: str, reason: str) -> dict[str, Any]:
        self.db.execute("UPDATE grants SET revoked = ?, revoked_by = ?, revoke_reason = ? "
                        "WHERE id = ? AND revoked IS NULL", (time.time(), by, reason, grant_id))
        return self.grant(grant_id)

    def newly_expired(self, now: float | None = None) -> list[dict[str, Any]]:
        """Grants that ran out (not revoked) and whose expiry is not yet recorded; marks them recorded."""
        now = time.time() if now is None else now
        rows = [_public(r) for r in self.db.execute(
            "SELECT * FROM grants WHERE expiry_recorded = 0 AND revoked IS NULL AND expires <= ?", (now,))]
        for grant in rows:
            self.db.execute("UPDATE grants SET expiry_recorded = 1 WHERE id = ?", (grant["id"],))
        return rows

    # --- servers that mount datasets ----------------------------------------------------------
    def mounted(self, user: str, server: str, datasets: dict[str, str | None]) -> None:
        """``user``'s server ``server`` is starting with ``datasets`` (id → the personal grant it
        comes with, or None for a group's), and no other."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM mounts WHERE user = ? AND server = ?", (user, server))
            now = time.time()
            self.db.executemany("INSERT INTO mounts (user, server, dataset, grant_id, since) VALUES (?, ?, ?, ?, ?)",
                                [(user, server, d, g, now) for d, g in datasets.items()])
            self.db.executemany("INSERT INTO mount_history (user, dataset, first, last) VALUES (?, ?, ?, ?) "
                                "ON CONFLICT (user, dataset) DO UPDATE SET last = excluded.last",
                                [(user, d, now, now) for d in datasets])

    def ever_mounted(self, user: str) -> list[str]:
        """Every dataset a server of ``user`` was ever started with (their home may hold its results)."""
        return [r["dataset"] for r in
                self.db.execute("SELECT dataset FROM mount_history WHERE user = ? ORDER BY dataset", (user,))]

    def unmounted(self, user: str, server: str) -> None:
        """The server stopped."""
        self.db.execute("DELETE FROM mounts WHERE user = ? AND server = ?", (user, server))

    def mounting(self, dataset: str) -> list[tuple[str, str]]:
        """The (user, server) noted as mounting ``dataset``."""
        return [(r["user"], r["server"]) for r in
                self.db.execute("SELECT user, server FROM mounts WHERE dataset = ? ORDER BY user, server", (dataset,))]

    # --- exports ----------------------------------------------------------------------------
    def add_export(self, user: str, name: str, size: int, digest: str, justification: str, kind: str,
                   flags: list[str], reviewers: list[str], download_until: float | None) -> dict[str, Any]:
        """A new export; with no ``reviewers`` it is approved at once, until ``download_until``."""
        export_id = uuid.uuid4().hex[:12]
        state = ExportState.PENDING if reviewers else ExportState.APPROVED
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("INSERT INTO exports (id, user, name, size, sha256, justification, created, state, kind, "
                            "flags, decided, download_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (export_id, user, name, size, digest, justification, time.time(), state, kind,
                             json.dumps(flags), None if reviewers else time.time(),
                             None if reviewers else download_until))
            self.db.executemany("INSERT INTO export_reviews (export, dataset) VALUES (?, ?)",
                                [(export_id, d) for d in reviewers])
        return self.export(export_id)

    def export(self, export_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM exports WHERE id = ?", (export_id,)).fetchone()
        if row is None:
            return None
        out = _public(row)
        out["flags"] = json.loads(out["flags"])
        out["reviews"] = [_public(r) for r in self.db.execute(
            "SELECT dataset, decision, by, reason, at FROM export_reviews WHERE export = ? ORDER BY dataset",
            (export_id,))]
        return out

    def exports(self, *, user: str | None = None, datasets: set[str] | None = None) -> list[dict[str, Any]]:
        """The exports of ``user``, or those held back by one of ``datasets``, oldest first."""
        ids = [r["id"] for r in self.db.execute("SELECT id, user FROM exports ORDER BY created")
               if user is None or r["user"] == user]
        found = [self.export(i) for i in ids]
        return [e for e in found if datasets is None or {r["dataset"] for r in e["reviews"]} & datasets]

    def review(self, export_id: str, datasets: list[str], decision: str, by: str, reason: str,
               download_until: float) -> dict[str, Any]:
        """Record ``by``'s decision for ``datasets`` of a pending export; it is approved (until
        ``download_until``) once every dataset approves, refused as soon as one refuses."""
        with self.db:
            self.db.execute("BEGIN")
            now = time.time()
            self.db.executemany("UPDATE export_reviews SET decision = ?, by = ?, reason = ?, at = ? "
                                "WHERE export = ? AND dataset = ?",
                                [(decision, by, reason, now, export_id, d) for d in datasets])
            decisions = [r[0] for r in self.db.execute("SELECT decision FROM export_reviews WHERE export = ?",
                                                       (export_id,))]
            if "refused" in decisions:
                self.db.execute("UPDATE exports SET state = ?, decided = ? WHERE id = ?",
                                (ExportState.REFUSED, now, export_id))
            elif all(d == "approved" for d in decisions):
                self.db.execute("UPDATE exports SET state = ?, decided = ?, download_until = ? WHERE id = ?",
                                (ExportState.APPROVED, now, download_until, export_id))
        return self.export(export_id)

    # --- published derivatives --------------------------------------------------------------
    def add_published(self, entry: dict[str, Any]) -> None:
        """A new catalog entry (:meth:`medhub.catalog.Dataset.to_dict`) of a published derivative."""
        self.db.execute("INSERT INTO published (id, entry, created) VALUES (?, ?, ?)",
                        (entry["id"], json.dumps(entry), time.time()))

    def published(self) -> list[dict[str, Any]]:
        """The published derivatives' catalog entries, oldest first."""
        return [json.loads(r["entry"]) for r in self.db.execute("SELECT entry FROM published ORDER BY created")]

    def ended_mounts(self, now: float | None = None) -> list[dict[str, Any]]:
        """Servers still noted as mounting a grant that has ended: (user, server, the grant)."""
        now = time.time() if now is None else now
        rows = self.db.execute("SELECT m.server AS server, g.* FROM mounts m JOIN grants g ON g.id = m.grant_id "
                               "WHERE g.revoked IS NOT NULL OR g.expires <= ?", (now,))
        return [{"server": r["server"], "grant": _public(r)} for r in rows]


def _public(row: sqlite3.Row) -> dict[str, Any]:
    """A row as the API shows it: times as strings, a grant with its state."""
    out = {k: row[k] for k in row.keys() if k not in ("server", "expiry_recorded")}
    if "expires" in out:
        out["state"] = grant_state(out)
        out["versions"] = json.loads(out["versions"]) if out.get("versions") else None
    return {k: iso(v) if k in TIMES and v is not None else v for k, v in out.items()}
