"""The ``medhub-batch`` hub service: notebooks run as batch jobs, each in a server of its user.

A job's life: **queued** (the user already holds ``limit`` servers for jobs) → **starting** (the
service asks the hub for the named server ``batch-<id>`` of the user, with the job's profile:
the user's own identity, grants and limits) → **running** (the notebook and its parameters go
to that server's ``medlib/batch`` endpoint, where papermill runs it as the user) → **succeeded**
or **failed** (the executed notebook is kept here; a failed cell's error is the job's error) or
**cancelled**; the server is stopped and removed in every case. Each tick advances every active
job from what the database, the hub and the server say, so a restart of the service or the hub
loses nothing. Every submission and every outcome is an audit event (source ``batch``).

The job's server runs code its user controls, so the service's own token never goes there: what
the server receives is a token of the job's user that can only reach that one server
(``access:servers!server=<user>/batch-<id>``), made for the job, short-lived (``[batch]
job_token_ttl``, renewed while the job runs) and revoked when the job ends.

REST API (``/services/medhub-batch/``, a JupyterHub token of the user):
``POST jobs`` {notebook, name, parameters, profile, datasets} · ``GET jobs`` · ``GET jobs/<id>`` ·
``GET jobs/<id>/output`` · ``GET jobs/<id>/log`` · ``DELETE jobs/<id>`` (cancel).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jupyterhub.services.auth import HubAuth
from jupyterhub.utils import url_path_join
from tornado import httpclient, web
from tornado.ioloop import IOLoop, PeriodicCallback

from medlib.contract import BATCH_SERVICE, JobState

from ..access.spawn import catalog as access_catalog, personal_grants
from ..catalog import Dataset, granted
from ..service_auth import TokenHandler, listen
from .store import ACTIVE, FINAL, JobStore

log = logging.getLogger("medhub.batch")
SERVICE = BATCH_SERVICE
MB = 1 << 20


class OutputRefused(Exception):
    """A job's result the service will not store (too large, or the disk too full); says why."""


