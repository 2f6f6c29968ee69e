"""The command line's side of the access service: ``medhub access``, with your own hub token."""

from __future__ import annotations

from typing import Any

from medlib.contract import ACCESS_SERVICE

from ..batch.client import ServiceClient


class AccessClient(ServiceClient):
    """Requests and grants: yours, or (``owner=True``) those of the datasets you own."""

    name = ACCESS_SERVICE
    path = ""

    def request(self, dataset: str, purpose: str, approval: str, until: str) -> dict[str, Any]:
        return self._call("POST", "requests", json={"dataset": dataset, "purpose": purpose, "approval": approval,
                                                    "until": until}).json()

    def requests(self, owner: bool = False, states: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        params = {"role": "owner"} if owner else {}
        if states:
            params["state"] = ",".join(states)
        return self._call("GET", "requests", params=params).json()["requests"]

    def decide(self, request_id: str, verb: str, **body: str) -> dict[str, Any]:
        """``verb``: approve (body: until, reason), refuse (reason) or withdraw."""
        return self._call("POST", f"requests/{request_id}/{verb}", json={k: v for k, v in body.items() if v}).json()

    def grant(self, user: str, dataset: str, purpose: str, approval: str, until: str) -> dict[str, Any]:
        return self._call("POST", "grants", json={"user": user, "dataset": dataset, "purpose": purpose,
                                                  "approval": approval, "until": until}).json()

    def grants(self, owner: bool = False) -> list[dict[str, Any]]:
        return self._call("GET", "grants", params={"role": "owner"} if owner else {}).json()["grants"]

    def revoke(self, grant_id: str, reason: str) -> dict[str, Any]:
        return self._call("POST", f"grants/{grant_id}/revoke", json={"reason": reason}).json()
