"""``medhub demo``: starts everything, logs a demo user in, stops on Ctrl-C, keeps its state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nbformat

from conftest import once_answering
from medhub.batch.client import BatchClient
from medhub.demo import DEMO_DATASET
from medhub.idp import DEMO_ACCOUNTS
from medhub.idp.browser import scripted_login
from medhub.processes import free_port, url_answers
from medlib import notebooks
from medlib.contract import JobState

#: What each teaching notebook runs with on the demo, and a line its executed copy must show.
NOTEBOOK_RUNS = {
    "1-welcome.ipynb": ({}, f"{DEMO_DATASET}: 12 series; the first is (16, 64, 64) voxels"),
    "2-deidentify.ipynb": ({}, "PatientIdentityRemoved: YES"),
    "3-radiomics.ipynb": ({}, "ROI: "),
    "4-train-unet.ipynb": ({"epochs": 2}, "predicted "),
    "5-batch-job.ipynb": ({"parameters": {"epochs": 1, "workers": 1}}, "job "),
    "6-quality.ipynb": ({}, "drifted batch: ['image:noise'"),
    "7-drift-watch.ipynb": ({}, "0 variable(s) drifted"),
}


ADA = next(a for a in DEMO_ACCOUNTS if a.username == "ada")


def demo_ports() -> tuple[dict[str, int], str]:
    """Free ports for a demo, and the public URL it will serve."""
    ports = {"public": free_port(), "hub": free_port(), "api": free_port(), "idp": free_port()}
    return ports, f"http://127.0.0.1:{ports['public']}"


def start_demo(state: Path, ports: dict[str, int], *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "medhub.cli", "demo", "--state", str(state), "--port", str(ports["public"]),
            "--hub-port", str(ports["hub"]), "--proxy-api-port", str(ports["api"]), "--idp-port", str(ports["idp"]),
            *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "Press Ctrl-C to stop everything" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("demo did not start:\n" + "".join(lines))


def stop_demo(proc: subprocess.Popen, state: Path) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        kill_everything_in(state)  # a demo that does not stop must not hold its ports for later runs
        raise
    assert proc.returncode == 0, out
    return out


def kill_everything_in(state: Path) -> None:
    """SIGKILL every process working in ``state`` (the demo's hub, proxy, IdP and services) and the demo."""
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cwd.startswith(str(state)) or str(state).encode() in argv:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def printed(executed: bytes) -> str:
    """What a notebook's cells printed and showed (as text)."""
    nb = nbformat.reads(executed.decode(), as_version=4)
    return "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                   for cell in nb.cells for o in cell.get("outputs", []))


def test_every_teaching_notebook_runs_end_to_end_on_the_demo(tmp_path: Path):
    """medlib/notebooks, as ada runs them on `medhub demo`: each as a batch job (papermill, in a
    server of hers), with the demo's dataset; the batch notebook's own job too."""
    ports, url = demo_ports()
    state = tmp_path / "demo"
    proc = start_demo(state, ports)
    try:
        with httpx.Client(follow_redirects=True, timeout=30) as client:
            scripted_login(client, url, "ada", ADA.password)
            made = client.post(f"{url}/hub/api/users/ada/tokens", json={"note": "teaching notebooks"},
                               headers={"X-XSRFToken": client.cookies.get("_xsrf", path="/hub/")})
            assert made.status_code == 201, made.text
        jobs = BatchClient(url, made.json()["token"])
        once_answering(jobs.jobs)
        assert notebooks.names() == sorted(NOTEBOOK_RUNS)
        for name, (parameters, shown) in NOTEBOOK_RUNS.items():
            job = jobs.wait(jobs.submit(notebooks.path(name), parameters, profile="cpu")["id"], timeout=600)
            assert job["status"] == JobState.SUCCEEDED, f"{name}: {job}\n{jobs.log(job['id'])[-3000:]}"
            output = printed(jobs.output(job["id"]))
            assert shown in output, f"{name}: {output[-2000:]}"
        # the batch notebook submitted the training notebook as a job of ada's: it runs too
        (nested,) = [j for j in jobs.jobs() if j["name"] == "4-train-unet.ipynb" and j["parameters"].get("epochs") == 1]
        assert jobs.wait(nested["id"], timeout=600)["status"] == JobState.SUCCEEDED
        # the scheduled drift check fails its job on the drifted batch the quality notebook made
        watch = jobs.wait(jobs.submit(notebooks.path("7-drift-watch.ipynb"), {"folder": "qa/drifted-batch"},
                                      profile="cpu")["id"], timeout=600)
        assert watch["status"] == JobState.FAILED and "DriftDetected" in watch["error"] and "image:noise" in watch["error"], watch
    finally:
        stop_demo(proc, state)


def test_demo_runs_logs_in_stops_and_keeps_state(tmp_path: Path):
    ports, url = demo_ports()
    state = tmp_path / "demo"

    proc = start_demo(state, ports)
    try:
        with httpx.Client(follow_redirects=True, timeout=30) as client:
            scripted_login(client, url, "ada", ADA.password)
            me = client.get(f"{url}/hub/api/user").json()
        assert me["name"] == "ada" and me["admin"] is True
        assert sorted(me["groups"]) == ["course-instructors", "radiology-research"]
    finally:
        stop_demo(proc, state)
    # Ctrl-C stopped everything it started
    for port in ports.values():
        assert not url_answers(f"http://127.0.0.1:{port}/", timeout=1)

    dataset = state / "datasets" / DEMO_DATASET / "series-001"
    assert len(list(dataset.glob("*.dcm"))) == 16
    secret = (state / "oidc_client_secret").read_text()
    first_mtime = next(dataset.iterdir()).stat().st_mtime

    proc = start_demo(state, ports)  # a second run reuses the state
    try:
        with httpx.Client(follow_redirects=True, timeout=30) as client:
            scripted_login(client, url, "ada", ADA.password)
            assert client.get(f"{url}/hub/api/user").json()["name"] == "ada"
    finally:
        stop_demo(proc, state)
    assert (state / "oidc_client_secret").read_text() == secret
    assert next(dataset.iterdir()).stat().st_mtime == first_mtime

    proc = start_demo(state, ports, "--reset")  # --reset starts clean
    stop_demo(proc, state)
    assert (state / "oidc_client_secret").read_text() != secret
