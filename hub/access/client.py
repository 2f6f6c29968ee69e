"""The command line's side of the access service: ``medhub access``, with your own hub token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medlib.contract import ACCESS_SERVICE

from ..batch.client import BatchError, ServiceClient


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

    def decide(self, request_id: str, verb: str, **body: Any) -> dict[str, Any]:
        """``verb``: approve (body: until, reason, versions), refuse (reason) or withdraw."""
        return self._call("POST", f"requests/{request_id}/{verb}", json={k: v for k, v in body.items() if v}).json()

    def grant(self, user: str, dataset: str, purpose: str, approval: str, until: str,
              versions: list[str] | None = None) -> dict[str, Any]:
        return self._call("POST", "grants", json={"user": user, "dataset": dataset, "purpose": purpose,
                                                  "approval": approval, "until": until,
                                                  "versions": versions or []}).json()

    def grants(self, owner: bool = False) -> list[dict[str, Any]]:
        return self._call("GET", "grants", params={"role": "owner"} if owner else {}).json()["grants"]

    def revoke(self, grant_id: str, reason: str) -> dict[str, Any]:
        return self._call("POST", f"grants/{grant_id}/revoke", json={"reason": reason}).json()

    def delete(self, dataset: str, version: str, reason: str) -> dict[str, Any]:
        """Delete a version of a dataset you own: its tombstone."""
        return self._call("POST", f"datasets/{dataset}/versions/{version}/delete", json={"reason": reason}).json()

    def publish(self, dataset: str, version: str | None, as_id: str, title: str, groups: list[str] | None = None,
                everyone: bool = False, description: str = "", owners: list[str] | None = None) -> dict[str, Any]:
        """Publish a de-identified version of a dataset you own as a new dataset (owned by
        ``owners``, default the source's owners)."""
        return self._call("POST", f"datasets/{dataset}/publish", json={
            "version": version or "", "as": as_id, "title": title, "groups": groups or [], "everyone": everyone,
            "description": description, "owners": owners or []}).json()

    def export(self, path: str | Path, justification: str, home: str | Path | None = None) -> dict[str, Any]:
        """Ask for the file at ``path`` (inside ``home``, default yours) to leave the platform."""
        path, home = Path(path).resolve(), Path(home or Path.home()).resolve()
        if not path.is_relative_to(home):
            raise BatchError(f"{path} is outside your home ({home}): only your own outputs are exported; "
                             "copy the file into your home first")
        if not path.is_file():
            raise BatchError(f"{path} is not a file")
        return self._call("POST", "exports", params={"name": path.name, "justification": justification},
                          content=path.read_bytes()).json()

    def exports(self, owner: bool = False) -> list[dict[str, Any]]:
        return self._call("GET", "exports", params={"role": "owner"} if owner else {}).json()["exports"]

    def review(self, export_id: str, verb: str, reason: str = "") -> dict[str, Any]:
        """``verb``: approve or refuse (with a reason)."""
        return self._call("POST", f"exports/{export_id}/{verb}", json={"reason": reason}).json()

    def download(self, export_id: str) -> bytes:
        return self._call("GET", f"exports/{export_id}/download").content
