"""The ``medhub-ingest`` hub service: harvest requests for the sites, deliveries from their edges.

A dataset's owner (a member of a group in its catalog entry's ``owners``) asks a site for data:
``POST harvests`` {dataset, site, policy, source, query, on_qc_failure}. The site's edge node
(``medlib edge``), signed in as the hub service ``edge-<site>``, polls ``GET harvests`` for the
requests addressed to it, reports ``POST harvests/<id>/progress``, uploads each output file in
chunks to ``PUT harvests/<id>/files/<sha256>?offset=&size=`` (``GET`` says how much has arrived,
so an interrupted upload resumes; a file's bytes must hash to its name) and finally
``POST harvests/<id>/delivery`` {delivery, files: [{path, sha256}], qc, provenance, counts}: the
service publishes the files, with the versions before, as a new immutable version of the dataset
(:func:`medlib.versions.publish`) and answers with its name. Resending a delivery returns the
version it made.

Owners also have a page, ``/services/medhub-ingest/`` (signed in through the hub), that lists
their datasets' harvests with their progress and asks for new ones.

Identity is the token's (a user, or the service ``edge-<site>``); what a site may deliver to
is its ``[[site]] datasets`` in the hub's settings, never anything the edge sends. Every request,
run, quarantine, delivery and version is an audit event (source ``ingest``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import secrets
import signal
from html import escape
from pathlib import Path
from typing import Any

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.ioloop import IOLoop

from medlib import versions
from medlib.contract import EDGE_SERVICE_PREFIX, INGEST_SERVICE, QUERY_KEYS, HarvestState, Policy, Source, utc_now

from ..catalog import Dataset
from ..service_auth import TokenHandler, listen, send_event
from .store import DigestMismatch, HarvestStore, OffsetMismatch, is_sha256

log = logging.getLogger("medhub.ingest")
MB = 1 << 20
QC_CHOICES = ("hold", "flag")
#: Which dataset sensitivities each policy may deliver into.
SENSITIVITY_OF = {Policy.IDENTIFIABLE: ("identifiable",), Policy.ANONYMIZED: ("anonymized", "pseudonymized"),
                  Policy.FEATURES: ("anonymized", "pseudonymized")}


class IngestHandler(TokenHandler):
    @property
    def store(self) -> HarvestStore:
        return self.settings["store"]

    @property
    def datasets(self) -> dict[str, Dataset]:
        return self.settings["datasets"]

    def site(self) -> str | None:
        """The site whose edge holds this token, or None (a user)."""
        model = self.current_user
        name = model.get("name", "")
        if model.get("kind") == "service" and name.startswith(EDGE_SERVICE_PREFIX):
            site = name.removeprefix(EDGE_SERVICE_PREFIX)
            if site in self.settings["sites"]:
                return site
        return None

    async def owned(self) -> set[str]:
        """The datasets the user may steer harvests into: those whose owners hold one of their groups."""
        model = self.current_user
        if model.get("kind") != "user":
            return set()
        groups = set(await self.groups_of(model["name"]))
        return {d.id for d in self.datasets.values() if d.versioned and groups & set(d.owners)}

    async def harvest_for(self, harvest_id: str, *, site_only: bool = False) -> dict[str, Any]:
        """The harvest, if the caller may see it: its site's edge, or an owner of its dataset."""
        harvest = self.store.get(harvest_id)
        site = self.site()
        if harvest is not None:
            if site is not None and harvest["site"] == site:
                return harvest
            if site is None and not site_only and harvest["dataset"] in await self.owned():
                return harvest
        raise web.HTTPError(404, f"no harvest {harvest_id} of yours")

    async def audit(self, action: str, harvest: dict[str, Any], outcome: str = "success", **details: Any) -> None:
        """An event of the harvest; its actor is the owner who asked, or the site that acted."""
        url = self.settings["audit_url"]
        if not url:
            return
        actor = self.current_user["name"] if self.current_user.get("kind") == "user" else \
            f"{EDGE_SERVICE_PREFIX}{harvest['site']}"
        event = {"action": action, "actor": {"user": actor, "groups": []}, "outcome": outcome,
                 "object": {"dataset": harvest["dataset"], "harvest": harvest["id"], "site": harvest["site"]},
                 "details": {"policy": harvest["policy"], **details}}
        await send_event(url, self.hub_auth.api_token, event)

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """A new harvest request of the user holding the token (a dataset's owner); HTTPError saying
        what is wrong with it otherwise."""
        model = self.current_user
        if model.get("kind") != "user":
            raise web.HTTPError(403, "a harvest is requested by a dataset's owner, with the owner's own token")
        dataset_id, site = str(body.get("dataset", "")), str(body.get("site", ""))
        dataset = self.datasets.get(dataset_id)
        if dataset is None or not dataset.versioned:
            versioned = ", ".join(d.id for d in self.datasets.values() if d.versioned) or "none"
            raise web.HTTPError(404, f"no versioned dataset {dataset_id!r} in the catalog (versioned: {versioned})")
        if dataset_id not in await self.owned():
            raise web.HTTPError(403, f"you do not own {dataset_id!r}: its owners are the members of "
                                     f"{', '.join(dataset.owners) or 'no group yet'}")
        sites = self.settings["sites"]
        if site not in sites:
            raise web.HTTPError(400, f"no site {site!r}; sites: {', '.join(sites) or 'none'}")
        if dataset_id not in sites[site]:
            raise web.HTTPError(403, f"site {site!r} may not deliver to {dataset_id!r} (its datasets: "
                                     f"{', '.join(sites[site])}); an administrator sets them in [[site]]")
        try:
            policy, source = Policy(body.get("policy", "")), Source(body.get("source", Source.PACS))
        except ValueError:
            raise web.HTTPError(400, f"policy must be one of {', '.join(Policy)} and source one of "
                                     f"{', '.join(Source)}") from None
        if dataset.sensitivity not in SENSITIVITY_OF[policy]:
            raise web.HTTPError(400, f"{dataset_id!r} is catalogued {dataset.sensitivity}: a {policy} harvest may "
                                     f"only go into a dataset catalogued {' or '.join(SENSITIVITY_OF[policy])}")
        query = body.get("query") or {}
        if not isinstance(query, dict) or not all(isinstance(v, str) and v for v in query.values()):
            raise web.HTTPError(400, "query must be an object of DICOM keywords to non-empty strings")
        unknown = sorted(set(query) - set(QUERY_KEYS))
        if unknown:
            raise web.HTTPError(400, f"query keys {', '.join(unknown)} are not supported; use {', '.join(QUERY_KEYS)}")
        if not query:
            raise web.HTTPError(400, "give at least one query key: a harvest never takes a whole PACS")
        on_qc_failure = body.get("on_qc_failure", "hold")
        if on_qc_failure not in QC_CHOICES:
            raise web.HTTPError(400, f"on_qc_failure must be one of {', '.join(QC_CHOICES)}")
        harvest = self.store.add(dataset=dataset_id, site=site, policy=policy, source=source, query=query,
                                 on_qc_failure=on_qc_failure, requested_by=model["name"])
        await self.audit("harvest-request", harvest, source=source, query=sorted(query))
        return harvest