class Runner:
    """Advances jobs: talks to the hub's REST API with the service's token, and to each job's
    server with that job's own token (:meth:`job_token`)."""

    def __init__(self, store: JobStore, hub_api: str, public_url: str, token: str, limit: int,
                 audit_url: str | None, token_ttl: int = 3600, max_output_mb: int = 100, min_free_mb: int = 1024):
        self.store, self.hub_api, self.public_url, self.token = store, hub_api, public_url.rstrip("/"), token
        self.limit, self.audit_url, self.token_ttl = limit, audit_url, token_ttl
        self.max_output_mb, self.min_free_mb = max_output_mb, min_free_mb
        self.http = httpclient.AsyncHTTPClient()
        self.busy = False

    async def call(self, method: str, url: str, body: Any = None, ok: tuple[int, ...] = (200, 201, 202, 204),
                   token: str | None = None):
        """A JSON request with ``token`` (the service's own if None); returns (status, decoded
        body or None)."""
        request = httpclient.HTTPRequest(url, method=method, headers={"Authorization": f"token {token or self.token}",
                                                                       "Content-Type": "application/json"},
                                         body=json.dumps(body) if body is not None else None,
                                         allow_nonstandard_methods=True, request_timeout=60)
        response = await self.http.fetch(request, raise_error=False)
        if response.code not in ok:
            return response.code, None
        try:
            return response.code, json.loads(response.body) if response.body else None
        except ValueError:
            return response.code, response.body.decode(errors="replace")

    def server_url(self, job: dict, *parts: str) -> str:
        return url_path_join(self.public_url, "user", quote(job["user"]), job["server"], "medlib", "batch", *parts)

    async def on_server(self, method: str, job: dict, *parts: str, body: Any = None,
                        ok: tuple[int, ...] = (200, 201, 202, 204)):
        """A request to the job's server, with the job's token."""
        return await self.call(method, self.server_url(job, *parts), body, ok, token=await self.job_token(job))

    async def download(self, job: dict, what: str) -> bytes | None:
        """The job's ``output`` notebook or ``log`` from its server (None if it has none), read
        no further than ``max_output_mb``.

        Raises:
            OutputRefused: it is larger.
        """
        chunks, cap = [], self.max_output_mb * MB
        size = 0

        def collect(chunk: bytes) -> None:
            nonlocal size
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                raise OverflowError  # tornado closes the connection: read no further

        request = httpclient.HTTPRequest(self.server_url(job, job["id"], what),
                                         headers={"Authorization": f"token {await self.job_token(job)}"},
                                         streaming_callback=collect, request_timeout=300)
        try:
            response = await self.http.fetch(request, raise_error=False)
        except httpclient.HTTPClientError:
            if size <= cap:
                raise
            raise OutputRefused(f"the job's {what} is larger than [batch] max_output_mb ({self.max_output_mb} MB); "
                                "write large results to files in your home, and keep the notebook's outputs small") \
                from None
        return b"".join(chunks) if response.code == 200 else None

    def check_room(self, size: int) -> None:
        """Refuse to store ``size`` bytes that would leave less than ``min_free_mb`` free where the
        service keeps its jobs: the state folder's disk, which the audit log shares.

        Raises:
            OutputRefused: saying how much is free.
        """
        free = shutil.disk_usage(self.store.folder).free
        if free - size < self.min_free_mb * MB:
            raise OutputRefused(f"the platform's disk has {free // MB} MB free, and storing {size // MB + 1} MB "
                                f"would leave less than [batch] min_free_mb ({self.min_free_mb} MB), kept free for "
                                "the audit log; ask an administrator to make room")

    async def job_token(self, job: dict) -> str:
        """The job's token: its user's, good only for the job's server, renewed when a quarter
        of its life is left (the old one is revoked)."""
        token, token_id, expires = self.store.token(job["id"])
        if token and expires - time.time() > self.token_ttl / 4:
            return token
        code, model = await self.call("POST", url_path_join(self.hub_api, "users", quote(job["user"]), "tokens"), {
            "scopes": [f"access:servers!server={job['user']}/{job['server']}"], "expires_in": self.token_ttl,
            "note": f"medhub-batch job {job['id']}: its server only"})
        if code != 201:
            raise RuntimeError(f"the hub refused a token for job {job['id']} (HTTP {code})")
        self.store.update(job["id"], token=model["token"], token_id=model["id"], token_expires=time.time() + self.token_ttl)
        if token_id:
            await self.revoke(job, token_id)
        return model["token"]

    async def revoke(self, job: dict, token_id: str) -> None:
        code, _ = await self.call("DELETE", url_path_join(self.hub_api, "users", quote(job["user"]), "tokens", token_id),
                                  ok=(200, 204, 404))
        if code not in (200, 204, 404):
            log.error("job %s: could not revoke its token %s (HTTP %s)", job["id"], token_id, code)

    async def audit(self, action: str, job: dict, outcome: str = "success", **details: Any) -> None:
        if not self.audit_url:
            return
        event = {"action": action, "actor": {"user": job["user"], "groups": []}, "outcome": outcome,
                 "object": {"job": job["id"], "notebook": job["name"], "datasets": job["datasets"]},
                 "details": {"profile": job["profile"], **details}}
        status, _ = await self.call("POST", self.audit_url, event)
        if status != 201:
            log.error("audit service refused %s of job %s (HTTP %s)", action, job["id"], status)

    async def tick(self) -> None:
        """Advance every active job once (one tick at a time)."""
        if self.busy:
            return
        self.busy = True
        try:
            for job in self.store.active():
                try:
                    await self.advance(job)
                except Exception:
                    log.exception("job %s: could not advance it; trying again", job["id"])
        finally:
            self.busy = False

    async def advance(self, job: dict) -> None:
        status = job["status"]
        if status == JobState.QUEUED and self.store.running(job["user"]) < self.limit:
            code, _ = await self.call("POST", url_path_join(self.hub_api, "users", quote(job["user"]), "servers",
                                                            job["server"]), {"profile": job["profile"]})
            if code in (201, 202):
                self.store.update(job["id"], status=JobState.STARTING)
            elif code == 400:
                await self.finish(job, JobState.FAILED, f"the hub refused to start a server (HTTP {code})")
        elif status == JobState.STARTING:
            server = await self.server(job)
            if server is None:
                await self.finish(job, JobState.FAILED, "the job's server stopped before it was ready")
            elif server.get("ready"):
                notebook = json.loads(self.store.notebook(job["id"], "input").read_text())
                code, _ = await self.on_server("POST", job, body={"id": job["id"], "notebook": notebook,
                                                                  "parameters": job["parameters"]})
                if code in (200, 202):
                    self.store.update(job["id"], status=JobState.RUNNING)
        elif status == JobState.RUNNING:
            code, state = await self.on_server("GET", job, job["id"])
            if code != 200:
                if await self.server(job) is None:
                    await self.finish(job, JobState.FAILED, "the job's server stopped while the notebook ran")
                return
            if state.get("status") in (JobState.SUCCEEDED, JobState.FAILED):
                try:
                    output, text = await self.download(job, "output"), await self.download(job, "log")
                    self.check_room(len(output or b"") + len(text or b""))
                except OutputRefused as e:
                    await self.finish(job, JobState.FAILED, str(e))
                    return
                if output is not None:
                    self.store.notebook(job["id"], "output").write_bytes(output)
                if text is not None:
                    (self.store.folder / job["id"] / "log.txt").write_bytes(text)
                await self.finish(job, state["status"], state.get("error"))
        elif status == JobState.CANCELLING:
            if await self.server(job) is not None:  # stop the run itself, then its server
                await self.on_server("DELETE", job, job["id"], ok=(200, 404))
            await self.finish(job, JobState.CANCELLED, None)

    async def server(self, job: dict) -> dict | None:
        """The job's server as the hub describes it; None if it has none."""
        code, user = await self.call("GET", url_path_join(self.hub_api, "users", quote(job["user"])))
        return (user or {}).get("servers", {}).get(job["server"]) if code == 200 else None

    async def finish(self, job: dict, status: str, error: str | None) -> None:
        await self.call("DELETE", url_path_join(self.hub_api, "users", quote(job["user"]), "servers", job["server"]),
                        {"remove": True}, ok=(202, 204, 404))
        _, token_id, _ = self.store.token(job["id"])
        if token_id:
            await self.revoke(job, token_id)
        job = self.store.update(job["id"], status=status, error=error, token=None, token_id=None, token_expires=None)
        await self.audit("job-end", job, "success" if status == JobState.SUCCEEDED else "failure", status=status,
                         error=error)
        log.info("job %s of %s: %s%s", job["id"], job["user"], status, f" ({error})" if error else "")


