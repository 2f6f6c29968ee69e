"""Data-parallel training: PyTorch DistributedDataParallel on the workers of a Dask cluster.

One task per worker becomes one rank; rank 0's worker hosts the rendezvous (``tcp://host:port``
on a free port it picks). Every rank draws the same shuffled order of the dataset per epoch
(seeded by ``seed + epoch``) and takes its share of each global batch: rank r of W gets
positions r, r + W, r + 2W, ... of the batch. DDP averages gradients over the ranks, so W
ranks take exactly the optimisation steps one process takes with the same global batch.
Each worker reads only its own samples. Rank 0 sends its loss as a Dask event (at most four
times a second, without waiting for an answer) to the caller's progress bar and loss plot, and
writes a checkpoint after every epoch.

Any Dask cluster works unchanged: ``LocalCluster``, dask-jobqueue (Slurm), dask-kubernetes,
dask-gateway. Models with batch normalisation keep per-rank statistics (as DDP does): use
``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` or instance normalisation (MONAI's default).
"""

from __future__ import annotations

import datetime as dt
import gc
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from .. import audit
from . import checkpoint
from .checkpoint import TrainError
from .monitor import TrainingMonitor


@dataclass
class FitResult:
    """The trained model (on the CPU), the loss per epoch, and the last checkpoint written."""

    model: torch.nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None


@dataclass(frozen=True)
class _Config:
    epochs: int
    batch_size: int
    lr: float
    seed: int
    loss: Callable | None
    optimizer: Callable | None
    checkpoint_dir: str | None
    timeout: float
    run: str


def split_batch(batch) -> tuple[Any, Any]:
    """(inputs, targets) of a collated batch: a pair, or a dict with "image" and "label" (MONAI)."""
    if isinstance(batch, dict):
        return batch["image"], batch["label"]
    inputs, targets = batch
    return inputs, targets


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _dataset(data):
    """The dataset itself, or what a factory (called on the worker, where the data is) gives."""
    return data() if callable(data) and not isinstance(data, torch.utils.data.Dataset) else data


def global_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """The epoch's global batches of sample indices: one seeded shuffle, whole batches only."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    return [order[b * batch_size:(b + 1) * batch_size] for b in range(n // batch_size)]


def _rank(rank: int, world: int, host: str, port: int, model: torch.nn.Module, data, config: _Config,
          start: dict[str, Any] | None):
    """One rank: join the process group, train, return rank 0's weights."""
    import torch.distributed as dist
    from distributed import get_worker
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(max(get_worker().state.nthreads, 1))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://{host}:{port}", rank=rank,
                            world_size=world, timeout=dt.timedelta(seconds=config.timeout))
    ddp = optimizer = None
    try:
        torch.manual_seed(config.seed)
        if start:
            model.load_state_dict(start["model"])
        model = model.to(device)
        ddp = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
        optimizer = (config.optimizer or (lambda p: torch.optim.SGD(p, lr=config.lr)))(ddp.parameters())
        if start and start.get("optimizer"):
            optimizer.load_state_dict(start["optimizer"])
        loss_fn = config.loss or torch.nn.functional.mse_loss
        dataset = _dataset(data)
        worker = get_worker()
        progress = (lambda item: worker.log_event(config.run, item)) if rank == 0 else None  # no round trip
        reported = 0.0
        history = list(start["history"]) if start else []
        first = start["epoch"] + 1 if start else 0
        for epoch in range(first, config.epochs):
            began = time.perf_counter()
            batches = global_batches(len(dataset), config.batch_size, config.seed, epoch)
            total = torch.zeros(2, dtype=torch.float64)
            for step, batch in enumerate(batches):
                mine = batch[rank::world].tolist()
                inputs, targets = split_batch(torch.utils.data.default_collate([dataset[i] for i in mine]))
                optimizer.zero_grad()
                loss = loss_fn(ddp(inputs.to(device)), targets.to(device))
                loss.backward()
                optimizer.step()
                total += torch.tensor([loss.item() * len(mine), len(mine)], dtype=torch.float64)
                if progress is not None and (time.monotonic() - reported > 0.25 or step + 1 == len(batches)):
                    progress({"epoch": epoch, "step": step + 1, "steps": len(batches), "loss": loss.item()})
                    reported = time.monotonic()
            if cuda:
                total = total.to(device)
            dist.all_reduce(total)
            record = {"epoch": epoch, "loss": float(total[0] / total[1]), "samples": int(total[1]),
                      "seconds": time.perf_counter() - began}
            history.append(record)
            if rank == 0 and config.checkpoint_dir:
                state = {"epoch": epoch, "model": {k: v.cpu() for k, v in model.state_dict().items()},
                         "optimizer": optimizer.state_dict(), "history": history, "seed": config.seed,
                         "batch_size": config.batch_size}
                path = checkpoint.save(state, Path(config.checkpoint_dir) / f"epoch-{epoch:04d}.pt")
                record["checkpoint"] = str(path)
            if progress is not None:
                progress({**record, "done": True})
        return ({k: v.cpu() for k, v in model.state_dict().items()}, history) if rank == 0 else None
    finally:
        # DDP's reducer holds the process group: free it first, or the group's destructor can
        # wait forever for threads that destroy_process_group already stopped
        del ddp, optimizer
        gc.collect()
        dist.destroy_process_group()