class HarvestsHandler(IngestHandler):
    async def get(self) -> None:
        states = tuple(s for s in self.get_argument("state", "").split(",") if s)
        site = self.site()
        if site is not None:
            found = self.store.list(site=site, states=states)
        else:
            found = self.store.list(datasets=await self.owned(), states=states)
        self.finish({"harvests": found})

    async def post(self) -> None:
        harvest = await self.create(self.body())
        self.set_status(201)
        self.finish(harvest)


class HarvestHandler(IngestHandler):
    async def get(self, harvest_id: str) -> None:
        self.finish(await self.harvest_for(harvest_id))


class ProgressHandler(IngestHandler):
    """The edge reports: ``{state, counts, message, quarantine: {reason: count}}``."""

    async def post(self, harvest_id: str) -> None:
        harvest = await self.harvest_for(harvest_id, site_only=True)
        body = self.body()
        if HarvestState(harvest["state"]).final:
            raise web.HTTPError(409, f"harvest {harvest_id} is already {harvest['state']}")
        try:
            state = HarvestState(body.get("state", harvest["state"]))
        except ValueError:
            raise web.HTTPError(400, f"state must be one of {', '.join(HarvestState)}") from None
        if state in (HarvestState.PENDING, HarvestState.DELIVERED):
            raise web.HTTPError(400, "an edge reports running, failed or refused; a delivery sets delivered")
        counts = {k: int(v) for k, v in (body.get("counts") or {}).items() if k in harvest["counts"]}
        updated = self.store.update(harvest_id, state=state, counts={**harvest["counts"], **counts},
                                    message=str(body.get("message", ""))[:2000])
        if state != harvest["state"]:
            outcome = {"running": "success", "failed": "failure", "refused": "denied"}[state]
            await self.audit("harvest-run", updated, outcome, state=state, message=updated["message"],
                             counts=updated["counts"])
        quarantine = body.get("quarantine") or {}
        if isinstance(quarantine, dict) and quarantine:
            await self.audit("quarantine", updated, "success", reasons={str(k): int(v) for k, v in quarantine.items()})
        self.finish(updated)