class JobsHandler(TokenHandler):
    def job_for(self, job_id: str) -> dict:
        job = self.settings["store"].get(job_id)
        if job is None or (job["user"] != self.current_user.get("name") and not self.current_user.get("admin")):
            raise web.HTTPError(404, f"no job {job_id}")
        return job

    async def post(self, job_id: str | None = None) -> None:
        model = self.current_user
        if model.get("kind") != "user":
            raise web.HTTPError(403, "jobs are submitted with a user's token")
        try:
            body = json.loads(self.request.body or b"null")
            notebook, name = body["notebook"], str(body.get("name") or "notebook.ipynb")
            parameters, profile = dict(body.get("parameters") or {}), str(body.get("profile") or "")
            datasets = [str(d) for d in body.get("datasets") or ()]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise web.HTTPError(400, "send JSON: {notebook, name, parameters, profile, datasets}") from None
        if not isinstance(notebook, dict) or "cells" not in notebook:
            raise web.HTTPError(400, "notebook must be a Jupyter notebook (JSON with cells)")
        try:
            self.settings["runner"].check_room(len(self.request.body))
        except OutputRefused as e:
            raise web.HTTPError(507, str(e)) from None
        groups = await self.groups_of(model["name"])
        config = self.settings["config"]
        offered = [p["slug"] for p in config["profiles"] if not p.get("groups") or set(p["groups"]) & set(groups)]
        profile = profile or config["default_profile"]
        if profile not in offered:
            raise web.HTTPError(400, f"profile {profile!r} is not offered to you; choose one of {', '.join(offered)}")
        catalog = access_catalog(config.get("access_store", ""), [Dataset.from_dict(d) for d in config["datasets"]])
        standing = granted(catalog, groups)
        personal = personal_grants(config.get("access_store", ""), model["name"], catalog, standing)
        refused = sorted(set(datasets) - {d.id for d in standing} - set(personal))
        if refused:
            raise web.HTTPError(403, f"dataset(s) {', '.join(refused)} are not granted to you (ask for them: "
                                     "medhub access request)")
        job = self.settings["store"].add(model["name"], name, notebook, parameters, profile, datasets)
        await self.settings["runner"].audit("job-submit", job, parameters=sorted(parameters))
        IOLoop.current().add_callback(self.settings["runner"].tick)
        self.set_status(201)
        self.finish(job)

    def get(self, job_id: str | None = None, what: str | None = None) -> None:
        store = self.settings["store"]
        if job_id is None:
            user = self.get_argument("user", None) if self.current_user.get("admin") else self.current_user["name"]
            self.finish({"jobs": store.list(user)})
            return
        job = self.job_for(job_id)
        if what in ("output", "log"):
            path = store.notebook(job_id, "output") if what == "output" else store.folder / job_id / "log.txt"
            if not path.is_file():
                raise web.HTTPError(404, f"job {job_id} has no {what} (it is {job['status']})")
            self.set_header("Content-Type", "application/json" if what == "output" else "text/plain")
            self.finish(path.read_bytes())
        else:
            self.finish(job)

    async def delete(self, job_id: str | None = None) -> None:
        job = self.job_for(job_id or "")
        store = self.settings["store"]
        if job["status"] in FINAL:
            raise web.HTTPError(409, f"job {job_id} is already {job['status']}")
        if job["status"] == JobState.QUEUED:
            job = store.update(job["id"], status=JobState.CANCELLED)
            await self.settings["runner"].audit("job-end", job, "failure", status=JobState.CANCELLED)
        else:
            store.update(job["id"], status=JobState.CANCELLING)
            await self.settings["runner"].tick()
        self.finish(store.get(job["id"]))


