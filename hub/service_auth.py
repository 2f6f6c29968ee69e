"""What medhub's hub services share: a JSON API authenticated by JupyterHub tokens."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any
from urllib.parse import urlparse

from jupyterhub.services.auth import HubAuth
from jupyterhub.utils import url_path_join
from tornado import httpclient, web

log = logging.getLogger("medhub.services")
GROUPS_TTL = 60.0
#: Where a service listens when not at its URL's host (in the hub pod: every address, behind
#: the hub's Service).
BIND_ENV = "MEDHUB_SERVICE_BIND"


def listen(app: web.Application, max_body_size: int | None = None) -> None:
    """Have ``app`` listen where the hub said: ``$JUPYTERHUB_SERVICE_URL``, or at its port on
    ``$MEDHUB_SERVICE_BIND``; requests up to ``max_body_size`` bytes (default: tornado's 100 MB)."""
    url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    app.listen(url.port, address=os.environ.get(BIND_ENV) or url.hostname, max_body_size=max_body_size)


class TokenHandler(web.RequestHandler):
    """Token-authenticated JSON API; a caller without a valid token gets 403.

    The token is checked with the hub asynchronously (``HubAuth.user_for_token``, cached a
    minute), and must hold ``access:services!service=<this service>``.
    """

    @property
    def hub_auth(self) -> HubAuth:
        return self.settings["hub_auth"]

    async def prepare(self) -> None:
        token = self.hub_auth.get_token(self, in_cookie=False)
        model = await self.hub_auth.user_for_token(token, sync=False) if token else None
        if not model or not self.hub_auth.check_scopes(self.settings["hub_scopes"], model):
            raise web.HTTPError(403, "send a JupyterHub API token that may use this service "
                                     "(Authorization: token ...)")
        self.current_user = model

    def write_error(self, status_code: int, **kwargs) -> None:
        error = kwargs.get("exc_info", (None, None))[1]
        message = error.log_message if isinstance(error, web.HTTPError) and error.log_message else self._reason
        self.finish({"status": status_code, "message": message})

    def body(self) -> dict:
        """The request's JSON object; HTTPError 400 otherwise."""
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError:
            raise web.HTTPError(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "send a JSON object")
        return body

    async def groups_of(self, name: str) -> list[str]:
        """The user's groups, asked of the hub with the service's own token (cached a minute)."""
        cache = self.settings["groups_cache"]
        hit = cache.get(name)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        client = httpclient.AsyncHTTPClient()
        response = await client.fetch(url_path_join(self.hub_auth.api_url, "users", name),
                                      headers={"Authorization": f"token {self.hub_auth.api_token}"})
        groups = sorted(json.loads(response.body).get("groups", []))
        cache[name] = (time.monotonic() + GROUPS_TTL, groups)
        return groups


async def send_event(url: str | None, token: str, event: dict[str, Any]) -> int | None:
    """Write ``event`` to the audit service at ``url`` as the calling service (one that the
    audit service lets state the actor): its sequence number in the log, or None, logged, when
    it is refused or ``url`` is empty."""
    if not url:
        return None
    request = httpclient.HTTPRequest(url, method="POST", body=json.dumps(event, default=str), request_timeout=30,
                                     headers={"Authorization": f"token {token}"})
    response = await httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
    if response.code != 201:
        log.error("the audit service refused %s (HTTP %s)", event.get("action"), response.code)
        return None
    return json.loads(response.body)["seqs"][0]
