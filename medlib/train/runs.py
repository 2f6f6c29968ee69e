"""Driving federated runs on an NVIDIA FLARE federation, as its admin (the platform's side).

A run is one recipe, its sites and rounds; on the engine it is one job, or several when sites
drop out and come back: the job goes on without a site that is gone (its round's answer is
waited for up to ``round_timeout``); a site that is connected again but no longer runs the job
(it was restarted: the engine does not redeploy a running job), or one that was away when the
job started and is back, makes the job stop, and a new one continues from the last completed
round's checkpoint with every site that is there. :func:`advance` moves a run one step (submit,
follow, continue, or finish) and is meant to be called again and again by whoever holds the
engine's admin credentials (the hub's ``medhub-federated`` service); a run is a plain dict, so
it can be stored between steps and survive a restart.

    engine = Engine(admin_kit="/srv/flare/admin@hospital.org", user="admin@hospital.org")
    run = new_run("run-7f3a", recipe, sites=["site-a", "site-b"], rounds=10, requester="ada")
    while run["state"] not in FINAL:
        run = advance(run, engine, workdir)
        time.sleep(2)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import MedlibError
from . import weights
from .job import write_job
from .recipe import parse

STATES = ("submitting", "running", "completed", "refused", "failed")
FINAL = ("completed", "refused", "failed")


class EngineError(MedlibError, RuntimeError):
    """The federated engine could not be reached or refused a command; the message says which."""


class Engine:
    """The engine's admin API (``nvflare.fuel.flare_api``), one short session per call."""

    def __init__(self, admin_kit: str | Path, user: str, timeout: float = 30):
        self.admin_kit, self.user, self.timeout = str(admin_kit), user, timeout

    def _session(self):
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        try:
            return new_secure_session(self.user, self.admin_kit, timeout=self.timeout)
        except Exception as e:  # the API raises its own types and plain ones alike
            raise EngineError(f"cannot sign in to the federated engine as {self.user} with {self.admin_kit}: {e}") from e

    def _call(self, what: str, *args):
        session = self._session()
        try:
            return getattr(session, what)(*args)
        except Exception as e:
            raise EngineError(f"the federated engine refused {what}: {e}") from e
        finally:
            session.close()

    def submit(self, folder: Path) -> str:
        return self._call("submit_job", str(folder))

    def status(self, job: str) -> str:
        return str(self._call("get_job_meta", job).get("status", ""))

    def progress(self, job: str) -> dict[str, Any]:
        """The run's progress as the job's controller reports it ({} before it started)."""
        try:
            stats = self._call("show_stats", job, "server")
        except EngineError:
            return {}
        return (stats or {}).get("server", {}).get("medlib", {}) if isinstance(stats, dict) else {}

    def connected(self) -> set[str]:
        return {c.name for c in self._call("get_system_info").client_info}

    def running(self, job: str) -> set[str]:
        """The connected sites that run ``job`` (a site restarted since it was deployed does not)."""
        rows = self._call("get_client_job_status") or []
        return {r.get("client_name") for r in rows if isinstance(r, dict) and r.get("job_id") == job}

    def abort(self, job: str) -> None:
        self._call("abort_job", job)

    def download(self, job: str, into: Path) -> Path:
        """The job's run folder at the centre: its ``medlib`` folder (checkpoint, progress, result)."""
        found = Path(self._call("download_job_result", job, str(into)))
        hits = sorted(found.rglob("medlib/progress.json")) + sorted(found.rglob("medlib/result.json"))
        return hits[0].parent if hits else found


def new_run(run_id: str, recipe: dict, *, sites: list[str], rounds: int, requester: str, mode: str = "federated",
            signature: str = "", min_sites: int = 2, round_timeout: int = 3600) -> dict[str, Any]:
    """A run not yet submitted (the recipe is checked here first: :class:`~.recipe.RecipeError`)."""
    parse(recipe)
    if mode == "federated" and len(sites) < 2:
        raise MedlibError("federated training needs two sites or more (their updates are aggregated securely)")
    return {"id": run_id, "recipe": recipe, "signature": signature, "sites": list(sites), "rounds": rounds,
            "mode": mode, "requester": requester, "min_sites": min(min_sites, len(sites)),
            "round_timeout": round_timeout, "state": "submitting", "jobs": [], "round": 0, "history": [],
            "refusals": None, "message": "", "provenance": None, "model": None, "back": []}


