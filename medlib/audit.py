"""Accounting of every access to patient data: one function that every access calls.

``record("open", dataset="lung-ct", series=3)`` writes one event: who (the hub's user of this
server), when, what, on which dataset. Events go to the JSON-lines file named by
``$MEDHUB_AUDIT_LOG`` (default ``~/.medlib/audit.jsonl``), each line written whole with one
``write`` call. The tamper-evident audit service of the hub will take these events (its
issue); callers do not change.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

AUDIT_LOG_ENV = "MEDHUB_AUDIT_LOG"


def log_path() -> Path:
    return Path(os.environ.get(AUDIT_LOG_ENV) or Path.home() / ".medlib" / "audit.jsonl")


def record(action: str, **details: object) -> dict[str, object]:
    """Account for one access (``open``, ``verify``, ``export``, ...) and return the event."""
    event = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "user": os.environ.get("JUPYTERHUB_USER")
             or os.environ.get("MEDHUB_USER") or os.environ.get("USER", ""), "action": action, **details}
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(event, sort_keys=True, default=str) + "\n").encode())
    finally:
        os.close(fd)
    return event
