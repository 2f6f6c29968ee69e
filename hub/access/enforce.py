"""Ended grants are enforced: the servers that mount them are stopped.

A server is stopped rather than its dataset unmounted: a container's read-only bind mount (and a
Kubernetes volume) cannot be taken out of a running server, and files its code has already
opened would stay readable through their handles; only stopping the server ends its access for
certain. The user's home and work stay; the next spawn mounts what is granted then.

Each round (every ``access.enforce_seconds``, and at once after a revocation) records the
expiry of grants that ran out, then asks the hub to stop each running server noted as mounting
an ended grant (:meth:`medhub.access.store.AccessStore.ended_mounts`). A server the hub cannot
stop now stays noted and is tried again next round.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import quote

from jupyterhub.services.auth import HubAuth
from tornado import httpclient

from medlib.contract import ACCESS_SERVICE

from ..service_auth import send_event
from .store import AccessStore

log = logging.getLogger("medhub.access")


class Enforcer:
    """One round at a time; a round asked for while one runs follows it."""

    def __init__(self, store: AccessStore, hub_auth: HubAuth, audit_url: str | None):
        self.store, self.hub_auth, self.audit_url = store, hub_auth, audit_url
        self._lock = asyncio.Lock()
        self._again = False

    async def run(self) -> None:
        if self._lock.locked():
            self._again = True
            return
        async with self._lock:
            self._again = True
            while self._again:
                self._again = False
                try:
                    await self._round()
                except Exception:  # noqa: BLE001 - the next round tries again; the service goes on
                    log.exception("enforcing ended grants failed; trying again next round")

    async def _round(self) -> None:
        for grant in self.store.newly_expired():
            await self.audit("grant-expire", grant, expires=grant["expires"])
        servers: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for mount in self.store.ended_mounts():
            servers.setdefault((mount["grant"]["user"], mount["server"]), []).append(mount["grant"])
        for (user, server), grants in servers.items():
            stopped = await self.stop(user, server)
            for grant in grants:
                why = (f"revoked by {grant['revoked_by']}: {grant['revoke_reason']}" if grant["revoked"]
                       else f"expired at {grant['expires']}")
                if stopped:
                    log.info("stopped %s's server %r: its grant %s of %s %s", user, server, grant["id"],
                             grant["dataset"], why)
                    await self.audit("grant-enforce", grant, server=server, stopped=True, why=why)
            self.store.unmounted(user, server)

    async def stop_mounting(self, dataset: str, why: str) -> None:
        """Stop every server noted as mounting ``dataset`` (a version of it was deleted)."""
        for user, server in self.store.mounting(dataset):
            try:
                stopped = await self.stop(user, server)
            except Exception:  # noqa: BLE001 - the others still stop; this one is logged
                log.exception("could not stop %s's server %r, which mounts %s", user, server, dataset)
                continue
            if stopped:
                log.info("stopped %s's server %r: it mounts %s (%s)", user, server, dataset, why)
                await self.audit("grant-enforce", {"dataset": dataset, "user": user, "id": None}, server=server,
                                 stopped=True, why=why)
            self.store.unmounted(user, server)

    def _api(self, path: str) -> str:
        return f"{self.hub_auth.api_url.rstrip('/')}/{path}"

    async def stop(self, user: str, server: str) -> bool:
        """Stop ``user``'s ``server`` if it runs; whether it did. Raises when the hub cannot be asked."""
        client = httpclient.AsyncHTTPClient()
        headers = {"Authorization": f"token {self.hub_auth.api_token}"}
        model = await client.fetch(self._api(f"users/{quote(user)}"), headers=headers, raise_error=False)
        if model.code == 404:
            return False
        if model.code != 200:
            raise RuntimeError(f"the hub answered {model.code} for user {user}")
        if server not in json.loads(model.body).get("servers", {}):
            return False
        path = f"users/{quote(user)}/server" if not server else f"users/{quote(user)}/servers/{quote(server)}"
        response = await client.fetch(self._api(path), method="DELETE", headers=headers, raise_error=False)
        if response.code not in (202, 204):
            raise RuntimeError(f"the hub did not stop {user}'s server {server!r}: HTTP {response.code} "
                               f"{response.body[:200]!r}")
        return True

    async def audit(self, action: str, grant: dict[str, Any], **details: Any) -> None:
        """An event of the service's own about ``grant`` (or, without an id, a dataset's user)."""
        object_ = {"dataset": grant["dataset"], "user": grant["user"]} | ({"grant": grant["id"]} if grant["id"] else {})
        event = {"action": action, "actor": {"user": ACCESS_SERVICE, "groups": []}, "outcome": "success",
                 "object": object_, "details": details}
        await send_event(self.audit_url, self.hub_auth.api_token, event)
