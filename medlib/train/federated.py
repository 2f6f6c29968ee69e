"""Federated training from a notebook: a recipe, the sites, the rounds; the platform does the rest.

    from medlib.train import federated_fit
    run = federated_fit(recipe, sites=["site-a", "site-b", "site-c"], rounds=20)
    run.version        # the version of the models dataset holding the final model
    run.history        # per round: sites, samples, loss, each site's metrics (and ε with DP)

The run is submitted to the hub's ``medhub-federated`` service with the user's own token; the
service holds the federated engine's admin credentials (NVIDIA FLARE) and follows the run, so it
goes on when this server stops: ``follow(run_id)`` picks it up again. Each site runs the recipe
only if its own policy approves it (:mod:`medlib.train.approval`); a refusal ends the run with
the site's message, naming what to approve. Nothing but the recipe (configuration, no code)
leaves this server.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from medhub.batch.client import BatchError, ServiceClient

from ..contract import FEDERATED_SERVICE
from .checkpoint import TrainError
from .monitor import TrainingMonitor
from .recipe import Recipe, parse

FINAL = ("completed", "refused", "failed")


@dataclass
class FederatedRun:
    """A run as the service reports it."""

    id: str
    state: str
    message: str = ""
    round: int = 0
    rounds: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    refusals: dict[str, str] | None = None
    provenance: dict[str, Any] | None = None
    version: str | None = None
    dataset: str | None = None

    @classmethod
    def of(cls, data: dict[str, Any]) -> FederatedRun:
        return cls(**{k: data.get(k) if data.get(k) is not None else f.default_factory() if callable(
            f.default_factory) else f.default for k, f in cls.__dataclass_fields__.items()})


class FederatedClient(ServiceClient):
    """The federated service's runs, with the user's token."""

    name = FEDERATED_SERVICE
    path = "runs"

    def start(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", json=body).json()

    def get(self, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/{run_id}").json()

    def list(self) -> list[dict[str, Any]]:
        return self._call("GET").json()["runs"]


def federated_fit(recipe: Recipe | dict | str, sites: list[str], rounds: int = 1, *, signature: bytes | None = None,
                  mode: str = "federated", start: str | None = None, wait: bool = True, progress: bool = True,
                  every: float = 2.0, hub: str | None = None, token: str | None = None) -> FederatedRun:
    """Train ``recipe`` across ``sites`` for ``rounds`` rounds, on the platform's federation.

    Args:
        recipe: a :class:`~medlib.train.recipe.Recipe`, or its JSON (text or object).
        sites: the federation's sites to train at (two or more; one for ``mode="transfer"``).
        signature: an approver's signature of the recipe (:func:`medlib.train.approval.sign`), for
            sites that trust the approver's key rather than listing the recipe's digest.
        mode: "federated" (FedAvg with secure aggregation), or "transfer" (each site fine-tunes
            the recipe's ``fine_tune`` layers of the model ``start`` and sends back metrics only).
        start: a version of the models dataset to begin from (needed for "transfer").
        wait: follow the run to its end (with a progress bar); False returns once submitted.

    Raises:
        TrainError: the recipe is not one, the service refused the run, or a site refused it.
    """
    document = recipe.to_json() if isinstance(recipe, Recipe) else json.loads(recipe) if isinstance(recipe, str) \
        else recipe
    try:
        parse(document)
        client = FederatedClient(hub, token)
        body: dict[str, Any] = {"recipe": document, "sites": list(sites), "rounds": rounds, "mode": mode}
        if signature:
            body["signature"] = signature.hex()
        if start:
            body["start"] = start
        run = FederatedRun.of(client.start(body))
    except (BatchError, ValueError) as e:
        raise TrainError(f"federated training not started: {e}") from None
    return follow(run.id, progress=progress, every=every, client=client) if wait else run


def follow(run_id: str, *, progress: bool = True, every: float = 2.0, client: FederatedClient | None = None,
           hub: str | None = None, token: str | None = None) -> FederatedRun:
    """Follow a run to its end (again, after this server restarted: the run went on without it).

    Raises:
        TrainError: a site refused the run, or it failed; the message says why.
    """
    client = client or FederatedClient(hub, token)
    run = FederatedRun.of(client.get(run_id))
    monitor = TrainingMonitor(total=run.rounds, desc=f"{run.id}, {run.state}", unit="round", enabled=progress)
    shown = 0
    try:
        while True:
            run = FederatedRun.of(client.get(run_id))
            for record in run.history[shown:]:
                if record.get("sites"):  # a round that updated the model (not one voided by a dropout)
                    monitor.step(1, record.get("loss"))
                    if record.get("loss") is not None:  # transfer learning reports each site's metrics only
                        monitor.point(record["loss"])
            shown = len(run.history)
            monitor.bar.set_description(f"{run.id}, {run.state}")
            if run.state in FINAL:
                break
            time.sleep(every)
    except BatchError as e:
        raise TrainError(f"lost the run {run_id}: {e}; follow({run_id!r}) picks it up again") from None
    finally:
        monitor.close()
    if run.state != "completed":
        raise TrainError(f"federated run {run.id} {run.state}: {run.message}")
    return run
