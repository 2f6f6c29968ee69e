"""``medhub demo``: starts everything, logs a demo user in, stops on Ctrl-C, keeps its state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from medhub.processes import free_port
from medhub.demo import DEMO_DATASET
from medhub.idp import DEMO_ACCOUNTS
from medhub.idp.browser import scripted_login
from medhub.processes import url_answers


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


def test_demo_runs_logs_in_stops_and_keeps_state(tmp_path: Path):
    ports = {"public": free_port(), "hub": free_port(), "api": free_port(), "idp": free_port()}
    url = f"http://127.0.0.1:{ports['public']}"
    state = tmp_path / "demo"
    ada = next(a for a in DEMO_ACCOUNTS if a.username == "ada")

    proc = start_demo(state, ports)
    try:
        with httpx.Client(follow_redirects=True, timeout=30) as client:
            scripted_login(client, url, "ada", ada.password)
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
            scripted_login(client, url, "ada", ada.password)
            assert client.get(f"{url}/hub/api/user").json()["name"] == "ada"
    finally:
        stop_demo(proc, state)
    assert (state / "oidc_client_secret").read_text() == secret
    assert next(dataset.iterdir()).stat().st_mtime == first_mtime

    proc = start_demo(state, ports, "--reset")  # --reset starts clean
    stop_demo(proc, state)
    assert (state / "oidc_client_secret").read_text() != secret
