"""medlib.train on real Dask clusters (worker processes on 127.0.0.1): DDP equivalence, checkpoints
and resume, federated rounds with secure aggregation, a late site, a crashing site, the site guard."""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch
from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster

from medlib.train import DifferentialPrivacy, TrainError, federated_fit, fit
from medlib.train.ddp import global_batches
from medlib.train.federated import SiteGuard

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the worker processes cannot import tests/

TRUE_WEIGHTS = torch.tensor([[1.5, -2.0, 0.5, 3.0]])


def regression(n: int, seed: int) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return torch.utils.data.TensorDataset(x, x @ TRUE_WEIGHTS.T + 0.7 + 0.05 * torch.randn(n, 1, generator=g))


def mlp() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.fixture
def audit_buffer(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "audit-buffer.jsonl"
    monkeypatch.setenv("MEDHUB_AUDIT_BUFFER", str(path))  # no audit service in these tests
    return path


def actions(buffer: Path) -> list[str]:
    return [json.loads(line)["action"] for line in buffer.read_text().splitlines()]


def test_ddp_on_two_workers_takes_the_steps_of_one_process_and_resumes(tmp_path: Path, audit_buffer: Path, capsys):
    data = regression(64, seed=2)
    settings = dict(epochs=3, batch_size=8, lr=0.05, seed=3, progress=False)
    # the reference: one process, plain SGD over the same global batches
    reference = mlp()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.05)
    for epoch in range(3):
        for batch in global_batches(len(data), 8, 3, epoch):
            x, y = data[batch]
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(reference(x), y).backward()
            optimizer.step()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        two = fit(mlp(), data, client=client, checkpoint_dir=tmp_path / "two", **{**settings, "progress": True})
        bar = capsys.readouterr().err  # rank 0's losses reached the caller's progress bar
        assert "DDP on 2 worker(s)" in bar and "24/24" in bar and "loss=" in bar
        one = fit(mlp(), data, client=client, workers=sorted(client.scheduler_info()["workers"])[:1], **settings)
        resumed = fit(mlp(), data, client=client, resume=tmp_path / "two" / "epoch-0001.pt", **settings)
        with pytest.raises(TrainError, match="does not split over 2 workers"):
            fit(mlp(), data, client=client, epochs=1, batch_size=7, progress=False)
    torch.testing.assert_close(weights(one.model), weights(reference), rtol=0, atol=1e-6)
    torch.testing.assert_close(weights(two.model), weights(reference), rtol=0, atol=1e-5)
    torch.testing.assert_close(weights(resumed.model), weights(two.model), rtol=0, atol=1e-6)
    assert [h["epoch"] for h in two.history] == [0, 1, 2] and two.history[-1]["loss"] < two.history[0]["loss"]
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]  # the checkpoint's two, then one more
    assert two.checkpoint == tmp_path / "two" / "epoch-0002.pt" and two.history[0]["samples"] == 64
    assert actions(audit_buffer).count("train-start") == 3 and actions(audit_buffer).count("train-end") == 3


SITES = ("site-a", "site-b", "site-c")


