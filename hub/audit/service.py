"""The audit service: a JupyterHub managed service that is the audit log's only writer.

``POST <prefix>events``: one event, or ``{"events": [...]}``. The caller is identified by its
JupyterHub token (a notebook server's ``JUPYTERHUB_API_TOKEN``, a batch job's, a user's): the
event's actor is that identity, whatever the body says. Only the hub's own writer (the service
named by ``MEDHUB_AUDIT_HUB_WRITER``) states actors, for the hub's events (logins, spawns, …),
and the services named in ``MEDHUB_AUDIT_WRITERS`` (JSON: service name → source): the batch
service for the jobs it runs for users, the ingest service for harvests and deliveries.
Events are chained and on disk (fsync) before the reply; requests that arrive together share
one write (group commit). Accepted events are then forwarded to syslog if configured.

``GET <prefix>events?user=&dataset=&action=&since=&until=&limit=``: a token holding
:data:`READ_ALL` (the auditor role's scope) sees everyone's events, every other token only its
owner's (by them, and about them: the decisions on their access); an admin account's flag counts for nothing here, so an admin's down-scoped server token
reads only its owner's events. ``GET <prefix>export?format=fhir|dicom`` (:data:`READ_ALL`):
the same selection as FHIR R4 ``AuditEvent`` resources (a Bundle) or DICOM audit messages.

Run by the hub (``medhub.config``) as ``python -m medhub.audit.service`` with
``MEDHUB_AUDIT_DIR``, ``MEDHUB_AUDIT_KEY_FILE``, ``MEDHUB_AUDIT_HUB_WRITER``,
``MEDHUB_AUDIT_ANCHOR`` (the folder outside the state folder where checkpoints are anchored),
``MEDHUB_AUDIT_CHECKPOINT_SECONDS`` and optionally ``MEDHUB_AUDIT_SYSLOG`` (``udp://host:port``
or ``tcp://host:port``: events and checkpoints go there too) and ``MEDHUB_AUDIT_FSYNC``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from jupyterhub.services.auth import HubAuth
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.ioloop import IOLoop, PeriodicCallback

from ..service_auth import TokenHandler, listen
from . import export
from .log import AuditLog, query
from .schema import EventError, from_client, make_event

log = logging.getLogger("medhub.audit")
#: The custom JupyterHub scope that lets a token read everyone's events.
READ_ALL = "custom:audit:read-all"


class Writer:
    """Group commit: while one write (and its fsync) runs on the writer thread, the requests that
    arrive queue up and go together in the next write."""

    def __init__(self, audit_log: AuditLog, forward=None):
        self.log, self.forward = audit_log, forward
        self._pending: list[tuple[list[dict], asyncio.Future]] = []
        self._writing = False
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="audit-writer")  # every disk write of the log

    async def submit(self, events: list[dict]) -> list[int]:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((events, future))
        if not self._writing:
            self._writing = True
            asyncio.ensure_future(self._write_all())
        return await future

    async def _write_all(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    seqs = await loop.run_in_executor(self.thread, self.log.append,
                                                      [e for events, _ in batch for e in events])
                except Exception as e:  # the disk refused: every caller learns it, nothing is acknowledged
                    log.exception("audit write failed")
                    for _, future in batch:
                        future.set_exception(e)
                    continue
                start = 0
                for events, future in batch:
                    future.set_result(seqs[start:start + len(events)])
                    start += len(events)
                if self.forward is not None:
                    for events, _ in batch:
                        for event in events:
                            self.forward(event)
        finally:
            self._writing = False


class AuditHandler(TokenHandler):
    """The audit service's handlers: token-authenticated (:class:`medhub.service_auth.TokenHandler`)."""

    def is_hub_writer(self, model: dict[str, Any]) -> bool:
        return model.get("kind") == "service" and model.get("name") == self.settings["hub_writer"]

    def trusted_source(self, model: dict[str, Any]) -> str | None:
        """"hub" for the hub's writer, and each service of ``writers`` its source: the services that
        state the actor (a user or site they identified by its own token); None for everyone else."""
        if self.is_hub_writer(model):
            return "hub"
        if model.get("kind") == "service":
            return self.settings["writers"].get(model.get("name"))
        return None

    def is_admin(self, model: dict[str, Any]) -> bool:
        """Whether the token itself holds :data:`READ_ALL` (never the account's admin flag)."""
        return READ_ALL in model.get("scopes", ())

    def selection(self, model: dict[str, Any]) -> dict[str, Any]:
        args = {k: self.get_argument(k, None) for k in ("user", "dataset", "action", "since", "until")}
        limit = self.get_argument("limit", None)
        args["limit"] = int(limit) if limit and limit.isdigit() else None
        if not self.is_admin(model):
            if args["user"] not in (None, model.get("name")):
                raise web.HTTPError(403, "you may read only your own events")
            args["user"] = model.get("name")
        return args


