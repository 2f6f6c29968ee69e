"""At the centre: the NVIDIA FLARE controller that runs a recipe's rounds over the sites.

The run goes on until ``rounds`` rounds have updated the model. Round numbers are never reused:
a job that continues a run starts at a number after every round an earlier job began (each
site trains and uploads at most once per run and round number).

A round (``mode="federated"``) asks every site of the job that is still connected to ``train``
from the global weights, then has the sites that answered ``aggregate``: each uploads its update
masked pairwise with the others' one-round keys (:mod:`medlib.train.secure`), so this controller
sees only their sum. A site that drops between the two steps voids the round (the global model
stays as it was; no site is ever asked for its update twice) and the next round goes on without
it. After every round the global weights and the history are written to the job's run folder
(``medlib/model.safetensors``, ``medlib/progress.json``), and what each site sent is kept beside
them (``medlib/received/``) for audit. A site's refusal ends the run, with the site's message in
``medlib/result.json``. At the end the final model is sent to the sites to ``keep``.

``mode="transfer"``: each site fine-tunes from the given weights (``fine_tune``); only its
metrics come back, unless the site's policy lets the weights go too.

Weights start from ``start.safetensors`` in the app's config folder when the job carries one
(a continued run, or a model to fine-tune), else from the recipe's network with seed 0.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nvflare.apis.controller_spec import Task
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.impl.controller import Controller
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.widgets.info_collector import InfoCollector

from . import secure, weights
from .job import REFUSED, START
from .recipe import build_model, parse

MODES = ("federated", "transfer")


class RecipeRounds(Controller):
    """Runs ``rounds`` rounds of one recipe over ``sites`` (see the module's description)."""

    def __init__(self, run: str, recipe: dict, sites: list[str], rounds: int, first_round: int = 0,
                 min_sites: int = 2, round_timeout: int = 3600, mode: str = "federated", signature: str = "",
                 requester: str = ""):
        super().__init__(task_check_period=0.1)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self.run_id, self.document, self.sites, self.rounds = run, recipe, list(sites), int(rounds)
        self.first_round, self.min_sites, self.round_timeout, self.mode = int(first_round), int(min_sites), \
            int(round_timeout), mode
        self.requester = requester
        self.progress: dict[str, Any] = {"run": run, "round": first_round, "rounds": rounds, "state": "starting"}
        self.out: Path | None = None

    def start_controller(self, fl_ctx: FLContext) -> None:
        workspace = fl_ctx.get_engine().get_workspace()
        self.out = Path(workspace.get_run_dir(fl_ctx.get_job_id())) / "medlib"
        (self.out / "received").mkdir(parents=True, exist_ok=True)
        self.config_dir = Path(workspace.get_app_config_dir(fl_ctx.get_job_id()))

    def stop_controller(self, fl_ctx: FLContext) -> None:
        pass

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == InfoCollector.EVENT_TYPE_GET_STATS:
            collector = fl_ctx.get_prop(InfoCollector.CTX_KEY_STATS_COLLECTOR)
            if collector is not None:
                collector.add_info("medlib", dict(self.progress))

    def process_result_of_unknown_task(self, client, task_name, client_task_id, result, fl_ctx) -> None:
        pass  # a late answer to a round already closed: not used

    # -- the run ----------------------------------------------------------------------------------

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        recipe = parse(self.document)
        torch.manual_seed(0)
        arrays = weights.to_arrays(build_model(recipe))
        history: list[dict[str, Any]] = []
        if (self.config_dir / START).is_file():
            start, metadata = weights.load(self.config_dir / START)
            arrays = weights.checked(start, arrays)
            history = json.loads(metadata.get("history", "[]"))
        self.provenance = {"run": self.run_id, "recipe": recipe.digest, "recipe_name": recipe.name,
                           "requester": self.requester, "mode": self.mode}
        if self.mode == "transfer":
            self._transfer(arrays, fl_ctx, abort_signal)
            return
        names = weights.floating(arrays)
        done, round_ = sum(1 for r in history if r.get("sites")), self.first_round
        while done < self.rounds:
            if round_ - self.first_round >= 2 * self.rounds + 5:
                return self._finish("failed", arrays, history)
            self.progress.update(round=round_, done=done, state="training")
            began = time.perf_counter()
            record, total = self._round(round_, arrays, names, fl_ctx, abort_signal)
            record["seconds"] = time.perf_counter() - began
            if abort_signal.triggered:  # stopped mid-round: the checkpoint stays at the last whole round
                return
            history.append(record)
            if record.get("refused"):
                return self._finish("refused", arrays, history, refusals=record["refused"])
            if total is not None:
                arrays = weights.unflat(weights.flat(arrays, names) + total / record["samples"], arrays, names)
                done += 1
            round_ += 1
            self._checkpoint(arrays, history, round_)
            self.progress.update(round=round_, done=done, last=record)
        self._finish("completed", arrays, history)
        self._ask("keep", {"round": round_, "weights": arrays, "provenance": self._provenance(history)},
                  self._connected(), fl_ctx, abort_signal)

    def _round(self, round_: int, arrays: dict[str, np.ndarray], names: list[str], fl_ctx: FLContext,
               abort_signal: Signal) -> tuple[dict[str, Any], np.ndarray | None]:
        record: dict[str, Any] = {"round": round_, "sites": [], "skipped": {}, "samples": 0, "loss": None}
        targets = self._connected()
        record["skipped"] = {s: "not connected" for s in self.sites if s not in targets}
        answers, missing = self._ask("train", {"round": round_, "weights": arrays}, targets, fl_ctx, abort_signal)
        refused = {s: why for s, why in missing.items() if why.startswith("refused: ")}
        if refused:
            record["refused"] = {s: why.removeprefix("refused: ") for s, why in refused.items()}
            return record, None
        record["skipped"].update(missing)
        if len(answers) < max(self.min_sites, 2):
            record["skipped"].update({s: f"too few sites for secure aggregation (needs {max(self.min_sites, 2)})"
                                      for s in answers})
            return record, None
        publics = {s: a["public"] for s, a in answers.items()}
        uploads, missing = self._ask("aggregate", {"round": round_, "publics": publics}, list(answers), fl_ctx,
                                     abort_signal)
        if missing:  # the masks no longer cancel: the round is void, and nobody uploads twice
            record["skipped"].update(missing)
            record["void"] = "a site dropped out before uploading"
            return record, None
        total = secure.decode(np.sum(np.stack([u["masked"] for u in uploads.values()]), axis=0, dtype=np.uint64))
        samples = sum(int(a["samples"]) for a in answers.values())
        record.update(sites=sorted(answers), samples=samples,
                      loss=sum(a["metrics"]["loss"] * a["samples"] for a in answers.values()) / samples,
                      metrics={s: a["metrics"] for s, a in answers.items()})
        return record, total

    def _transfer(self, arrays: dict[str, np.ndarray], fl_ctx: FLContext, abort_signal: Signal) -> None:
        self.progress.update(state="fine-tuning")
        answers, missing = self._ask("fine_tune", {"round": 0, "weights": arrays}, self._connected(), fl_ctx,
                                     abort_signal)
        record = {"round": 0, "sites": sorted(answers), "skipped": missing,
                  "metrics": {s: a["metrics"] for s, a in answers.items()}}
        refused = {s: why.removeprefix("refused: ") for s, why in missing.items() if why.startswith("refused: ")}
        shared = {s: a["weights"] for s, a in answers.items() if "weights" in a}
        for site, site_arrays in shared.items():
            weights.save(self.out / f"fine-tuned-{site}.safetensors", weights.checked(site_arrays, arrays),
                         {"provenance": {**self.provenance, "site": site}})
        self._finish("refused" if refused else "completed", None, [record], refusals=refused or None)

    # -- talking to the sites -------------------------------------------------------------------

    def _connected(self) -> list[str]:
        return [s for s in self.sites if self.get_client_disconnect_time(s) is None]

    def _ask(self, name: str, data: dict[str, Any], targets: list[str], fl_ctx: FLContext,
             abort_signal: Signal) -> tuple[dict[str, dict], dict[str, str]]:
        """Send task ``name`` to ``targets``; the answers by site, and why the others gave none."""
        if not targets:
            return {}, {}
        results: dict[str, Shareable] = {}

        def received(client_task, fl_ctx: FLContext) -> None:
            results[client_task.client.name] = client_task.result

        payload = Shareable()
        payload.update(data)
        task = Task(name=name, data=payload, timeout=self.round_timeout, result_received_cb=received)
        self.broadcast(task, fl_ctx, targets=targets, min_responses=len(targets))
        while task.completion_status is None:
            lost = [t for t in targets if t not in results and self.get_client_disconnect_time(t) is not None]
            if abort_signal.triggered or len(results) + len(lost) >= len(targets):
                self.cancel_task(task, fl_ctx=fl_ctx)
                break
            time.sleep(0.1)
        answers, missing = {}, {}
        for site in targets:
            result = results.get(site)
            if result is None:
                missing[site] = "disconnected" if self.get_client_disconnect_time(site) else "no answer in time"
            elif result.get_return_code(ReturnCode.OK) != ReturnCode.OK:
                reason = result.get_header(REFUSED)
                missing[site] = f"refused: {reason}" if reason else f"failed: {result.get_return_code()}"
            else:
                answers[site] = dict(result)
            if result is not None:
                self._keep_received(name, data.get("round"), site, result)
        return answers, missing

    def _keep_received(self, task: str, round_: int, site: str, result: Shareable) -> None:
        """What a site sent, kept for audit: arrays as .npy, the rest as JSON."""
        stem = self.out / "received" / f"round-{round_:04d}-{task}-{site}"
        plain = {}
        for key, value in dict(result).items():
            if isinstance(value, np.ndarray):
                np.save(f"{stem}-{key}.npy", value, allow_pickle=False)
            elif isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
                np.savez(f"{stem}-{key}.npz", **value)
            else:
                plain[key] = value.hex() if isinstance(value, bytes) else value
        Path(f"{stem}.json").write_text(json.dumps(plain, default=str, sort_keys=True))

    # -- what the run leaves behind -------------------------------------------------------------

    def _provenance(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        sites = sorted({s for r in history for s in r.get("sites", [])})
        epsilons = [m["epsilon"] for r in history for m in r.get("metrics", {}).values() if "epsilon" in m]
        return {**self.provenance, "sites": sites, "rounds": sum(1 for r in history if r.get("sites")),
                "epsilon": max(epsilons) if epsilons else None}

    def _checkpoint(self, arrays: dict[str, np.ndarray], history: list[dict[str, Any]], next_round: int) -> None:
        weights.save(self.out / "model.safetensors", arrays,
                     {"history": history, "round": next_round, "provenance": self._provenance(history)})
        _write_json(self.out / "progress.json", {**self.progress, "round": next_round, "history": history})

    def _finish(self, status: str, arrays, history: list[dict[str, Any]], refusals: dict | None = None) -> None:
        self.progress.update(state=status)
        if arrays is not None:
            self._checkpoint(arrays, history, history[-1]["round"] + 1 if history else self.first_round)
        _write_json(self.out / "result.json", {"status": status, "refusals": refusals, "history": history,
                                               "provenance": self._provenance(history)})


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, default=str, sort_keys=True))
    os.replace(tmp, path)
