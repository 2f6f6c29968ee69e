"""The audit log on disk: append-only JSON Lines, each record chained to the one before by an
HMAC-SHA-256 under a key only the hub holds.

A record is ``{"seq": n, "prev": <mac of record n-1>, "event": {...}, "mac": <hex>}`` with
``mac = HMAC(key, prev || canonical JSON of [seq, event])``; the first record's ``prev`` is 64
zeros. Records fill segments (``segment-000001.jsonl``, …) of a bounded size; the chain runs on
across segments. Every :attr:`AuditLog.checkpoint_every` records, at least every
:attr:`AuditLog.checkpoint_seconds` while records come in (:meth:`AuditLog.tick`), and when the
log is closed, a checkpoint (seq, mac, time, its own HMAC) is appended to ``checkpoints.jsonl``:
it lets :func:`verify` notice records cut from the end, which the chain alone cannot. Whoever
can rewrite the folder can cut the checkpoints too, so each checkpoint is also anchored outside
it: appended to ``checkpoints.jsonl`` in an anchor folder elsewhere, and handed to
``on_checkpoint`` (the syslog collector, where one is configured). :func:`verify` compares the
chain's head with the newest anchored checkpoint and says how many records are missing.

Without the key nobody can write a record that verifies: an edited, removed, inserted or
reordered record breaks the chain at that place, and :func:`verify` names it.

One :class:`AuditLog` writes a folder (the audit service); readers may open it any time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlib.contract import utc_now

GENESIS = "0" * 64
SEGMENT = "segment-{:06d}.jsonl"
CHECKPOINTS = "checkpoints.jsonl"
FSYNC_POLICIES = ("always", "never")


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_mac(key: bytes, seq: int, prev: str, event: dict) -> str:
    return hmac.new(key, prev.encode() + canonical([seq, event]), hashlib.sha256).hexdigest()


def checkpoint_mac(key: bytes, seq: int, mac: str, time: str) -> str:
    return hmac.new(key, b"checkpoint\0" + canonical([seq, mac, time]), hashlib.sha256).hexdigest()


def segments(folder: Path) -> list[Path]:
    return sorted(folder.glob("segment-*.jsonl"))


class AuditLog:
    """The single writer of one audit folder.

    Args:
        folder: where segments and checkpoints live (created 0700).
        key: the HMAC key (at least 32 bytes).
        fsync: "always" (each :meth:`append` is on disk before it returns: the production
            setting) or "never" (tests of the chain only).
        segment_bytes: start a new segment beyond this size.
        checkpoint_every: records between checkpoints.
        checkpoint_seconds: seconds after which :meth:`tick` checkpoints records not yet covered.
        anchor: a folder outside ``folder`` where each checkpoint is also appended (None: none).
        on_checkpoint: also called with each checkpoint (e.g. to send it to syslog).
    """

    def __init__(self, folder: str | os.PathLike[str], key: bytes, *, fsync: str = "always",
                 segment_bytes: int = 64 << 20, checkpoint_every: int = 1000, checkpoint_seconds: float = 60,
                 anchor: str | os.PathLike[str] | None = None, on_checkpoint: Callable[[dict], None] | None = None):
        if len(key) < 32:
            raise ValueError("the audit key needs at least 32 bytes")
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._key, self.fsync = key, fsync
        self.segment_bytes, self.checkpoint_every = segment_bytes, checkpoint_every
        self.checkpoint_seconds, self.on_checkpoint = checkpoint_seconds, on_checkpoint
        self.anchor = Path(anchor) if anchor is not None else None
        if self.anchor is not None:
            if self.anchor.resolve().is_relative_to(self.folder.resolve()):
                raise ValueError(f"the audit anchor {self.anchor} must lie outside the log's folder {self.folder}")
            self.anchor.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._checkpointed_at = time.monotonic()
        self._lock = threading.Lock()
        self.seq, self.mac = 0, GENESIS
        existing = segments(self.folder)
        self._segment_no = int(existing[-1].stem.split("-")[1]) if existing else 1
        if existing:
            self._recover(existing[-1])
        self._file = open(self.folder / SEGMENT.format(self._segment_no), "ab")
        self._since_checkpoint = 0

    def _recover(self, last: Path) -> None:
        """Continue the chain after the last complete record (an unacknowledged torn line, from a
        crash in mid-write, is moved aside to ``<segment>.torn``)."""
        data = last.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            with open(last.with_suffix(".torn"), "ab") as f:
                f.write(data[end:])
            with open(last, "r+b") as f:
                f.truncate(end)
        lines = data[:end].splitlines()
        if lines:
            record = json.loads(lines[-1])
            self.seq, self.mac = record["seq"], record["mac"]
        elif self._segment_no > 1:
            previous = self.folder / SEGMENT.format(self._segment_no - 1)
            record = json.loads(previous.read_bytes().splitlines()[-1])
            self.seq, self.mac = record["seq"], record["mac"]

    def append(self, events: Iterable[dict]) -> list[int]:
        """Chain and write ``events`` (one write, one fsync); returns their sequence numbers."""
        with self._lock:
            lines, seqs = [], []
            for event in events:
                self.seq += 1
                mac = record_mac(self._key, self.seq, self.mac, event)
                lines.append(canonical({"seq": self.seq, "prev": self.mac, "event": event, "mac": mac}) + b"\n")
                self.mac = mac
                seqs.append(self.seq)
            if not lines:
                return []
            self._file.write(b"".join(lines))
            self._file.flush()
            if self.fsync == "always":
                os.fsync(self._file.fileno())
            self._since_checkpoint += len(lines)
            if self._since_checkpoint >= self.checkpoint_every:
                self._checkpoint()
            if self._file.tell() >= self.segment_bytes:
                self._file.close()
                self._segment_no += 1
                self._file = open(self.folder / SEGMENT.format(self._segment_no), "ab")
            return seqs

    def tick(self) -> bool:
        """Checkpoint the records not yet covered if the last checkpoint is
        :attr:`checkpoint_seconds` old; whether it did."""
        with self._lock:
            if self._since_checkpoint and time.monotonic() - self._checkpointed_at >= self.checkpoint_seconds:
                self._checkpoint()
                return True
            return False

    def _checkpoint(self) -> None:
        stamp = utc_now()
        checkpoint = {"seq": self.seq, "mac": self.mac, "time": stamp,
                      "cmac": checkpoint_mac(self._key, self.seq, self.mac, stamp)}
        line = canonical(checkpoint) + b"\n"
        for folder in (self.folder, self.anchor):
            if folder is None:
                continue
            fd = os.open(folder / CHECKPOINTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                if self.fsync == "always":
                    os.fsync(fd)
            finally:
                os.close(fd)
        if self.on_checkpoint is not None:
            self.on_checkpoint(checkpoint)
        self._since_checkpoint, self._checkpointed_at = 0, time.monotonic()

    def close(self) -> None:
        with self._lock:
            if self.seq and self._since_checkpoint:
                self._checkpoint()
            self._file.close()


def records(folder: str | os.PathLike[str]) -> Iterator[tuple[str, int, dict]]:
    """(segment name, line number, record) of every line, in order; a line that is not JSON
    comes as ``{"unreadable": <text>}``."""
    for segment in segments(Path(folder)):
        with open(segment, "rb") as f:
            for n, line in enumerate(f, 1):
                try:
                    yield segment.name, n, json.loads(line)
                except ValueError:
                    yield segment.name, n, {"unreadable": line.decode(errors="replace")}


@dataclass
class Verification:
    checked: int
    problem: str | None = None  # the first one found, naming the record

    @property
    def ok(self) -> bool:
        return self.problem is None


def _checkpoints(path: Path) -> Iterator[tuple[int, dict | None]]:
    """(line number, checkpoint) of a checkpoints file; None for one whose HMAC is not the key's
    (checked by the caller) or that is not a checkpoint."""
    for n, line in enumerate(path.read_text().splitlines() if path.exists() else [], 1):
        try:
            cp = json.loads(line)
            yield n, cp if {"seq", "mac", "time", "cmac"} <= set(cp) else None
        except ValueError:
            yield n, None


def verify(folder: str | os.PathLike[str], key: bytes, anchor: str | os.PathLike[str] | None = None) -> Verification:
    """Check the whole chain, the checkpoints, and the chain's head against the newest checkpoint
    anchored in ``anchor``; stop at the first problem and name it."""
    expected, prev, macs, checked = 1, GENESIS, {}, 0
    for segment, line, record in records(folder):
        where = f"{segment} line {line}"
        if "unreadable" in record or not {"seq", "prev", "event", "mac"} <= set(record):
            return Verification(checked, f"{where}: not an audit record (edited)")
        seq = record["seq"]
        if not isinstance(seq, int) or seq < expected:
            return Verification(checked, f"{where}: record seq {seq} after seq {expected - 1}: "
                                         "inserted or reordered")
        if seq > expected:
            removed = f"seq {expected}" if seq == expected + 1 else f"seqs {expected}-{seq - 1}"
            return Verification(checked, f"{where}: record {removed} removed before seq {seq}")
        if record["prev"] != prev:
            return Verification(checked, f"{where}: record seq {seq} does not follow the record before it: "
                                         "inserted or reordered")
        if not hmac.compare_digest(record["mac"], record_mac(key, seq, prev, record["event"])):
            return Verification(checked, f"{where}: record seq {seq} was edited (its HMAC does not match)")
        prev, expected, checked = record["mac"], expected + 1, checked + 1
        macs[seq] = record["mac"]
    places = [(Path(folder) / CHECKPOINTS, "checkpoint")]
    if anchor is not None:
        places.append((Path(anchor) / CHECKPOINTS, f"anchored checkpoint ({Path(anchor) / CHECKPOINTS})"))
    for path, name in places:
        newest = (0, 0)  # (seq, line) of the newest checkpoint
        for n, cp in _checkpoints(path):
            try:
                valid = cp is not None and hmac.compare_digest(cp["cmac"], checkpoint_mac(key, cp["seq"], cp["mac"],
                                                                                          cp["time"]))
            except TypeError:
                valid = False
            if not valid:
                return Verification(checked, f"{path.name} line {n}: {name} edited")
            if cp["seq"] <= checked and macs.get(cp["seq"]) != cp["mac"]:
                return Verification(checked, f"record seq {cp['seq']} differs from {name} {n}: replaced")
            newest = max(newest, (cp["seq"], n), key=lambda seq_line: seq_line[0])
        if newest[0] > checked:
            return Verification(checked, f"{newest[0] - checked} record(s) missing after seq {checked}: {name} "
                                         f"{newest[1]} vouches for seq {newest[0]} (the end of the log was cut)")
    return Verification(checked)


def query(folder: str | os.PathLike[str], *, user: str | None = None, dataset: str | None = None,
          action: str | None = None, since: str | None = None, until: str | None = None,
          limit: int | None = None) -> list[dict]:
    """Events matching every filter given (times as ISO UTC strings, ``since`` inclusive,
    ``until`` exclusive), oldest first, each with its ``seq``. ``user`` selects the events by
    that user (the actor) and about them (the object's ``user``: a grant approved for them)."""
    out = []
    for _, _, record in records(folder):
        event = record.get("event")
        if not isinstance(event, dict):
            continue
        if (user and user not in (event.get("actor", {}).get("user"), event.get("object", {}).get("user"))
                or dataset and event.get("object", {}).get("dataset") != dataset
                or action and event.get("action") != action or since and event.get("time", "") < since
                or until and event.get("time", "") >= until):
            continue
        out.append({"seq": record["seq"], **event})
        if limit and len(out) >= limit:
            break
    return out