class FileHandler(IngestHandler):
    async def get(self, harvest_id: str, digest: str) -> None:
        await self.harvest_for(harvest_id, site_only=True)
        have, complete = self.store.received(harvest_id, digest)
        self.finish({"received": have, "complete": complete})

    async def put(self, harvest_id: str, digest: str) -> None:
        harvest = await self.harvest_for(harvest_id, site_only=True)
        if HarvestState(harvest["state"]).final:
            raise web.HTTPError(409, f"harvest {harvest_id} is already {harvest['state']}")
        try:
            offset, size = int(self.get_argument("offset")), int(self.get_argument("size"))
        except ValueError:
            raise web.HTTPError(400, "offset and size must be numbers of bytes") from None
        limit = self.settings["max_file_mb"] * MB
        if size > limit:
            raise web.HTTPError(413, f"a file of {size} bytes is larger than [ingest] max_file_mb "
                                     f"({self.settings['max_file_mb']})")
        free = shutil.disk_usage(self.store.folder).free
        if free - len(self.request.body) < self.settings["min_free_mb"] * MB:
            raise web.HTTPError(507, f"the platform's disk has {free // MB} MB free, less than [ingest] min_free_mb "
                                     "with this chunk; the edge will retry later")
        try:
            have, complete = self.store.append(harvest_id, digest, offset, size, self.request.body)
        except OffsetMismatch as e:
            self.set_status(409)
            self.finish({"status": 409, "message": str(e), "received": e.have, "complete": False})
            return
        except (DigestMismatch, ValueError) as e:
            raise web.HTTPError(422, str(e)) from None
        self.finish({"received": have, "complete": complete})


