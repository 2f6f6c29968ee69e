"""Federated training: the data stays at each site, only model weights move.

Each site is a Dask worker named after it (``dask worker --name site-a ...``), run inside the
site's network next to its data. A round:

1. the current weights go to every site whose worker is up; each trains locally (FedAvg, or
   FedProx with its proximal term; optionally with differential privacy through Opacus) on
   the data at its own path, keeps its update in its worker's memory and answers only with its
   sample count, loss and a one-round public key;
2. the sites that answered within ``round_timeout`` upload their updates, masked pairwise
   (:mod:`medlib.train.secure`) so that the caller sees only their sum; if one fails to upload,
   the others upload again masked among themselves;
3. the caller averages (weighted by samples), writes a checkpoint and an audit event.

A site that is down, fails or is late is skipped for that round and takes part again in the
next. :class:`SiteGuard` makes every site worker refuse to open another site's data path, and
records what it opened.
"""

from __future__ import annotations

import copy
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from distributed.diagnostics.plugin import WorkerPlugin

from .. import audit
from . import checkpoint, secure
from .checkpoint import TrainError
from .ddp import FitResult, split_batch
from .monitor import TrainingMonitor

STRATEGIES = ("fedavg", "fedprox")
#: On each site worker: (run, round) → (weighted update, private key), until the round is over.
_PENDING: dict[tuple[str, int], tuple[np.ndarray, Any]] = {}


@dataclass(frozen=True)
class DifferentialPrivacy:
    """DP-SGD at each site (Opacus): per-sample gradients clipped to ``max_grad_norm`` and
    Gaussian noise of ``noise_multiplier`` × that norm; ε is reported per round at ``delta``."""

    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5


#: This process's site guard: which site it is, the roots it watches and those it must not open.
_GUARD: dict[str, Any] = {"site": None, "watched": (), "foreign": (), "opened": [], "installed": False}


def _guard_hook(event: str, args: tuple) -> None:
    if event != "open" or _GUARD["site"] is None or not isinstance(args[0], (str, bytes, Path)):
        return
    path = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
    path = str(Path(path).resolve())
    if path.startswith(_GUARD["watched"]):
        _GUARD["opened"].append(path)
    if path.startswith(_GUARD["foreign"]):
        raise PermissionError(f"site {_GUARD['site']!r} may not open {path}: it belongs to another site")


class SiteGuard(WorkerPlugin):
    """A Dask worker plugin: on a worker named after a site, opening a path under another
    site's data root raises ``PermissionError``, and every opened path under any site's root is
    recorded (run :meth:`opened` on the worker). It works through a Python audit hook, which
    lasts for the worker process; registering again replaces the roots."""

    name = "medlib-site-guard"

    def __init__(self, roots: dict[str, str]):
        self.roots = {site: str(Path(root).resolve()) for site, root in roots.items()}

    def setup(self, worker) -> None:
        me = str(worker.name)
        if me not in self.roots:
            return
        _GUARD.update(site=me, watched=tuple(self.roots.values()),
                      foreign=tuple(root + "/" for site, root in self.roots.items() if site != me))
        if not _GUARD["installed"]:
            sys.addaudithook(_guard_hook)
            _GUARD["installed"] = True

    @staticmethod
    def opened() -> list[str]:
        """The paths under the sites' roots this worker opened."""
        return list(_GUARD["opened"])


def _flat(state: dict[str, torch.Tensor], keys: list[str]) -> np.ndarray:
    return torch.cat([state[k].detach().reshape(-1).to(torch.float64) for k in keys]).numpy()


