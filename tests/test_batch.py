"""Batch runs: notebooks submitted to the medhub-batch service run with papermill in a server of
their user; real IdP, hub, proxy, batch service and servers on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nbformat
import pytest

from conftest import once_answering
from medhub.batch.client import BatchClient, BatchError

NOTEBOOK_PARAMETERS = "x = 1\n"


def notebook(path: Path, *cells: str) -> Path:
    """A notebook whose first cell is the papermill ``parameters`` cell."""
    nb = nbformat.v4.new_notebook()
    first = nbformat.v4.new_code_cell(NOTEBOOK_PARAMETERS, metadata={"tags": ["parameters"]})
    nb.cells = [first, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.write_text(nbformat.writes(nb))
    return path


@pytest.fixture(scope="module")
def frank(platform):
    """frank (a student) logged in, with an API token of his own."""
    assert platform.login(platform.browser(), "frank").status_code == 200
    token = platform.api("POST", "/users/frank/tokens", json={"note": "batch test"}).json()["token"]
    client = BatchClient(platform.url, token)
    once_answering(client.jobs)
    return client, token


def cli(platform, token: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medhub.cli", *args, "--hub", platform.url, "--token", token],
                          capture_output=True, text=True, timeout=300)


def audit_actions(platform, job_id: str) -> list[tuple[str, str]]:
    """The job's audit events (the observer reads everyone's), as (action, outcome)."""
    response = httpx.get(f"{platform.url}/services/medhub-audit/events", params={"user": "frank"},
                         headers={"Authorization": f"token {platform.observer_token}"}, timeout=30)
    return [(e["action"], e["outcome"]) for e in response.json()["events"] if e["object"].get("job") == job_id]


def test_a_notebook_runs_with_its_parameters_in_a_server_of_its_user(platform, frank, tmp_path: Path):
    client, token = frank
    nb = notebook(tmp_path / "double.ipynb", "import os\ny = x * 2\nprint('y =', y, 'user =', os.environ['MEDHUB_USER'])")
    run = cli(platform, token, "submit", str(nb), "-p", "x", "21", "--profile", "teaching", "--dataset", "teaching-ct",
              "--wait")
    assert run.returncode == 0, run.stdout + run.stderr
    job_id = run.stdout.split()[1]
    job = client.job(job_id)
    assert job["status"] == "succeeded" and job["parameters"] == {"x": 21} and job["profile"] == "teaching"
    executed = nbformat.reads(client.output(job_id).decode(), as_version=4)
    text = "".join(o.get("text", "") for cell in executed.cells for o in cell.get("outputs", []))
    assert "y = 42 user = frank" in text  # computed from the parameter, as frank, in his own server
    assert platform.api("GET", "/users/frank").json()["servers"].get(job["server"]) is None  # removed afterwards
    assert cli(platform, token, "jobs").stdout.count(job_id) == 1
    out = tmp_path / "out.ipynb"
    assert cli(platform, token, "job", job_id, "--output", str(out)).returncode == 0 and "y = 42" in out.read_text()
    assert audit_actions(platform, job_id) == [("job-submit", "success"), ("job-end", "success")]


def test_a_failing_cell_fails_the_job_with_its_error(platform, frank, tmp_path: Path):
    client, _ = frank
    job = client.submit(notebook(tmp_path / "boom.ipynb", "raise ValueError(f'boom {x}')"), {"x": 7})
    job = client.wait(job["id"], timeout=180, every=0.5)
    assert job["status"] == "failed" and "ValueError: boom 7" in job["error"]
    assert audit_actions(platform, job["id"])[-1] == ("job-end", "failure")


def test_bad_submissions_are_refused(platform, frank, tmp_path: Path):
    client, _ = frank
    nb = notebook(tmp_path / "ok.ipynb", "pass")
    with pytest.raises(BatchError, match="not granted to you"):
        client.submit(nb, {}, datasets=["research-ct"])  # frank is a student
    with pytest.raises(BatchError, match="profile 'huge' is not offered"):
        client.submit(nb, {}, profile="huge")
    (tmp_path / "bad.ipynb").write_text("not json")
    with pytest.raises(BatchError, match="not a readable notebook"):
        client.submit(tmp_path / "bad.ipynb", {})
    with pytest.raises(BatchError, match="HTTP 403"):
        BatchClient(platform.url, "not-a-token").jobs()


def test_the_per_user_limit_queues_jobs_cancel_stops_them_and_jobs_outlive_a_hub_restart(platform, frank,
                                                                                         tmp_path: Path):
    client, _ = frank
    sleeper = notebook(tmp_path / "sleep.ipynb", "import time\ntime.sleep(600)")
    first = client.submit(sleeper, {})
    second = client.submit(notebook(tmp_path / "quick.ipynb", "z = x + 1\nprint('z =', z)"), {"x": 1})
    deadline = time.monotonic() + 120
    while client.job(first["id"])["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert client.job(first["id"])["status"] == "running"
    time.sleep(3)
    assert client.job(second["id"])["status"] == "queued"  # the limit (1 per user in these tests) holds it back
    platform.restart_hub()  # the batch service restarts with the hub and picks its jobs up again
    deadline = time.monotonic() + 60
    while True:
        try:
            assert client.job(first["id"])["status"] == "running"
            break
        except BatchError as e:  # until the restarted service listens and the hub answers it
            assert time.monotonic() < deadline, e
            time.sleep(0.5)
    cancelled = client.cancel(first["id"])
    assert cancelled["status"] == "cancelled"
    assert platform.api("GET", "/users/frank").json()["servers"].get(first["server"]) is None
    done = client.wait(second["id"], timeout=180, every=0.5)  # the queued job now runs
    assert done["status"] == "succeeded", done
    assert "z = 2" in client.output(second["id"]).decode()
    with pytest.raises(BatchError, match="already succeeded"):
        client.cancel(second["id"])
    injected = json.loads(client.output(second["id"]))["cells"][1]  # papermill's cell of the parameters given
    assert "injected-parameters" in injected["metadata"]["tags"] and "x = 1" in "".join(injected["source"])