def fit(model: torch.nn.Module, data, *, client, epochs: int, batch_size: int = 8, lr: float = 1e-3,
        loss: Callable | None = None, optimizer: Callable | None = None, seed: int = 0,
        checkpoint_dir: str | Path | None = None, resume: str | Path | None = None, workers: list[str] | None = None,
        progress: bool = True, timeout: float = 300.0) -> FitResult:
    """Train ``model`` with DistributedDataParallel, one rank per Dask worker.

    Args:
        data: a map-style ``torch.utils.data.Dataset`` of (input, target) pairs or MONAI-style
            dicts with "image" and "label", or a function returning one (called on each worker,
            so the data is read where the worker runs).
        client: a ``dask.distributed.Client`` of any cluster.
        epochs: the total number of epochs (with ``resume``, counting those already done).
        batch_size: the global batch; each of W ranks takes batch_size / W samples of it.
        loss: ``loss(outputs, targets)``; mean squared error by default.
        optimizer: ``optimizer(parameters)``; SGD with ``lr`` by default.
        checkpoint_dir: where rank 0 writes ``epoch-NNNN.pt`` after every epoch (a folder all
            workers can reach).
        resume: a checkpoint to continue from (its model, optimizer and history).
        workers: the worker addresses to use; all of the client's workers by default.
        timeout: seconds a rank waits for the others in a collective before giving up.

    Returns:
        the trained model (its weights from rank 0), the loss per epoch and the last checkpoint.

    Raises:
        TrainError: no workers, a batch that does not split over the workers, or a rank that
            failed (the message names the checkpoint to resume from).
    """
    workers = workers or sorted(client.scheduler_info(n_workers=-1)["workers"])
    if not workers:
        raise TrainError("the Dask cluster has no workers; start some (cluster.scale(n)) and call fit again")
    world = len(workers)
    if batch_size % world:
        raise TrainError(f"a global batch of {batch_size} does not split over {world} workers; "
                         f"use a multiple of {world}")
    start = checkpoint.load(resume) if resume else None
    config = _Config(epochs, batch_size, lr, seed, loss, optimizer, str(checkpoint_dir) if checkpoint_dir else None,
                     timeout, f"medlib-train-{uuid.uuid4().hex[:12]}")
    host = urlparse(workers[0]).hostname
    port = client.run(_free_port, workers=[workers[0]])[workers[0]]
    first = start["epoch"] + 1 if start else 0
    audit.record("train-start", {"mode": "data-parallel", "workers": world, "epochs": epochs, "first_epoch": first})
    updates: deque[dict] = deque()
    client.subscribe_topic(config.run, lambda event: updates.append(event[1]))
    futures = [client.submit(_rank, rank, world, host, port, model, data, config, start, workers=[w],
                             allow_other_workers=False, pure=False, key=f"{config.run}-rank-{rank}")
               for rank, w in enumerate(workers)]
    monitor = TrainingMonitor(total=0, desc=f"DDP on {world} worker(s)", enabled=progress)
    heard = time.monotonic()
    try:
        while True:
            if time.monotonic() - heard > timeout:
                states = ", ".join(f"rank {r}: {f.status}" for r, f in enumerate(futures))
                raise TrainError(f"no word from the ranks for {timeout:.0f} s ({states}); is every worker alive?")
            failed = [f for f in futures if f.status not in ("pending", "finished")]
            if failed:  # erred, or cancelled or lost by the cluster
                raise failed[0].exception() if failed[0].status == "error" else TrainError(
                    f"rank {futures.index(failed[0])} was {failed[0].status} by the Dask cluster")
            finished = all(f.status == "finished" for f in futures)
            if not finished and not updates:
                time.sleep(0.2)
            while updates:
                heard = time.monotonic()
                item = updates.popleft()
                if item.get("done"):
                    monitor.point(item["loss"])
                else:
                    monitor.bar.total = item["steps"] * (epochs - first)
                    monitor.step(item["step"] + (item["epoch"] - first) * item["steps"] - monitor.bar.n, item["loss"])
            if finished:
                break
        state, history = futures[0].result()
    except Exception as error:
        for f in futures:
            f.cancel()
        audit.record("train-end", {"mode": "data-parallel", "workers": world}, "failure", error=str(error)[:500])
        written = sorted(Path(checkpoint_dir).glob("epoch-*.pt")) if checkpoint_dir else []
        hint = f"; resume with fit(..., resume={str(written[-1])!r})" if written else ""
        raise TrainError(f"data-parallel training failed: {error}{hint}") from error
    finally:
        client.unsubscribe_topic(config.run)
        monitor.close()
    model.load_state_dict(state)
    audit.record("train-end", {"mode": "data-parallel", "workers": world, "epochs": epochs},
                 final_loss=history[-1]["loss"] if history else None)
    last = history[-1].get("checkpoint") if history else None
    return FitResult(model, history, Path(last) if last else None)
