"""The ``medhub-federated`` hub service: federated runs on the NVIDIA FLARE federation, for users.

It alone holds the engine's admin startup kit; a user's server calls it with the user's own
token (``medlib.train.federated_fit``), so no engine credential is ever in a user's server.

``POST runs`` {recipe, sites, rounds, signature?, mode?, start?}
    start a run: the recipe is checked against medlib's allow-list (:func:`medlib.train.recipe.parse`)
    and nothing but these keys is accepted: no code, no pickles, no paths. ``start`` is a version
    of the models dataset to begin from (transfer learning: ``mode="transfer"``).
``GET runs``, ``GET runs/<id>``
    the user's runs, with their state, round, history, refusals and, once done, the version of
    the models dataset holding the final model.

The service follows every unfinished run on the engine (:func:`medlib.train.runs.advance`) every
``poll_seconds``, whether or not anybody is watching: a run goes on when its user's server stops.
A completed run's model is published as a new version of ``models_dataset`` with its provenance
(sites, rounds, recipe digest, ε), and the sites keep it too. Starts and ends are audit events
(source ``federated``); the sites' own audit logs record each task they ran.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
from pathlib import Path
from typing import Any

from tornado import web
from tornado.ioloop import IOLoop, PeriodicCallback

from medlib import versions
from medlib.manifest import sha256
from medlib.contract import FEDERATED_SERVICE, utc_now
from medlib.errors import MedlibError
from medlib.train import weights
from medlib.train.recipe import RecipeError, parse
from medlib.train.runs import FINAL, Engine, EngineError, advance, new_run

from ..service_auth import TokenHandler, listen, send_event

log = logging.getLogger("medhub.federated")
FIELDS = {"recipe", "sites", "rounds", "signature", "mode", "start"}
MODES = ("federated", "transfer")
MAX_ROUNDS = 1000


class RunStore:
    """Runs as JSON files, ``<folder>/runs/<id>.json``, each written atomically, with their
    working folders beside them (``<folder>/work/<id>/``)."""

    def __init__(self, folder: Path):
        self.folder = folder
        (folder / "runs").mkdir(parents=True, exist_ok=True, mode=0o700)

    def save(self, run: dict[str, Any]) -> dict[str, Any]:
        path = self.folder / "runs" / f"{run['id']}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(run, sort_keys=True))
        os.replace(tmp, path)
        return run

    def get(self, run_id: str) -> dict[str, Any] | None:
        if not run_id.replace("-", "").isalnum():
            return None
        try:
            return json.loads((self.folder / "runs" / f"{run_id}.json").read_text())
        except FileNotFoundError:
            return None

    def all(self) -> list[dict[str, Any]]:
        return sorted((json.loads(p.read_text()) for p in (self.folder / "runs").glob("*.json")),
                      key=lambda r: r["created"])

    def workdir(self, run_id: str) -> Path:
        return self.folder / "work" / run_id


def public(run: dict[str, Any]) -> dict[str, Any]:
    """What a run's user sees of it."""
    keys = ("id", "requester", "state", "message", "sites", "rounds", "round", "mode", "history", "refusals",
            "provenance", "version", "dataset", "created", "recipe_digest")
    return {k: run.get(k) for k in keys}


class RunsHandler(TokenHandler):
    @property
    def store(self) -> RunStore:
        return self.settings["store"]

    def user(self) -> str:
        model = self.current_user
        if model.get("kind") != "user":
            raise web.HTTPError(403, "federated runs are started by users, with their own token")
        return model["name"]

    async def get(self, run_id: str = "") -> None:
        user = self.user()
        if run_id:
            run = self.store.get(run_id)
            if run is None or run["requester"] != user:
                raise web.HTTPError(404, f"no run {run_id} of yours")
            self.finish(public(run))
        else:
            self.finish({"runs": [public(r) for r in self.store.all() if r["requester"] == user]})

    async def post(self, run_id: str = "") -> None:
        user = self.user()
        config = self.settings["config"]
        if run_id:
            raise web.HTTPError(405, "POST runs to start one")
        groups = set(await self.groups_of(user))
        if not groups & set(config["groups"]):
            raise web.HTTPError(403, f"federated runs are for members of {', '.join(config['groups']) or 'no group yet'}")
        body = self.body()
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise web.HTTPError(400, f"a run is {{{', '.join(sorted(FIELDS))}}} and nothing else (no code, no "
                                     f"objects, no paths); unknown: {', '.join(unknown)}")
        sites, rounds, mode = body.get("sites"), body.get("rounds", 1), body.get("mode", "federated")
        if not isinstance(sites, list) or not sites or not all(s in config["sites"] for s in sites):
            raise web.HTTPError(400, f"sites must be a list of the federation's sites: {', '.join(config['sites'])}")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= MAX_ROUNDS:
            raise web.HTTPError(400, f"rounds must be an integer from 1 to {MAX_ROUNDS}")
        if mode not in MODES:
            raise web.HTTPError(400, f"mode must be one of {', '.join(MODES)}")
        signature = body.get("signature") or ""
        if not isinstance(signature, str) or (signature and not all(c in "0123456789abcdef" for c in signature)):
            raise web.HTTPError(400, "signature must be the approver's Ed25519 signature, in hex")
        run_id = f"run-{secrets.token_hex(6)}"
        try:
            run = new_run(run_id, body.get("recipe"), sites=sorted(set(sites)), rounds=rounds, requester=user,
                          mode=mode, signature=signature, round_timeout=config["round_timeout"])
        except (RecipeError, MedlibError) as e:
            raise web.HTTPError(400, str(e)) from None
        run.update(created=utc_now(), recipe_digest=parse(run["recipe"]).digest, dataset=config["models_dataset"],
                   version=None)
        start = body.get("start")
        if start is not None:
            self._start_from(run, start)
        elif mode == "transfer":
            raise web.HTTPError(400, "transfer learning starts from a model: give start, a version of "
                                     f"{config['models_dataset']}")
        self.store.save(run)
        await audit(self.settings, "train-start", run)
        self.set_status(201)
        self.finish(public(run))

    def _start_from(self, run: dict[str, Any], start: object) -> None:
        """Put the model of ``start`` (a version of the models dataset) where the run begins."""
        config = self.settings["config"]
        if not isinstance(start, str):
            raise web.HTTPError(400, "start is a version of the models dataset, e.g. v000003")
        try:
            folder = versions.resolve(config["models_root"], start)
        except MedlibError as e:
            raise web.HTTPError(404, str(e)) from None
        found = sorted(folder.rglob("model.safetensors"))
        if not found:
            raise web.HTTPError(404, f"version {start} of {config['models_dataset']} holds no model.safetensors")
        arrays, metadata = weights.load(found[0])
        workdir = self.store.workdir(run["id"])
        weights.save(workdir / ("start.safetensors" if run["mode"] == "transfer" else "checkpoint.safetensors"),
                     arrays, {"history": [], "from": f"{config['models_dataset']}@{start}"})


