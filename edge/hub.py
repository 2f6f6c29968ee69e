"""The edge's only way out: HTTPS calls to the hub's ingest service, with the site's token.

Each call is retried with doubling waits while the hub cannot be reached or answers 5xx; an
upload resumes at the byte the hub already holds (it says, for a file named by its SHA-256),
so that a dropped connection or a restarted edge sends nothing twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from medlib.contract import INGEST_SERVICE

from .errors import EdgeError

log = logging.getLogger("medhub.edge")


class HubUnreachable(EdgeError):
    """The hub did not answer, after the retries."""


class HubRefused(EdgeError):
    """The hub answered with an error; the message is its reason."""

    def __init__(self, status: int, message: str, body: dict[str, Any] | None = None):
        super().__init__(f"the hub refused (HTTP {status}): {message}")
        self.status, self.body = status, body or {}


class HubClient:
    """The ingest service of one hub, as one site."""

    def __init__(self, hub_url: str, token: str, chunk_bytes: int = 8 << 20, retries: int = 6,
                 sleep: Callable[[float], None] = time.sleep):
        self.base = f"{hub_url.rstrip('/')}/services/{INGEST_SERVICE}"
        self.http = httpx.Client(headers={"Authorization": f"token {token}"}, timeout=120)
        self.chunk_bytes, self.retries, self.sleep = chunk_bytes, retries, sleep

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, ok: tuple[int, ...] = (200, 201), **kwargs: Any) -> httpx.Response:
        """One request, retried while the hub is unreachable, failing (5xx) or not routing to the
        service yet (an answer that is not the service's JSON)."""
        problem = ""
        for attempt in range(self.retries):
            try:
                response = self.http.request(method, self.base + path, **kwargs)
            except httpx.HTTPError as e:
                problem = f"cannot reach {self.base}: {e}"
            else:
                if response.status_code in ok:
                    return response
                from_service = response.headers.get("content-type", "").startswith("application/json")
                if response.status_code < 500 and from_service:  # the service's own refusal, not a hub restarting
                    raise HubRefused(response.status_code, _message(response), response.json())
                problem = f"HTTP {response.status_code}: {_message(response)}"
            wait = min(60.0, 2.0 ** attempt)
            log.warning("hub: %s; trying again in %.0f s", problem, wait)
            self.sleep(wait)
        raise HubUnreachable(f"the hub's ingest service: {problem}")

    def requests(self) -> list[dict[str, Any]]:
        """The harvests addressed to this site that are pending or running."""
        return self.call("GET", "/harvests", params={"state": "pending,running"}).json()["harvests"]

    def progress(self, harvest_id: str, state: str, counts: dict[str, int], message: str = "",
                 quarantine: dict[str, int] | None = None) -> dict[str, Any]:
        return self.call("POST", f"/harvests/{harvest_id}/progress", json={
            "state": state, "counts": counts, "message": message, "quarantine": quarantine or {}}).json()

    def upload(self, harvest_id: str, path: Path, digest: str) -> None:
        """Send ``path`` (of SHA-256 ``digest``), from the byte the hub already holds."""
        size = path.stat().st_size
        url = f"/harvests/{harvest_id}/files/{digest}"
        state, offset = {"complete": False}, 0  # a first chunk that does not fit is answered with what the hub holds
        with open(path, "rb") as f:
            while not state["complete"]:
                f.seek(offset)
                chunk = f.read(self.chunk_bytes)
                response = self.call("PUT", url, ok=(200, 409), params={"offset": offset, "size": size}, content=chunk)
                state = response.json()
                offset = state["received"]  # 409: the hub holds another amount (an earlier try got through)

    def deliver(self, harvest_id: str, delivery: str, files: list[dict[str, str]], qc: dict[str, Any],
                provenance: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
        return self.call("POST", f"/harvests/{harvest_id}/delivery", json={
            "delivery": delivery, "files": files, "qc": qc, "provenance": provenance, "counts": counts}).json()


def _message(response: httpx.Response) -> str:
    try:
        return response.json().get("message") or response.text
    except ValueError:
        return response.text[:200] or response.reason_phrase
