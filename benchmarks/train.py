"""Training: DDP scaling on Dask workers, and federated round overhead against Flower.

1. Data-parallel: MONAI's UNet (channels 16-32-64) on 64 synthetic 32³ sphere images
   (``medlib.train.examples``), 4 samples per worker per step, on 1 worker and on 2 workers of
   one thread each (a LocalCluster), 5 epochs. Samples/s from the epochs after the first;
   scaling efficiency = (samples/s on 2) / (2 × samples/s on 1).
2. Federated: the same UNet, 3 sites of 8 images each (npz files, one folder per site), one
   local epoch with batch 4, FedAvg, 6 rounds; medlib (3 site workers of one thread, secure
   aggregation on and off) and Flower's simulation engine (Ray, one CPU per client) on the same
   files from the same initial weights. Per-round overhead = round wall time − the slowest
   site's local training time, median over rounds 2..6.

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

from medlib.train import federated_fit, fit
from medlib.train.examples import SyntheticSpheres, dice_loss, small_unet
from results import append as record

SITES = ("site-a", "site-b", "site-c")
ROUNDS = 6

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
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        result = fit(small_unet((16, 32, 64)), data, client=client, epochs=epochs, batch_size=4 * workers, loss=dice_loss,
                     optimizer=lambda p: torch.optim.SGD(p, lr=0.05), progress=False)
    later = result.history[1:]
    return sum(h["samples"] for h in later) / sum(h["seconds"] for h in later)


def load_npz(path: Path):
    data = np.load(path / "data.npz")
    return torch.utils.data.TensorDataset(torch.from_numpy(data["image"]), torch.from_numpy(data["label"]))


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
        torch.save(small_unet().state_dict(), tmp / "initial.pt")
        workers = {s: {"cls": Nanny, "options": {"name": s, "nthreads": 1}} for s in SITES}
        with SpecCluster(scheduler={"cls": Scheduler, "options": {"dashboard_address": None}},
                         workers=workers) as cluster, Client(cluster) as client:
            client.wait_for_workers(len(SITES))
            for secure in (True, False):
                result = federated_fit(small_unet(), {s: tmp / s for s in SITES}, client=client, rounds=ROUNDS,
                                       load=load_npz, loss=dice_loss, lr=0.05, batch_size=4,
                                       secure_aggregation=secure, progress=False)
                rounds = [h["seconds"] for h in result.history]
                slowest = [h["site_seconds"] for h in result.history]
                rows.append(f"| medlib, secure aggregation {'on' if secure else 'off'} | {overhead(rounds, slowest):.3f} "
                            f"| {statistics.median(rounds):.3f} | {statistics.median(slowest):.3f} |")
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
