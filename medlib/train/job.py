"""A federated run as an NVIDIA FLARE job folder: configuration only, no code.

The job has two apps: ``centre`` (deployed to the server: :class:`medlib.train.centre.RecipeRounds`
with the run's settings, and the starting weights as safetensors when there are any) and ``site``
(deployed to the sites: :class:`medlib.train.site.RecipeExecutor` with the recipe). Both name
classes that medlib installed; neither app has a ``custom`` folder, so a site that forbids
bring-your-own-code runs it, and refuses any job that has one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from . import weights
from .recipe import Recipe

#: seconds a site waits before asking the centre again for a task while there is none (FLARE's
#: default is 2: with two tasks a round, that alone added about 4 s to every round)
TASK_REQUEST_INTERVAL = 0.1
#: the classes a job names (installed with medlib at the centre and at the sites)
CONTROLLER = "medlib.train.centre.RecipeRounds"
EXECUTOR = "medlib.train.site.RecipeExecutor"
#: the tasks the controller sends and the executor runs
TASKS = ("train", "aggregate", "fine_tune", "keep")
#: starting weights in the centre app's config folder
START = "start.safetensors"
#: a site's refusal comes back as BAD_TASK_DATA (which does not abort the job, so the centre
#: learns why) with its message in this reply header
REFUSED = "medlib.refused"
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def write_job(folder: str | Path, *, run: str, recipe: Recipe, sites: list[str], rounds: int, first_round: int = 0,
              min_sites: int = 2, round_timeout: int = 3600, mode: str = "federated", signature: bytes | None = None,
              requester: str = "", start: tuple[dict[str, np.ndarray], dict[str, object]] | None = None) -> Path:
    """Write the job for one run (or the rest of it, from ``first_round`` and ``start``) into ``folder``.

    Raises:
        ValueError: a run id or site name that is not an id, or no sites.
    """
    if not _ID.match(run) or not sites or not all(_ID.match(s) for s in sites):
        raise ValueError("run ids and site names are lower-case letters, digits and dashes; give one site or more")
    folder = Path(folder)
    document = recipe.to_json()
    centre = {"format_version": 2, "server": {"task_request_interval": TASK_REQUEST_INTERVAL}, "components": [],
              "workflows": [{"id": "rounds", "path": CONTROLLER, "args": {
        "run": run, "recipe": document, "sites": list(sites), "rounds": rounds, "first_round": first_round,
        "min_sites": min_sites, "round_timeout": round_timeout, "mode": mode, "requester": requester}}]}
    site = {"format_version": 2, "components": [], "executors": [{"tasks": list(TASKS), "executor": {
        "path": EXECUTOR,
        "args": {"run": run, "recipe": document, "signature": signature.hex() if signature else "",
                 "requester": requester}}}]}
    meta = {"name": f"medlib-{run}", "resource_spec": {}, "min_clients": min(min_sites, len(sites)),
            "deploy_map": {"centre": ["server"], "site": list(sites)}}
    for app, name, config in (("centre", "config_fed_server.json", centre), ("site", "config_fed_client.json", site)):
        (folder / app / "config").mkdir(parents=True, exist_ok=True)
        (folder / app / "config" / name).write_text(json.dumps(config, indent=1))
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    if start is not None:
        weights.save(folder / "centre" / "config" / START, *start)
    return folder
