"""What the notebook UI asks the hub's services, through this server: the user's access
requests, grants and exports (``medhub-access``) and batch jobs (``medhub-batch``).

``GET <base_url>medlib/hub/<what>`` for ``what`` in :data:`ROUTES` answers what the service says,
asked with the server's own token (``JUPYTERHUB_API_TOKEN``: its user's, no more) at the hub's
address (``MEDHUB_URL``). Authenticated like every Jupyter server API: only the server's user
(through the hub) reaches it.
"""

from __future__ import annotations

import os

from jupyter_server.base.handlers import APIHandler
from tornado import httpclient, web

from medlib.contract import ACCESS_SERVICE, BATCH_SERVICE, URL_ENV

#: What the UI may ask: name → (service, path).
ROUTES = {"requests": (ACCESS_SERVICE, "requests"), "grants": (ACCESS_SERVICE, "grants"),
          "exports": (ACCESS_SERVICE, "exports"), "jobs": (BATCH_SERVICE, "jobs")}


class HubServiceHandler(APIHandler):
    @web.authenticated
    async def get(self, what: str) -> None:
        service, path = ROUTES[what]
        hub, token = os.environ.get(URL_ENV), os.environ.get("JUPYTERHUB_API_TOKEN")
        if not hub or not token:
            raise web.HTTPError(503, f"this server was not started by a medhub hub ({URL_ENV} is not set)")
        response = await httpclient.AsyncHTTPClient().fetch(
            f"{hub.rstrip('/')}/services/{service}/{path}", headers={"Authorization": f"token {token}"},
            raise_error=False, request_timeout=30, follow_redirects=False)
        if response.code != 200:
            raise web.HTTPError(502, f"the {service} service answered {response.code}: is the hub restarting?")
        self.set_header("Content-Type", "application/json")
        self.finish(response.body)
