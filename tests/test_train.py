"""medlib.train on real Dask clusters (worker processes on 127.0.0.1): DDP equivalence, checkpoints
and resume. (Federated training across sites runs on NVIDIA FLARE: tests/test_federated.py.)"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import cloudpickle
import pytest
import torch
from distributed import Client, LocalCluster

from medlib.train import TrainError, fit
from medlib.train.ddp import global_batches

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
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, \
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


def test_a_monai_unet_learns_the_synthetic_spheres_data_parallel(audit_buffer: Path):
    from medlib.train.examples import SyntheticSpheres, dice_loss, small_unet

    model = small_unet((4, 8))
    data = SyntheticSpheres(8, size=16)
    before = copy.deepcopy(model)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, \
            Client(cluster) as client:
        result = fit(model, data, client=client, epochs=4, batch_size=4, loss=dice_loss,
                     optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), progress=False)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert not torch.equal(weights(result.model), weights(before))
