"""The command line's side of the ingest service: ``medhub harvest``, for datasets' owners."""

from __future__ import annotations

import time
from typing import Any

from medlib.contract import INGEST_SERVICE, HarvestState

from ..batch.client import ServiceClient


class HarvestClient(ServiceClient):
    """Harvest requests of the datasets you own, with your own hub token."""

    name = INGEST_SERVICE
    path = "harvests"

    def create(self, dataset: str, site: str, policy: str, query: dict[str, str], source: str = "pacs",
               on_qc_failure: str = "hold") -> dict[str, Any]:
        return self._call("POST", json={"dataset": dataset, "site": site, "policy": policy, "query": query,
                                        "source": source, "on_qc_failure": on_qc_failure}).json()

    def list(self) -> list[dict[str, Any]]:
        return self._call("GET").json()["harvests"]

    def get(self, harvest_id: str) -> dict[str, Any]:
        return self._call("GET", f"/{harvest_id}").json()

    def wait(self, harvest_id: str, timeout: float = 3600, every: float = 2) -> dict[str, Any]:
        """The harvest once it ended (delivered, failed or refused)."""
        deadline = time.monotonic() + timeout
        while True:
            harvest = self.get(harvest_id)
            if HarvestState(harvest["state"]).final or time.monotonic() > deadline:
                return harvest
            time.sleep(every)
