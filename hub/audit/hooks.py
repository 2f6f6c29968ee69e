"""The hub's own audit events, recorded through JupyterHub's extension points.

- logins and failed logins: :meth:`medhub.auth.OIDCAuthenticator.get_authenticated_user`;
- logouts: :class:`medhub.auth.OIDCLogoutHandler`;
- spawns (with profile and mounted datasets) and one ``dataset-mount`` per dataset a server is
  given (with the personal grant it uses, if any: so the access record never depends on code
  inside the user's server), when the server
  has started (:func:`spawned`: medhub's spawners call it; KubeSpawner's ``pre_spawn_hook``);
  stops, and spawns that failed (with the reason), from the ``post_stop_hook`` (:func:`post_stop`);
- changes made through the REST API (users, groups, roles, servers of others) and token
  creation: the hub's tornado ``log_function`` (:func:`log_request`), which sees every
  finished request with its user and status.

Events go to the audit service with the hub writer's token (the only one allowed to state an
actor), from a worker thread so that the hub's event loop never waits on the disk; when the
service is down they wait in the hub's state folder and are delivered with the next ones, or
within :data:`FLUSH_SECONDS` when no other comes.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from jupyterhub.log import log_request as jupyterhub_log_request

from medlib.audit import AuditClient

AUDIT_SERVICE, HUB_WRITER = "medhub-audit", "medhub-audit-hub"
log = logging.getLogger("medhub.audit")
_client: AuditClient | None = None
_flusher = None  # tornado's PeriodicCallback delivering what waits, from the first event on
FLUSH_SECONDS = 5
ADMIN_PATHS = re.compile(r"/hub/api/(users|groups|roles|services|shares)(/|$)")
TOKEN_PATH = re.compile(r"/hub/api/users/([^/]+)/tokens/?$")


def configure(url: str, token: str, buffer: str) -> None:
    """Send the hub's events to ``url`` with ``token``, buffering in ``buffer``."""
    global _client
    _client = AuditClient(url, token, buffer, source="hub")


def _actor(user: Any) -> dict[str, Any]:
    if user is None:
        return {"user": None, "groups": []}
    name = getattr(user, "name", None)
    groups = sorted(g.name for g in getattr(user, "groups", []) or [])
    return {"user": name, "groups": groups}


def record(action: str, user: Any, object: dict[str, Any] | None = None,  # noqa: A002
           outcome: str = "success", **details: Any) -> None:
    """Hand one hub event to a worker thread (no-op before :func:`configure`)."""
    if _client is None:
        return
    actor = user if isinstance(user, dict) else _actor(user)
    loop = asyncio.get_event_loop()
    future = loop.run_in_executor(None, lambda: _client.record(action, object, outcome, actor=actor, **details))
    future.add_done_callback(_report)
    global _flusher
    if _flusher is None:
        from tornado.ioloop import PeriodicCallback

        _flusher = PeriodicCallback(_flush, FLUSH_SECONDS * 1000)
        _flusher.start()


def _flush() -> None:
    """Deliver the events that wait in the buffer (the service was down when they came)."""
    asyncio.get_event_loop().run_in_executor(None, _client.flush).add_done_callback(_report)


def _report(future) -> None:
    if future.exception() is not None:
        log.error("could not record a hub audit event: %s", future.exception())


def spawned(spawner) -> None:
    """The spawn, with its profile, and each dataset the server is given."""
    mounted = spawner.mounted_datasets() if hasattr(spawner, "mounted_datasets") else []
    profile = spawner.profile.slug if hasattr(spawner, "profile") else (spawner.user_options or {}).get("profile", "")
    server = spawner.name or ""
    record("spawn", spawner.user, {"server": server, "profile": profile}, datasets=[d.id for d in mounted])
    personal = getattr(spawner, "_personal", {})
    for d in mounted:
        grant = {"grant": personal[d.id]["id"], "expires": personal[d.id]["expires"]} if d.id in personal else {}
        record("dataset-mount", spawner.user, {"dataset": d.id, "server": server},
               read_only=spawner.mounts_read_only, sensitivity=d.sensitivity, **grant)


def post_stop(spawner) -> None:
    """``post_stop_hook``: the server stopped, or (JupyterHub cleans up after a failed start)
    never started: a failed spawn with the reason medhub's spawners kept (``start_error``)."""
    server = {"server": spawner.name or ""}
    failure = getattr(spawner, "start_error", None)
    if failure:
        profile = (spawner.user_options or {}).get("profile", "")
        record("spawn", spawner.user, {**server, "profile": profile}, outcome="failure", reason=failure)
        spawner.start_error = None
    else:
        record("stop", spawner.user, server)


def log_request(handler) -> None:
    """The hub's ``log_function``: JupyterHub's own request log, then the audit of API changes."""
    jupyterhub_log_request(handler)
    request, status = handler.request, handler.get_status()
    if request.method not in ("POST", "PUT", "PATCH", "DELETE") or status >= 400:
        return
    path = request.path
    token = TOKEN_PATH.search(path)
    if not (token or ADMIN_PATHS.search(path)):
        return
    try:
        current = handler.current_user
    except Exception:  # noqa: BLE001 - a request without a user (refused earlier) is not audited
        return
    if token and request.method == "POST":
        record("token-created", current, {"user": token.group(1)})
        return
    target = path.split("/hub/api/", 1)[1]
    if re.fullmatch(r"users/[^/]+/((server|servers/[^/]*)/?(progress)?|activity)", target) and \
            getattr(current, "name", None) == target.split("/")[1]:
        return  # one's own server started or stopped (spawn and stop events say it), or its activity
    record("admin-change", current, {"target": target}, method=request.method, status=status)