def make_app(store: JobStore, runner: Runner, config: dict, prefix: str = "/") -> web.Application:
    settings = {
        # a short cache: a token checked while the hub restarts must not stay refused for long
        "hub_auth": HubAuth(cache_max_age=5),
        "hub_scopes": {f"access:services!service={os.environ.get('JUPYTERHUB_SERVICE_NAME', SERVICE)}"},
        "groups_cache": {},
        "store": store,
        "runner": runner,
        "config": config,
    }
    job = r"([0-9a-f]{12})"
    return web.Application([
        (url_path_join(prefix, "jobs"), JobsHandler),
        (url_path_join(prefix, "jobs", job), JobsHandler),
        (url_path_join(prefix, "jobs", job, "(output|log)"), JobsHandler),
    ], **settings)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s %(name)s] %(message)s")
    env = os.environ
    config = json.loads(Path(env["MEDHUB_BATCH_CONFIG"]).read_text())
    store = JobStore(Path(config["folder"]))
    runner = Runner(store, env["JUPYTERHUB_API_URL"], config["public_url"], env["JUPYTERHUB_API_TOKEN"],
                    config["max_running_per_user"], config.get("audit_url"), config["job_token_ttl"],
                    config["max_output_mb"], config["min_free_mb"])
    app = make_app(store, runner, config, prefix=env.get("JUPYTERHUB_SERVICE_PREFIX", "/"))
    listen(app)
    PeriodicCallback(runner.tick, config.get("tick_ms", 1000)).start()
    log.info("medhub batch service on %s; %d active job(s) from before", env["JUPYTERHUB_SERVICE_URL"],
             len([j for j in store.list() if j["status"] in ACTIVE]))
    loop = IOLoop.current()
    signal.signal(signal.SIGTERM, lambda *_: loop.add_callback_from_signal(loop.stop))
    loop.start()


if __name__ == "__main__":
    main()