def _unflat(vector: np.ndarray, like: dict[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
    out, start = dict(like), 0
    for k in keys:
        n = like[k].numel()
        out[k] = torch.from_numpy(vector[start:start + n]).reshape(like[k].shape).to(like[k].dtype)
        start += n
    return out


def _averaged_keys(state: dict[str, torch.Tensor]) -> list[str]:
    """The entries averaged across sites: floating-point weights and buffers (counters such as
    batch-norm's ``num_batches_tracked`` keep the global value)."""
    return [k for k, v in state.items() if v.is_floating_point()]


def _site_train(site: str, path: str, load: Callable, model: torch.nn.Module, config: dict[str, Any],
                run: str, round_: int) -> dict[str, Any]:
    """At the site: train on local data; keep the update here, answer with counts and a key."""
    for key in [k for k in _PENDING if k[0] == run and k[1] < round_]:
        del _PENDING[key]
    from distributed import get_worker

    torch.set_num_threads(max(get_worker().state.nthreads, 1))
    began = time.perf_counter()
    dataset = load(Path(path))
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    keys = _averaged_keys(global_state)
    anchor = [p.detach().clone() for p in model.parameters()]
    generator = torch.Generator().manual_seed(config["seed"] * 100_003 + round_ * 1_009 + sum(map(ord, site)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=config["batch_size"], shuffle=True, generator=generator)
    optimizer = (config["optimizer"] or (lambda p: torch.optim.SGD(p, lr=config["lr"])))(model.parameters())
    trained, epsilon = model, None
    dp: DifferentialPrivacy | None = config["dp"]
    if dp is not None:
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant="rdp")
        trained, optimizer, loader = engine.make_private(module=model, optimizer=optimizer, data_loader=loader,
                                                         noise_multiplier=dp.noise_multiplier,
                                                         max_grad_norm=dp.max_grad_norm)
    loss_fn = config["loss"] or torch.nn.functional.mse_loss
    total, seen = 0.0, 0
    for _ in range(config["local_epochs"]):
        for batch in loader:
            inputs, targets = split_batch(batch)
            if len(inputs) == 0:  # Poisson sampling (DP) may draw an empty batch
                continue
            optimizer.zero_grad()
            loss = loss_fn(trained(inputs), targets)
            objective = loss
            if config["strategy"] == "fedprox":
                objective = loss + config["mu"] / 2 * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
            objective.backward()
            optimizer.step()
            total += loss.item() * len(inputs)
            seen += len(inputs)
    if dp is not None:
        epsilon = engine.get_epsilon(dp.delta)
    update = _flat(model.state_dict(), keys) - _flat(global_state, keys)
    private, public = secure.new_keys()
    _PENDING[(run, round_)] = (update * len(dataset), private)
    return {"site": site, "samples": len(dataset), "loss": total / max(seen, 1), "public": public, "epsilon": epsilon,
            "seconds": time.perf_counter() - began}


def _site_upload(site: str, run: str, round_: int, publics: dict[str, bytes] | None) -> np.ndarray:
    """At the site: its weighted update, masked among ``publics`` (None: in the clear)."""
    if (run, round_) not in _PENDING:
        raise TrainError(f"site {site!r} holds no update for round {round_} (its worker restarted)")
    update, private = _PENDING[(run, round_)]
    if publics is None:
        return update
    return secure.mask(secure.encode(update), site, private, publics, f"{run}|{round_}")


def _alive_sites(client, sites) -> set[str]:
    names = {w.get("name") for w in client.scheduler_info(n_workers=-1)["workers"].values()}
    return {str(n) for n in names} & set(sites)


def _gather(client, futures: dict[str, Any], timeout: float) -> tuple[dict[str, Any], dict[str, str]]:
    """Results of the futures done within ``timeout``, and why the others are missing."""
    from distributed import wait

    try:
        wait(list(futures.values()), timeout=timeout)
    except TimeoutError:
        pass
    done, missing = {}, {}
    for site, future in futures.items():
        if future.status == "finished":
            done[site] = future.result()
        else:
            missing[site] = "no answer in time" if future.status == "pending" else f"failed: {future.exception()}"
            future.cancel()
    return done, missing


def federated_fit(model: torch.nn.Module, sites: dict[str, str | Path], *, client, rounds: int, load: Callable,
                  strategy: str = "fedavg", mu: float = 0.01, local_epochs: int = 1, batch_size: int = 8,
                  lr: float = 1e-2, loss: Callable | None = None, optimizer: Callable | None = None,
                  dp: DifferentialPrivacy | None = None, secure_aggregation: bool = True, seed: int = 0,
                  round_timeout: float = 600.0, checkpoint_dir: str | Path | None = None,
                  resume: str | Path | None = None, guard: bool = True,
                  callback: Callable[[int, dict], None] | None = None, progress: bool = True) -> FitResult:
    """Train ``model`` across ``sites`` without moving their data.

    Args:
        sites: site name → its data path, as the site's worker sees it. Each site's worker must
            be named after the site.
        client: a ``dask.distributed.Client`` whose cluster has the sites' workers.
        rounds: the total number of rounds (with ``resume``, counting those already done).
        load: ``load(path) -> Dataset`` run at the site; the dataset gives (input, target) pairs
            or dicts with "image" and "label".
        strategy: "fedavg" or "fedprox" (proximal term ``mu``/2 ‖w − w_global‖² in local training).
        dp: differential privacy at the sites (Opacus); None: none.
        secure_aggregation: mask updates pairwise so that no single site's update is seen; a
            round needs two or more sites then.
        round_timeout: seconds to wait for a site's local training before skipping it.
        checkpoint_dir: where ``round-NNNN.pt`` is written after every round.
        resume: a checkpoint to continue from.
        guard: install :class:`SiteGuard` on the site workers.
        callback: ``callback(round, record)`` after every round.

    Returns:
        the model with the final global weights, one record per round (loss, sites that took
        part and those skipped with the reason, samples, the slowest site's local seconds, ε
        with DP) and the last checkpoint.
    """
    if strategy not in STRATEGIES:
        raise TrainError(f"strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if not sites:
        raise TrainError("no sites given: map each site's name to its data path")
    if guard:
        client.register_plugin(SiteGuard({s: str(p) for s, p in sites.items()}))
    start = checkpoint.load(resume) if resume else None
    if start:
        model.load_state_dict(start["model"])
    history: list[dict[str, Any]] = list(start["history"]) if start else []
    first = start["round"] + 1 if start else 0
    run = f"medlib-fed-{uuid.uuid4().hex[:12]}"
    config = {"strategy": strategy, "mu": mu, "local_epochs": local_epochs, "batch_size": batch_size, "lr": lr,
              "loss": loss, "optimizer": optimizer, "dp": dp, "seed": seed}
    audit.record("train-start", {"mode": "federated", "sites": sorted(sites), "rounds": rounds, "first_round": first},
                 strategy=strategy, secure_aggregation=secure_aggregation, dp=dp is not None)
    monitor = TrainingMonitor(total=rounds - first, desc=f"federated, {len(sites)} sites", unit="round",
                              enabled=progress)
    last = None
    try:
        for round_ in range(first, rounds):
            began = time.perf_counter()
            record = _round(client, model, sites, load, config, run, round_, secure_aggregation, round_timeout)
            record["seconds"] = time.perf_counter() - began
            history.append(record)
            if checkpoint_dir:
                last = checkpoint.save({"round": round_, "model": model.state_dict(), "history": history},
                                       Path(checkpoint_dir) / f"round-{round_:04d}.pt")
            audit.record("train-round", {"mode": "federated", "round": round_, "sites": record["sites"]},
                         "success" if record["sites"] else "failure", skipped=record["skipped"],
                         samples=record["samples"], loss=record["loss"])
            monitor.step(1, record["loss"])
            if record["loss"] is not None:
                monitor.point(record["loss"])
            if callback:
                callback(round_, record)
    except Exception as error:
        audit.record("train-end", {"mode": "federated", "sites": sorted(sites)}, "failure", error=str(error)[:500])
        hint = f"; resume with federated_fit(..., resume={str(last)!r})" if last else ""
        raise TrainError(f"federated training failed: {error}{hint}") from error
    finally:
        monitor.close()
    audit.record("train-end", {"mode": "federated", "sites": sorted(sites), "rounds": rounds},
                 final_loss=history[-1]["loss"] if history else None)
    return FitResult(model, history, last)


def _round(client, model, sites, load, config, run: str, round_: int, secure_aggregation: bool,
           timeout: float) -> dict[str, Any]:
    """One round; updates ``model`` in place and returns the round's record."""
    alive = _alive_sites(client, sites)
    skipped = {s: "worker not running" for s in sorted(set(sites) - alive)}
    template = copy.deepcopy(model).cpu()
    trains = {s: client.submit(_site_train, s, str(sites[s]), load, template, config, run, round_, workers=[s],
                               allow_other_workers=False, pure=False, key=f"{run}-r{round_}-train-{s}")
              for s in sorted(alive)}
    answers, missing = _gather(client, trains, timeout)
    skipped.update(missing)
    record = {"round": round_, "sites": [], "skipped": skipped, "samples": 0, "loss": None}
    while answers:
        if secure_aggregation and len(answers) < 2:
            skipped.update({s: "alone in the round: secure aggregation needs two or more sites" for s in answers})
            return record
        publics = {s: a["public"] for s, a in answers.items()} if secure_aggregation else None
        uploads = {s: client.submit(_site_upload, s, run, round_, publics, workers=[s], allow_other_workers=False,
                                    pure=False, key=f"{run}-r{round_}-upload-{s}-{len(answers)}") for s in answers}
        received, failed = _gather(client, uploads, timeout)
        if failed:  # the others upload again, masked among themselves
            skipped.update(failed)
            answers = {s: a for s, a in answers.items() if s in received}
            continue
        total = sum(received.values()) if not secure_aggregation else secure.decode(
            np.sum(np.stack(list(received.values())), axis=0, dtype=np.uint64))
        samples = sum(a["samples"] for a in answers.values())
        state = model.state_dict()
        keys = _averaged_keys(state)
        model.load_state_dict(_unflat(_flat(state, keys) + total / samples, state, keys))
        record.update(sites=sorted(answers), samples=samples,
                      loss=sum(a["loss"] * a["samples"] for a in answers.values()) / samples,
                      site_seconds=max(a["seconds"] for a in answers.values()))
        epsilons = {s: a["epsilon"] for s, a in answers.items() if a["epsilon"] is not None}
        if epsilons:
            record["epsilon"] = epsilons
        return record
    return record
