"""Accounting of every access to patient data: the one function the library calls.

    from medlib import audit
    audit.record("dataset-open", {"dataset": "lung-ct", "series": 2})

The event goes to the hub's audit service (``$MEDHUB_AUDIT_URL``) with this server's JupyterHub
token (``$JUPYTERHUB_API_TOKEN``): the service, not this process, says who acted. If the service
cannot be reached (or none is configured), the event is appended to a buffer on local disk
(``$MEDHUB_AUDIT_BUFFER``, default ``~/.medlib/audit-buffer.jsonl``, fsync'd) and delivered,
in order, before the next event that gets through, or by :func:`flush`: never dropped. A
crash between delivery and clearing the buffer can deliver an event twice, never zero times.
The event schema is the platform's one (README.md, "Audit log").
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .contract import AUDIT_BUFFER_ENV as BUFFER_ENV
from .contract import AUDIT_SOURCE_ENV, AUDIT_URL_ENV, utc_now

TIMEOUT = 5.0


class AuditClient:
    """Delivers events to the audit service, buffering on disk what it cannot deliver now."""

    def __init__(self, url: str | None, token: str | None, buffer: str | os.PathLike[str],
                 source: str = "notebook", timeout: float = TIMEOUT):
        self.url, self.token, self.buffer = url, token, Path(buffer)
        self.source, self.timeout = source, timeout
        self._lock = threading.Lock()
        self._connection: http.client.HTTPConnection | None = None

    def record(self, action: str, object: dict[str, Any] | None = None,  # noqa: A002 - the schema's name
               outcome: str = "success", *, actor: dict[str, Any] | None = None, **details: Any) -> dict[str, Any]:
        """Send one event (or buffer it); return it as sent. ``actor`` counts only for the hub's
        own writer; for everyone else the service takes the actor from the token."""
        event = {"time": utc_now(), "source": self.source, "action": action, "object": object or {},
                 "outcome": outcome, "details": details}
        if actor is not None:
            event["actor"] = actor
        with self._lock, self._locked_buffer() as buffered:
            pending = buffered + [event]
            if not self._post(pending):
                self._append([event])
            elif buffered:
                self._clear()
        return event

    def flush(self) -> int:
        """Deliver what is buffered; return how many events are still waiting."""
        with self._lock, self._locked_buffer() as buffered:
            if buffered and self._post(buffered):
                self._clear()
                return 0
            return len(buffered)

    # -- delivery --------------------------------------------------------------------------

    def _post(self, events: list[dict[str, Any]]) -> bool:
        """Deliver ``events`` over a kept-alive connection; False if the service cannot be reached."""
        if not self.url or not self.token:
            return False
        body = json.dumps({"events": events})
        headers = {"Authorization": f"token {self.token}", "Content-Type": "application/json"}
        for attempt in (1, 2):  # a kept-alive connection the service closed: one fresh try
            try:
                if self._connection is None:
                    target = urlparse(self.url)
                    kind = http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
                    self._connection = kind(target.hostname, target.port, timeout=self.timeout)
                self._connection.request("POST", urlparse(self.url).path, body, headers)
                response = self._connection.getresponse()
                detail = response.read()
            except (OSError, http.client.HTTPException):
                self._close()
                continue
            if response.status == 201:
                return True
            if 400 <= response.status < 500 and response.status not in (401, 403, 408, 429):
                raise AuditRejected(f"the audit service refused the event ({response.status}): {detail[:300]!r}")
            return False
        return False

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection = None

    # -- the buffer ------------------------------------------------------------------------

    @contextmanager
    def _locked_buffer(self):
        """The buffered events, with the buffer locked against other processes of this user."""
        self.buffer.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.buffer.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                lines = self.buffer.read_text().splitlines()
            except FileNotFoundError:
                lines = []
            yield [json.loads(line) for line in lines if line.strip()]
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _append(self, events: list[dict]) -> None:
        fd = os.open(self.buffer, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, "".join(json.dumps(e, sort_keys=True) + "\n" for e in events).encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def _clear(self) -> None:
        self.buffer.unlink(missing_ok=True)


class AuditRejected(ValueError):
    """The service refused an event as malformed (a programming error, not an outage)."""


_client: AuditClient | None = None


def client() -> AuditClient:
    """This process's client, from the environment the hub gave the server."""
    global _client
    url, token = os.environ.get(AUDIT_URL_ENV), os.environ.get("JUPYTERHUB_API_TOKEN")
    buffer = os.environ.get(BUFFER_ENV) or str(Path.home() / ".medlib" / "audit-buffer.jsonl")
    source = os.environ.get(AUDIT_SOURCE_ENV, "notebook")
    if _client is None or (_client.url, _client.token, str(_client.buffer), _client.source) != (url, token, buffer, source):
        _client = AuditClient(url, token, buffer, source)
    return _client


def record(action: str, object: dict[str, Any] | None = None,  # noqa: A002 - the schema's name
           outcome: str = "success", **details: Any) -> dict[str, Any]:
    """Account for one access: ``action`` from the platform's vocabulary (``dataset-open``,
    ``dataset-verify``, ``export``, ``anonymize-run``, ``reidentify``, ``train-start``, …),
    ``object`` the ids and counts touched, ``outcome`` success, denied or failure."""
    return client().record(action, object, outcome, **details)


def flush() -> int:
    """Deliver buffered events now; the number still waiting."""
    return client().flush()
