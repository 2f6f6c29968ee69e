"""Training: DDP scaling on Dask workers, and federated round overhead: NVIDIA FLARE against Flower.

1. Data-parallel: MONAI's UNet (channels 16-32-64) on 64 synthetic 32³ sphere images
   (``medlib.train.examples``), 4 samples per worker per step, on 1 worker and on 2 workers of
   one thread each (a LocalCluster), 5 epochs. Samples/s from the epochs after the first;
   scaling efficiency = (samples/s on 2) / (2 × samples/s on 1).
2. Federated: MONAI's UNet (8-16-32), 3 sites of 8 images each, one local epoch with batch 4,
   FedAvg, 6 rounds, from the same initial weights, three ways: medlib on NVIDIA FLARE (POC mode
   on loopback, mutual TLS, hardened site kits, the recipe checked against each site's policy,
   secure aggregation: two tasks a round), Flower's simulation engine (Ray, one CPU per client),
   and a plain Dask loop (one worker per site sent the model and a training function each
   round: the path medlib had before, without a boundary). Per-round overhead = round wall
   time − the slowest site's local training time, median over rounds 2..6.

Flower lives in its own virtual environment (../shared/PEERS.md):

    python3 -m venv PEERS/flower && PEERS/flower/bin/pip install flwr "flwr[simulation]" torch==2.13.0 monai

    python benchmarks/train.py --peers PEERS [--record]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster

from medlib.train import fit
from medlib.train.examples import SyntheticSpheres, dice_loss, small_unet
from medlib.train.job import write_job
from medlib.train.recipe import build_model, parse
from results import append as record

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from flare import Federation  # noqa: E402 - the tests' federation on loopback

SITES = ("site-a", "site-b", "site-c")
ROUNDS = 6
RECIPE = {"format": 1, "name": "bench", "dataset": "spheres",
          "model": {"name": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 1,
                                             "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1,
                                             "norm": "INSTANCE"}},
          "loss": {"name": "DiceLoss", "args": {"sigmoid": True}}, "optimizer": {"name": "SGD", "args": {"lr": 0.05}},
          "epochs": 1, "batch_size": 4, "validation": 0.0}

PEER_SCRIPT = r"""
import json, sys, time, statistics
from pathlib import Path
import numpy as np, torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from monai.losses import DiceLoss
from monai.networks.nets import UNet

folder, rounds = Path(sys.argv[1]), int(sys.argv[2])
sites = sorted(p for p in folder.iterdir() if p.is_dir())

def unet():
    return UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(8, 16, 32), strides=(2, 2),
                num_res_units=1, norm="instance")

client_app = ClientApp()

@client_app.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    began = time.perf_counter()
    model = unet()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    data = np.load(sites[int(context.node_config["partition-id"])] / "data.npz")
    x, y = torch.from_numpy(data["image"]), torch.from_numpy(data["label"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = DiceLoss(sigmoid=True)
    order = torch.randperm(len(x))
    for start in range(0, len(x), 4):
        batch = order[start:start + 4]
        optimizer.zero_grad()
        loss_fn(model(x[batch]), y[batch]).backward()
        optimizer.step()
    metrics = MetricRecord({"num-examples": len(x), "train-seconds": time.perf_counter() - began})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)

server_app = ServerApp()
marks, slowest = [], []

def evaluate(server_round, arrays):
    marks.append(time.perf_counter())
    return None

def aggregate_metrics(records, weighting_key):
    slowest.append(max(r["metrics"]["train-seconds"] for r in records))
    return MetricRecord({})

@server_app.main()
def main(grid: Grid, context: Context) -> None:
    initial = torch.load(folder / "initial.pt")
    strategy = FedAvg(fraction_evaluate=0.0, min_train_nodes=len(sites), min_available_nodes=len(sites),
                      train_metrics_aggr_fn=aggregate_metrics)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=rounds, evaluate_fn=evaluate)