class DeliveryHandler(IngestHandler):
    """Publish what the edge uploaded as the dataset's next version."""

    async def post(self, harvest_id: str) -> None:
        harvest = await self.harvest_for(harvest_id, site_only=True)
        body = self.body()
        delivery = str(body.get("delivery", ""))
        if not delivery:
            raise web.HTTPError(400, "name the delivery (an id the edge keeps, so that a resend is recognised)")
        if harvest["delivery"] == delivery and harvest["version"]:
            self.finish(harvest)  # sent again after a lost answer: the version it made
            return
        if HarvestState(harvest["state"]).final:
            raise web.HTTPError(409, f"harvest {harvest_id} is already {harvest['state']}")
        files: dict[str, tuple[Path, str]] = {}
        missing = []
        for item in body.get("files") or []:
            path, digest = str(item.get("path", "")), str(item.get("sha256", ""))
            try:
                versions.check_path(path)
            except ValueError as e:
                raise web.HTTPError(400, str(e)) from None
            if not is_sha256(digest):
                raise web.HTTPError(400, f"{path}: sha256 must be 64 lower-case hex digits")
            if not self.store.received(harvest_id, digest)[1]:
                missing.append(digest)
            files[path] = (self.store.file(harvest_id, digest), digest)
        if missing:  # the edge sends them (again: the hub may have lost what it had not published)
            self.set_status(409)
            self.finish({"status": 409, "message": f"{len(missing)} file(s) not received completely",
                         "missing": sorted(set(missing))})
            return
        dataset = self.datasets[harvest["dataset"]]
        provenance = {
            "dataset": dataset.id, "site": harvest["site"], "policy": harvest["policy"], "harvest": harvest["id"],
            "source": harvest["source"], "query": harvest["query"], "requested_by": harvest["requested_by"],
            "delivery": delivery, "delivered": utc_now(), "files": len(files),
            "edge": body.get("provenance") if isinstance(body.get("provenance"), dict) else {},
        }
        qc = body.get("qc") if isinstance(body.get("qc"), dict) else {}
        lock = self.settings["locks"].setdefault(dataset.id, asyncio.Lock())
        async with lock:  # one publisher per dataset: each version carries the one before
            version = await IOLoop.current().run_in_executor(
                None, lambda: versions.publish(dataset.path, files, provenance, qc))
        counts = {k: int(v) for k, v in (body.get("counts") or {}).items() if k in harvest["counts"]}
        updated = self.store.update(harvest_id, state=HarvestState.DELIVERED, delivery=delivery, version=version,
                                    counts={**harvest["counts"], **counts})
        self.store.drop_files(harvest_id)
        await self.audit("delivery", updated, files=len(files), version=version, counts=updated["counts"])
        await self.audit("dataset-version", updated, version=version, qc=qc.get("summary", {}))
        log.info("harvest %s from %s: %s of %s published (%d files)", harvest_id, harvest["site"], version,
                 dataset.id, len(files))
        self.set_status(201)
        self.finish(updated)


PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Harvests · medhub</title>
<style>body{{font-family:sans-serif;margin:2rem;max-width:72rem}} table{{border-collapse:collapse}}
td,th{{padding:.25rem .6rem;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}} fieldset{{margin:1rem 0}}
label{{display:inline-block;margin:.2rem 1rem .2rem 0}}</style></head><body>
<h1>Harvests</h1><p>Signed in as {user}. You steer harvests into the datasets you own: {owned}.</p>{error}
<form method="post">{xsrf}<fieldset><legend>New harvest request</legend>
<label>Dataset <select name="dataset">{datasets}</select></label>
<label>Site <select name="site">{sites}</select></label>
<label>Policy <select name="policy">{policies}</select></label>
<label>Source <select name="source">{sources}</select></label>
<label>If a series fails QC <select name="on_qc_failure"><option value="hold">hold it back at the site</option>
<option value="flag">deliver it flagged</option></select></label><br>{query}
<p><button>Ask the site</button></p></fieldset></form>
<table id="harvests"><tr><th>request</th><th>dataset</th><th>site</th><th>policy</th><th>query</th><th>state</th>
<th>found</th><th>received</th><th>quarantined</th><th>failed</th><th>delivered</th><th>version</th><th>message</th></tr>
{rows}</table><p><a href="">Refresh</a></p></body></html>"""


def _options(values) -> str:
    return "".join(f'<option value="{escape(str(v))}">{escape(str(v))}</option>' for v in values)


class PageHandler(HubOAuthenticated, IngestHandler):
    """The owners' page: their datasets' harvests with their progress, and a form for a new one.
    Signed in through the hub (OAuth), not with a token."""

    async def prepare(self) -> None:  # the cookie's user (HubOAuthenticated), not TokenHandler's header token
        pass

    @web.authenticated
    async def get(self, error: str = "") -> None:
        owned = sorted(await self.owned())
        harvests = self.store.list(datasets=set(owned))
        rows = "".join(
            "<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in (
                h["id"], h["dataset"], h["site"], h["policy"], " ".join(f"{k}={v}" for k, v in h["query"].items()),
                h["state"], *(h["counts"][k] for k in ("found", "received", "quarantined", "failed", "delivered")),
                h["version"] or "", h["message"])) + "</tr>" for h in reversed(harvests))
        query = "".join(f'<label>{key} <input name="q-{key}" size="14"></label>' for key in QUERY_KEYS)
        sites = sorted(name for name, datasets in self.settings["sites"].items() if set(datasets) & set(owned))
        self.finish(PAGE.format(
            user=escape(self.current_user["name"]), owned=escape(", ".join(owned) or "none"),
            error=f'<p role="alert">{escape(error)}</p>' if error else "", xsrf=self.xsrf_form_html(),
            datasets=_options(owned), sites=_options(sites), policies=_options(Policy), sources=_options(Source),
            query=query, rows=rows))

    @web.authenticated
    async def post(self) -> None:
        body = {name: self.get_argument(name, "") for name in ("dataset", "site", "policy", "source", "on_qc_failure")}
        body["query"] = {key: value for key in QUERY_KEYS if (value := self.get_argument(f"q-{key}", "").strip())}
        try:
            await self.create(body)
        except web.HTTPError as e:
            self.set_status(e.status_code)
            await self.get(e.log_message or "")
            return
        self.redirect(self.request.path)


def make_app(store: HarvestStore, config: dict[str, Any], prefix: str = "/") -> web.Application:
    settings = {
        "hub_auth": HubOAuth(cache_max_age=5),
        "cookie_secret": secrets.token_bytes(32),  # the page's OAuth sessions: signing in again after a restart is fine
        "hub_scopes": {f"access:services!service={os.environ.get('JUPYTERHUB_SERVICE_NAME', INGEST_SERVICE)}"},
        "groups_cache": {},
        "store": store,
        "datasets": {d["id"]: Dataset.from_dict(d) for d in config["datasets"]},
        "sites": {s["name"]: tuple(s["datasets"]) for s in config["sites"]},
        "audit_url": config.get("audit_url"),
        "max_file_mb": config["max_file_mb"],
        "min_free_mb": config["min_free_mb"],
        "locks": {},
    }
    harvest, digest = r"([0-9a-f]{12})", r"([0-9a-f]{64})"
    return web.Application([
        (prefix, PageHandler),
        (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
        (url_path_join(prefix, "harvests"), HarvestsHandler),
        (url_path_join(prefix, "harvests", harvest), HarvestHandler),
        (url_path_join(prefix, "harvests", harvest, "progress"), ProgressHandler),
        (url_path_join(prefix, "harvests", harvest, "files", digest), FileHandler),
        (url_path_join(prefix, "harvests", harvest, "delivery"), DeliveryHandler),
    ], **settings)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s %(name)s] %(message)s")
    env = os.environ
    config = json.loads(Path(env["MEDHUB_INGEST_CONFIG"]).read_text())
    app = make_app(HarvestStore(Path(config["folder"])), config, prefix=env.get("JUPYTERHUB_SERVICE_PREFIX", "/"))
    listen(app)
    log.info("medhub ingest service on %s; sites: %s", env["JUPYTERHUB_SERVICE_URL"],
             ", ".join(s["name"] for s in config["sites"]) or "none")
    loop = IOLoop.current()
    signal.signal(signal.SIGTERM, lambda *_: loop.add_callback_from_signal(loop.stop))
    loop.start()


if __name__ == "__main__":
    main()