def advance(run: dict[str, Any], engine: Engine, workdir: Path) -> dict[str, Any]:
    """One step of ``run``; returns it updated. ``workdir`` holds the run's files (jobs, checkpoint,
    final model: ``<workdir>/model.safetensors``)."""
    run = dict(run)
    workdir.mkdir(parents=True, exist_ok=True)
    if run["state"] == "submitting":
        return _submit(run, engine, workdir)
    if run["state"] != "running":
        return run
    job = run["jobs"][-1]
    status = engine.status(job)
    if status.startswith("FINISHED"):
        return _collect(run, engine, workdir, job, status)
    progress = engine.progress(job)
    run["round"] = max(run["round"], progress.get("round", 0))  # the round under way (or the next)
    if progress.get("state") != "training":
        return run
    connected = engine.connected()
    back = sorted((connected - engine.running(job)) & set(run["sites"]))
    # seen twice in a row: a site that has only just been deployed to is not yet running the job
    if back and back == run.get("back"):
        run["message"] = f"{', '.join(back)} back: continuing from round {run['round']} with every site there"
        engine.abort(job)
    run["back"] = back
    return run


def _submit(run: dict[str, Any], engine: Engine, workdir: Path) -> dict[str, Any]:
    checkpoint = workdir / "checkpoint.safetensors"
    start = weights.load(checkpoint) if checkpoint.is_file() else None
    if run["mode"] == "transfer" and (workdir / "start.safetensors").is_file():
        start = weights.load(workdir / "start.safetensors")
    first = run["round"]
    connected = engine.connected()
    sites = [s for s in run["sites"] if s in connected]
    if len(sites) < run["min_sites"]:
        run["message"] = f"waiting for sites: {', '.join(s for s in run['sites'] if s not in connected)}"
        return run
    folder = Path(tempfile.mkdtemp(prefix="job-", dir=workdir))
    try:
        write_job(folder, run=run["id"], recipe=parse(run["recipe"]), sites=sites, rounds=run["rounds"],
                  first_round=first, min_sites=run["min_sites"], round_timeout=run["round_timeout"], mode=run["mode"],
                  signature=bytes.fromhex(run["signature"]) if run["signature"] else None,
                  requester=run["requester"], start=start)
        run["jobs"] = [*run["jobs"], engine.submit(folder)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    run.update(state="running", back=[], message=f"job {run['jobs'][-1]} on {', '.join(sites)} from round {first}")
    return run


def _collect(run: dict[str, Any], engine: Engine, workdir: Path, job: str, status: str) -> dict[str, Any]:
    out = engine.download(job, workdir / "downloads" / job)
    result = _read_json(out / "result.json")
    progress = _read_json(out / "progress.json")
    if (out / "model.safetensors").is_file():
        shutil.copyfile(out / "model.safetensors", workdir / "checkpoint.safetensors")
    if progress:
        run["history"] = progress.get("history", run["history"])
    run["round"] = max(run["round"], (progress or {}).get("round", 0))
    if result:
        run["history"] = result.get("history") or run["history"]
        run["provenance"] = result.get("provenance")
        if result["status"] == "refused":
            run.update(state="refused", refusals=result.get("refusals"),
                       message="; ".join(f"{s}: {why}" for s, why in (result.get("refusals") or {}).items()))
            return run
        if result["status"] == "completed":
            if (workdir / "checkpoint.safetensors").is_file():
                shutil.copyfile(workdir / "checkpoint.safetensors", workdir / "model.safetensors")
                run["model"] = str(workdir / "model.safetensors")
            run.update(state="completed", message=f"done: {len(run['history'])} rounds")
            return run
    if run["mode"] == "federated" and len(run["jobs"]) < 10 * run["rounds"]:
        # the round under way when the job stopped may have been uploaded by some sites: never reuse its number
        run.update(state="submitting", round=run["round"] + 1,
                   message=f"job {job} ended ({status}): continuing from round {run['round'] + 1}")
        return run
    run.update(state="failed", message=f"job {job} ended {status} without a result")
    return run


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