run_simulation(server_app, client_app, num_supernodes=len(sites),
               backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
rounds_seconds = [b - a for a, b in zip(marks, marks[1:])]
print(json.dumps({"round_seconds": rounds_seconds, "site_seconds": slowest}))
"""


def samples_per_second(workers: int, data, epochs: int = 5) -> float:
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, \
            Client(cluster) as client:
        result = fit(small_unet((16, 32, 64)), data, client=client, epochs=epochs, batch_size=4 * workers, loss=dice_loss,
                     optimizer=lambda p: torch.optim.SGD(p, lr=0.05), progress=False)
    later = result.history[1:]
    return sum(h["samples"] for h in later) / sum(h["seconds"] for h in later)


def dask_site_train(state: dict, path: str) -> tuple[dict, int, float]:
    """At a Dask site worker: one local epoch from ``state``; (new state, samples, seconds)."""
    import time

    torch.set_num_threads(1)
    began = time.perf_counter()
    model = build_model(parse(RECIPE))
    model.load_state_dict(state)
    data = np.load(Path(path) / "data.npz")
    x, y = torch.from_numpy(data["image"]), torch.from_numpy(data["label"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    order = torch.randperm(len(x))
    for start in range(0, len(x), 4):
        batch = order[start:start + 4]
        optimizer.zero_grad()
        dice_loss(model(x[batch]), y[batch]).backward()
        optimizer.step()
    return model.state_dict(), len(x), time.perf_counter() - began


def dask_rounds(tmp: Path, initial: dict) -> tuple[list[float], list[float]]:
    """FedAvg with a Dask worker per site; each round's wall time and its slowest site's seconds."""
    import time

    workers = {s: {"cls": Nanny, "options": {"name": s, "nthreads": 1, "host": "127.0.0.1"}} for s in SITES}
    rounds, slowest, state = [], [], initial
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None, "host": "127.0.0.1"}}
    with SpecCluster(scheduler=scheduler, workers=workers) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(len(SITES))
        for _ in range(ROUNDS):
            began = time.perf_counter()
            futures = [client.submit(dask_site_train, state, str(tmp / s), workers=[s], pure=False) for s in SITES]
            results = client.gather(futures)
            total = sum(n for _, n, _ in results)
            state = {k: sum(r[k] * n for r, n, _ in results) / total if state[k].is_floating_point() else state[k]
                     for k in state}
            rounds.append(time.perf_counter() - began)
            slowest.append(max(sec for _, _, sec in results))
    return rounds, slowest


def flare_rounds(tmp: Path, initial: dict) -> tuple[list[float], list[float]]:
    """The recipe as a medlib job on a FLARE federation on loopback; per-round wall and slowest site."""
    import time

    import nibabel

    recipe = parse(RECIPE)
    policies = {}
    for site in SITES:
        data = np.load(tmp / site / "data.npz")
        for i, (image, label) in enumerate(zip(data["image"], data["label"])):
            for sub, array in (("images", image[0]), ("labels", label[0])):
                (tmp / "nifti" / site / sub).mkdir(parents=True, exist_ok=True)
                nibabel.save(nibabel.Nifti1Image(array, np.eye(4)), tmp / "nifti" / site / sub / f"case{i:02d}.nii.gz")
        policies[site] = (f'site = "{site}"\napproved = ["{recipe.digest}"]\n[datasets]\n'
                          f'spheres = "{tmp / "nifti" / site}"\n')
    federation = Federation(tmp / "flare", list(SITES), policies)
    federation.start()
    try:
        federation.wait_for_sites(list(SITES))
        arrays = {k: v.numpy() for k, v in initial.items()}
        job = write_job(tmp / "job", run="bench", recipe=recipe, sites=list(SITES), rounds=ROUNDS,
                        start=(arrays, {"history": []}))
        session = federation.session()
        try:
            job_id = session.submit_job(str(job))
            while not session.get_job_meta(job_id).get("status", "").startswith("FINISHED"):
                time.sleep(1)
            found = Path(session.download_job_result(job_id, str(tmp / "out")))
        finally:
            session.close()
        result = json.loads(next(found.rglob("medlib/result.json")).read_text())
    finally:
        federation.stop()
    history = result["history"]
    return [r["seconds"] for r in history], [max(m["seconds"] for m in r["metrics"].values()) for r in history]


def overhead(rounds: list[float], slowest: list[float]) -> float:
    """Median of (round − slowest site) over the rounds after the first."""
    return statistics.median(r - s for r, s in list(zip(rounds, slowest))[1:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=Path, help="folder holding the flower virtual environment")
    p.add_argument("--record", action="store_true", help="append the result to benchmarks/README.md")
    args = p.parse_args()

    spheres = SyntheticSpheres(64, size=32)
    data = [spheres[i] for i in range(len(spheres))]
    one, two = samples_per_second(1, data), samples_per_second(2, data)
    lines = ["| workers | samples/s | scaling efficiency |", "|---|---|---|",
             f"| 1 | {one:.2f} | — |", f"| 2 | {two:.2f} | {two / (2 * one):.0%} |"]

    rows = ["| engine | per-round overhead (median) s | round s (median) | slowest site s (median) |",
            "|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="medlib-train-bench-") as tmp:
        tmp = Path(tmp)
        for n, site in enumerate(SITES):
            (tmp / site).mkdir()
            samples = SyntheticSpheres(8, size=32, seed=100 + n)
            items = [samples[i] for i in range(8)]
            np.savez(tmp / site / "data.npz", image=torch.stack([i["image"] for i in items]).numpy(),
                     label=torch.stack([i["label"] for i in items]).numpy())
        torch.manual_seed(0)
        initial = build_model(parse(RECIPE)).state_dict()
        torch.save(initial, tmp / "initial.pt")
        for name, (rounds, slowest) in (("medlib on NVIDIA FLARE (recipe, site policies, secure aggregation)",
                                         flare_rounds(tmp, initial)),
                                        ("Dask, a worker per site (no boundary)", dask_rounds(tmp, initial))):
            rows.append(f"| {name} | {overhead(rounds, slowest):.3f} | {statistics.median(rounds):.3f} "
                        f"| {statistics.median(slowest):.3f} |")
        if args.peers:
            run = subprocess.run([str(args.peers.resolve() / "flower/bin/python"), "-c", PEER_SCRIPT, str(tmp),
                                  str(ROUNDS)], capture_output=True, text=True, cwd=tmp)
            if run.returncode != 0:
                print(f"flower failed: {run.stderr[-2000:]}", file=sys.stderr)
            else:
                peer = json.loads(run.stdout.strip().splitlines()[-1])
                rows.append(f"| Flower simulation (Ray) | {overhead(peer['round_seconds'], peer['site_seconds']):.3f} "
                            f"| {statistics.median(peer['round_seconds']):.3f} "
                            f"| {statistics.median(peer['site_seconds']):.3f} |")
    text = ("Data-parallel, MONAI UNet 16-32-64, 64 images of 32³, 4 per worker per step:\n\n" + "\n".join(lines) +
            f"\n\nFederated, 3 sites × 8 images, 1 local epoch, {ROUNDS} rounds (first round left out):\n\n" +
            "\n".join(rows))
    print(text)
    if args.record:
        record("Training: DDP scaling and federated round overhead", "python benchmarks/train.py --peers PEERS", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