def load_site(path: Path) -> torch.utils.data.TensorDataset:
    """A site's loader: its own npz file. Marker files make it late (once: 15 s, past the test's
    8 s round timeout, which a round otherwise meets with room to spare) or crash (once)."""
    if (path / "late").exists():
        (path / "late").unlink()
        time.sleep(15)
    if (path / "crash").exists():
        (path / "crash").unlink()
        os._exit(1)
    arrays = np.load(path / "data.npz")
    return torch.utils.data.TensorDataset(torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"]))


@pytest.fixture
def sites(tmp_path: Path):
    roots = {}
    for n, site in enumerate(SITES):
        root = tmp_path / site
        root.mkdir()
        x, y = regression(48 + 16 * n, seed=10 + n).tensors
        np.savez(root / "data.npz", x=x.numpy(), y=y.numpy())
        roots[site] = root
    workers = {site: {"cls": Nanny, "options": {"name": site, "nthreads": 2}} for site in SITES}
    with SpecCluster(scheduler={"cls": Scheduler, "options": {"dashboard_address": None}}, workers=workers) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(len(SITES))
        yield client, roots


def alive(client) -> set[str]:
    return {str(w["name"]) for w in client.scheduler_info(n_workers=-1)["workers"].values()}


def test_federated_rounds_survive_a_late_and_a_crashing_site(sites, tmp_path: Path, audit_buffer: Path):
    client, roots = sites

    def between_rounds(round_: int, record: dict) -> None:
        if round_ == 0:
            (roots["site-b"] / "late").touch()  # site-b misses round 1
        if round_ == 2:
            (roots["site-c"] / "crash").touch()  # site-c's worker dies in round 3
        if round_ == 3:
            deadline = time.monotonic() + 60
            while "site-c" not in alive(client) and time.monotonic() < deadline:  # the nanny restarts it
                time.sleep(0.2)

    result = federated_fit(mlp(), roots, client=client, rounds=6, load=load_site, lr=0.05, local_epochs=2,
                           round_timeout=8, checkpoint_dir=tmp_path / "fed", callback=between_rounds, progress=False)
    history = result.history
    assert [h["round"] for h in history] == list(range(6))
    assert history[1]["skipped"].get("site-b") == "no answer in time" and "site-b" not in history[1]["sites"]
    assert "site-b" in history[2]["sites"]  # back the round after
    assert history[4]["sites"] == list(SITES) and history[5]["sites"] == list(SITES)  # site-c rejoined
    assert history[-1]["loss"] < 0.2 * history[0]["loss"]
    assert history[0]["samples"] == 48 + 64 + 80
    assert result.checkpoint == tmp_path / "fed" / "round-0005.pt"
    assert actions(audit_buffer).count("train-round") == 6
    # every site opened its own data and nothing of the others'
    opened = client.run(SiteGuard.opened)
    names = {address: str(info["name"]) for address, info in client.scheduler_info()["workers"].items()}
    for address, paths in opened.items():
        site = names[address]
        assert all(p.startswith(str(roots[site].resolve())) for p in paths), (site, paths)
    assert any(p.endswith("data.npz") for p in opened[next(a for a, n in names.items() if n == "site-a")])
    with pytest.raises(PermissionError, match="belongs to another site"):
        client.submit(np.load, str(roots["site-b"] / "data.npz"), workers=["site-a"], pure=False).result()


def test_secure_aggregation_gives_the_plain_average_and_fedprox_and_dp_train(sites, audit_buffer: Path):
    client, roots = sites
    plain = federated_fit(mlp(), roots, client=client, rounds=2, load=load_site, secure_aggregation=False,
                          progress=False)
    masked = federated_fit(mlp(), roots, client=client, rounds=2, load=load_site, progress=False)
    torch.testing.assert_close(weights(masked.model), weights(plain.model), rtol=0, atol=1e-6)
    prox = federated_fit(mlp(), roots, client=client, rounds=3, load=load_site, strategy="fedprox", mu=0.1, lr=0.05,
                         progress=False)
    assert prox.history[-1]["loss"] < prox.history[0]["loss"]
    private = federated_fit(mlp(), roots, client=client, rounds=2, load=load_site, lr=0.05,
                            dp=DifferentialPrivacy(noise_multiplier=0.5, max_grad_norm=5.0), progress=False)
    assert set(private.history[-1]["epsilon"]) == set(SITES)
    assert all(0 < e < float("inf") for e in private.history[-1]["epsilon"].values())
    with pytest.raises(TrainError, match="strategy 'fedsgd'"):
        federated_fit(mlp(), roots, client=client, rounds=1, load=load_site, strategy="fedsgd")


def test_a_monai_unet_learns_the_synthetic_spheres_data_parallel(audit_buffer: Path):
    from medlib.train.examples import SyntheticSpheres, dice_loss, small_unet

    model = small_unet((4, 8))
    data = SyntheticSpheres(8, size=16)
    before = copy.deepcopy(model)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        result = fit(model, data, client=client, epochs=4, batch_size=4, loss=dice_loss,
                     optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), progress=False)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert not torch.equal(weights(result.model), weights(before))