class EventsHandler(AuditHandler):
    async def post(self) -> None:
        model = self.current_user
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError:
            raise web.HTTPError(400, "the body is not JSON") from None
        items = body["events"] if isinstance(body, dict) and isinstance(body.get("events"), list) else [body]
        try:
            source = self.trusted_source(model)
            if source:
                events = [make_event(e.get("action", ""), {**e.get("actor", {}), "source": source}, e.get("object"),
                                     e.get("outcome", "success"), e.get("details"), e.get("time")) for e in items]
            else:
                groups = await self.groups_of(model["name"]) if model.get("kind") == "user" else []
                events = [from_client(e, model["name"], groups) for e in items]
        except (EventError, AttributeError, TypeError) as e:
            raise web.HTTPError(400, str(e)) from None
        seqs = await self.settings["writer"].submit(events)
        self.set_status(201)
        self.finish({"seqs": seqs})

    def get(self) -> None:
        self.finish({"events": query(self.settings["folder"], **self.selection(self.current_user))})


class ExportHandler(AuditHandler):
    def get(self) -> None:
        model = self.current_user
        if not self.is_admin(model):
            raise web.HTTPError(403, f"exports need a token with the {READ_ALL} scope (the auditors' role)")
        events = query(self.settings["folder"], **self.selection(model))
        kind = self.get_argument("format", "fhir")
        if kind == "fhir":
            self.set_header("Content-Type", "application/fhir+json")
            self.finish(json.dumps(export.fhir_bundle(events)))
        elif kind == "dicom":
            self.set_header("Content-Type", "application/xml")
            self.finish(export.dicom_messages(events))
        else:
            raise web.HTTPError(400, "format must be fhir or dicom")


def make_app(folder: Path, key: bytes, hub_writer: str, *, fsync: str = "always",
             syslog: str | None = None, prefix: str = "/", writers: dict[str, str] | None = None,
             anchor: Path | None = None, checkpoint_seconds: float = 60) -> web.Application:
    forward = export.SyslogForwarder(syslog) if syslog else None
    audit_log = AuditLog(folder, key, fsync=fsync, anchor=anchor, checkpoint_seconds=checkpoint_seconds,
                         on_checkpoint=forward.checkpoint if forward else None)
    settings = {
        "hub_auth": HubAuth(cache_max_age=60),
        "hub_scopes": {f"access:services!service={os.environ.get('JUPYTERHUB_SERVICE_NAME', 'medhub-audit')}"},
        "writer": Writer(audit_log, forward),
        "folder": folder,
        "hub_writer": hub_writer,
        "writers": dict(writers or {}),
        "groups_cache": {},
        "audit_log": audit_log,
    }
    return web.Application([
        (url_path_join(prefix, "events"), EventsHandler),
        (url_path_join(prefix, "export"), ExportHandler),
    ], **settings)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s %(name)s] %(message)s")
    env = os.environ
    key = bytes.fromhex(Path(env["MEDHUB_AUDIT_KEY_FILE"]).read_text().strip())
    app = make_app(Path(env["MEDHUB_AUDIT_DIR"]), key, env["MEDHUB_AUDIT_HUB_WRITER"],
                   fsync=env.get("MEDHUB_AUDIT_FSYNC", "always"), syslog=env.get("MEDHUB_AUDIT_SYSLOG") or None,
                   prefix=env.get("JUPYTERHUB_SERVICE_PREFIX", "/"), writers=json.loads(env.get("MEDHUB_AUDIT_WRITERS") or "{}"),
                   anchor=Path(env["MEDHUB_AUDIT_ANCHOR"]),
                   checkpoint_seconds=float(env["MEDHUB_AUDIT_CHECKPOINT_SECONDS"]))
    listen(app)
    audit_log, writer = app.settings["audit_log"], app.settings["writer"]
    PeriodicCallback(lambda: IOLoop.current().run_in_executor(writer.thread, audit_log.tick),
                     max(1.0, audit_log.checkpoint_seconds / 4) * 1000).start()
    log.info("medhub audit service on %s, log in %s", env["JUPYTERHUB_SERVICE_URL"], env["MEDHUB_AUDIT_DIR"])
    loop = IOLoop.current()
    signal.signal(signal.SIGTERM, lambda *_: loop.add_callback_from_signal(loop.stop))  # the hub stops services so
    try:
        loop.start()
    finally:
        app.settings["audit_log"].close()  # a last checkpoint


if __name__ == "__main__":
    main()