async def audit(settings: dict[str, Any], action: str, run: dict[str, Any], outcome: str = "success") -> None:
    """An event of ``run`` (the service writes as itself; the actor is the run's user)."""
    url = settings["config"]["audit_url"]
    if not url:
        return
    event = {"action": action, "actor": {"user": run["requester"], "groups": []}, "outcome": outcome,
             "object": {"run": run["id"], "sites": run["sites"], "dataset": run.get("dataset")},
             "details": {"mode": "federated-engine", "recipe": run.get("recipe_digest"), "rounds": run["rounds"],
                         "state": run["state"], "version": run.get("version"), "message": run.get("message", "")[:500],
                         "provenance": run.get("provenance")}}
    await send_event(url, settings["hub_auth"].api_token, event)


def publish(run: dict[str, Any], store: RunStore, config: dict[str, Any]) -> str:
    """The final model as a new version of the models dataset; its name."""
    model = Path(run["model"])
    name = f"{run['recipe']['name']}/model.safetensors"
    return versions.publish(config["models_root"], {name: (model, sha256(model))},
                            {"kind": "federated-model", "run": run["id"], "requester": run["requester"],
                             **(run.get("provenance") or {}), "made": utc_now()})


class Follower:
    """Moves every unfinished run a step on the engine, one at a time, off the event loop."""

    def __init__(self, settings: dict[str, Any]):
        self.settings, self.busy = settings, False
        config = settings["config"]
        self.engine = Engine(config["admin_kit"], config["admin"])

    async def tick(self) -> None:
        if self.busy:
            return
        self.busy = True
        try:
            store: RunStore = self.settings["store"]
            for run in store.all():
                if run["state"] in FINAL:
                    continue
                try:
                    updated = await asyncio.get_running_loop().run_in_executor(
                        None, advance, run, self.engine, store.workdir(run["id"]))
                except (EngineError, MedlibError, OSError) as e:
                    log.warning("run %s: %s", run["id"], e)
                    store.save({**run, "message": str(e)[:500]})
                    continue
                if updated["state"] == "completed" and updated.get("model") and not updated.get("version"):
                    updated["version"] = publish(updated, store, self.settings["config"])
                store.save(updated)
                if updated["state"] in FINAL:
                    await audit(self.settings, "train-end", updated,
                                "success" if updated["state"] == "completed" else "failure")
        finally:
            self.busy = False


def make_app(store: RunStore, config: dict[str, Any], prefix: str = "/") -> web.Application:
    from jupyterhub.services.auth import HubAuth

    name = os.environ.get("JUPYTERHUB_SERVICE_NAME", FEDERATED_SERVICE)
    settings = {"store": store, "config": config, "hub_auth": HubAuth(cache_max_age=5), "groups_cache": {},
                "hub_scopes": {f"access:services!service={name}"}}
    return web.Application([(rf"{prefix}runs/?", RunsHandler), (rf"{prefix}runs/([a-z0-9-]+)", RunsHandler)],
                           **settings)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s %(name)s] %(message)s")
    env = os.environ
    config = json.loads(Path(env["MEDHUB_FEDERATED_CONFIG"]).read_text())
    store = RunStore(Path(config["folder"]))
    app = make_app(store, config, prefix=env.get("JUPYTERHUB_SERVICE_PREFIX", "/"))
    listen(app)
    follower = Follower(app.settings)
    PeriodicCallback(follower.tick, config["poll_seconds"] * 1000).start()
    log.info("medhub federated service on %s; sites: %s", env["JUPYTERHUB_SERVICE_URL"], ", ".join(config["sites"]))
    loop = IOLoop.current()
    signal.signal(signal.SIGTERM, lambda *_: loop.add_callback_from_signal(loop.stop))
    loop.start()


if __name__ == "__main__":
    main()
