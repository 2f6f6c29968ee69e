"""The command line's side of the ingest service: ``medhub harvest``, for datasets' owners."""

from __future__ import annotations

import time
from typing import Any

import httpx

from medlib.contract import INGEST_SERVICE, HarvestState

from ..batch.client import BatchError, hub_address


class HarvestClient:
    """Harvest requests of the datasets you own, with your own hub token."""

    def __init__(self, hub: str | None = None, token: str | None = None):
        hub, self.headers = hub_address(hub, token)
        self.base = f"{hub}/services/{INGEST_SERVICE}/harvests"

    def _call(self, method: str, path: str = "", **kwargs: Any) -> dict[str, Any]:
        try:
            response = httpx.request(method, self.base + path, headers=self.headers, timeout=60, **kwargs)
        except httpx.HTTPError as e:
            raise BatchError(f"cannot reach the ingest service at {self.base}: {e}") from None
        if response.status_code >= 300:
            try:
                message = response.json().get("message") or response.text
            except ValueError:
                message = f"{response.reason_phrase}: the ingest service is not answering (is the hub restarting?)"
            raise BatchError(f"HTTP {response.status_code}: {message}")
        return response.json()

    def create(self, dataset: str, site: str, policy: str, query: dict[str, str], source: str = "pacs",
               on_qc_failure: str = "hold") -> dict[str, Any]:
        return self._call("POST", json={"dataset": dataset, "site": site, "policy": policy, "query": query,
                                        "source": source, "on_qc_failure": on_qc_failure})

    def list(self) -> list[dict[str, Any]]:
        return self._call("GET")["harvests"]

    def get(self, harvest_id: str) -> dict[str, Any]:
        return self._call("GET", f"/{harvest_id}")

    def wait(self, harvest_id: str, timeout: float = 3600, every: float = 2) -> dict[str, Any]:
        """The harvest once it ended (delivered, failed or refused)."""
        deadline = time.monotonic() + timeout
        while True:
            harvest = self.get(harvest_id)
            if HarvestState(harvest["state"]).final or time.monotonic() > deadline:
                return harvest
            time.sleep(every)
