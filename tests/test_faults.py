"""Faults: the IdP down, a misconfigured issuer or client, a hub restart, a killed hub."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import tomli_w
import tomllib

from conftest import Platform, start_platform, stop_platform
from medhub.audit.hooks import AUDIT_SERVICE
from medhub.config import CULLER_SERVICE
from medhub.processes import free_port
from medlib import contract

MANAGED = {AUDIT_SERVICE, contract.BATCH_SERVICE, contract.INGEST_SERVICE, contract.ACCESS_SERVICE, CULLER_SERVICE}


def medhub(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medhub.cli", *args], capture_output=True, text=True, timeout=60)


def settings_variant(platform: Platform, tmp_path: Path, section: str, **changes) -> Path:
    data = tomllib.loads(platform.settings.source.read_text())
    data[section].update(changes)
    data["hub"]["state_dir"] = str(tmp_path / "state")
    path = tmp_path / "medhub.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def test_hub_runs_and_says_so_when_the_idp_is_unreachable(tmp_path: Path):
    down = f"http://127.0.0.1:{free_port()}"
    p = start_platform(tmp_path, issuer=down)
    try:
        assert httpx.get(f"{p.url}/hub/health").status_code == 200
        with httpx.Client(follow_redirects=True) as client:
            r = client.get(f"{p.url}/hub/oauth_login")
        assert str(r.url).startswith(f"{p.url}/hub/login")
        assert 'id="idp-unavailable"' in r.text
        assert "identity provider" in r.text and "is unavailable" in r.text
        check = medhub("check", "--settings", str(p.settings.source))
        assert check.returncode == 3
        assert "did not answer" in check.stdout
    finally:
        stop_platform(p)


def test_the_hubs_services_stop_when_the_hub_is_killed(tmp_path: Path):
    p = start_platform(tmp_path, issuer=f"http://127.0.0.1:{free_port()}")
    try:
        services = hub_services(p)
        psutil.Process(p.hub.proc.pid).kill()  # no chance to stop anything
        gone, alive = psutil.wait_procs(services, timeout=15)
        assert not alive, f"orphaned services: {[s.cmdline() for s in alive]}"
    finally:
        p.stack.stop()


def test_the_hubs_services_heed_sigint_when_the_hub_was_started_in_the_background(tmp_path: Path):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `medhub run &` or nohup leave it
    try:
        p = start_platform(tmp_path, issuer=f"http://127.0.0.1:{free_port()}")
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        services = hub_services(p)
        deadline = time.monotonic() + 30
        while any(map(ignores_sigint, services)) and time.monotonic() < deadline:  # still starting
            time.sleep(0.2)
        for service in services:  # how JupyterHub stops them (SIGTERM follows only 30 s later)
            with contextlib.suppress(psutil.NoSuchProcess):
                service.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 20
        while (alive := [s for s in services if running(s)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive, f"services ignoring SIGINT: {[s.cmdline() for s in alive]}"
    finally:
        p.stack.stop()


def hub_services(p: Platform) -> list[psutil.Process]:
    """The processes of the hub's managed services (every service the hub runs a command for:
    audit, batch, ingest, access, culler), once the hub has started all of them."""
    hub = psutil.Process(p.hub.proc.pid)
    deadline = time.monotonic() + 60
    while True:
        managed = {name: model["pid"] for name, model in p.api("GET", "/services").json().items() if model["command"]}
        children = {child.pid: child for child in hub.children()}
        if all(pid in children for pid in managed.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert set(managed) == MANAGED, managed
    assert all(pid in children for pid in managed.values()), f"not running as the hub's children: {managed}"
    return [children[pid] for pid in managed.values()]


def ignores_sigint(process: psutil.Process) -> bool:
    status = Path(f"/proc/{process.pid}/status").read_text()
    ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    return bool(ignored & 1 << (signal.SIGINT - 1))


def running(process: psutil.Process) -> bool:
    """Alive: neither gone nor exited (a zombie until its parent, the hub, reaps it)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize(
    "section, changes, named",
    [
        ("oidc", {"issuer": "WRONG_PATH"}, "oidc.issuer"),
        ("oidc", {"client_secret": "not-the-secret"}, "oidc.client_id / oidc.client_secret"),
        ("oidc", {"client_id": "nobody-registered-me"}, "oidc.client_id / oidc.client_secret"),
        ("oidc", {"scopes": ["openid", "teleport"]}, "oidc.scopes"),
        ("oidc", {"issuer": "http://idp.example.org"}, "oidc.issuer"),
        ("hub", {"spawner": "kubernetes"}, "hub.spawner"),
        ("oidc", {"alowed_groups": ["typo"]}, "alowed_groups"),
    ],
)
def test_misconfiguration_stops_medhub_naming_the_setting(platform: Platform, tmp_path: Path, section, changes, named):
    if changes.get("issuer") == "WRONG_PATH":
        changes = {"issuer": platform.idp.issuer + "/realms/nope"}
    path = settings_variant(platform, tmp_path, section, **changes)
    result = medhub("run", "--settings", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert named in result.stderr
    assert "configuration error" in result.stderr


def test_hub_restart_keeps_servers_and_sessions(platform: Platform):
    client = platform.browser()
    platform.login(client, "dave")
    if not platform.api("GET", "/users/dave").json()["servers"]:
        platform.spawn(client, "dave")
    pid = platform.api("GET", "/users/dave").json()["servers"][""]["state"]["pid"]
    assert platform.server_status(client, "dave").status_code == 200

    platform.restart_hub()

    assert os.path.exists(f"/proc/{pid}"), "the server died with the hub"
    assert client.get(f"{platform.url}/hub/api/user").json()["name"] == "dave"  # session kept
    assert client.get(f"{platform.url}/user/dave/api/status").status_code == 200
    server = platform.api("GET", "/users/dave").json()["servers"][""]
    assert server["ready"] and server["state"]["pid"] == pid


def test_idp_outage_does_not_stop_logged_in_users(tmp_path: Path):
    p = start_platform(tmp_path)
    try:
        client = p.browser()
        p.login(client, "bob")
        p.spawn(client, "bob")
        assert p.server_status(client, "bob").status_code == 200

        idp = p.stack.processes[0]
        assert idp.name == "identity provider"
        idp.stop()
        time.sleep(p.settings.oidc.refresh_age + 1)  # the next request tries to refresh bob's tokens

        assert client.get(f"{p.url}/hub/api/user").json()["name"] == "bob"
        assert client.get(f"{p.url}/user/bob/api/status").status_code == 200
        # bob can even restart his server (the pre-spawn refresh fails and is tolerated)
        p.api("DELETE", "/users/bob/server").raise_for_status()
        while p.api("GET", "/users/bob").json()["servers"]:
            time.sleep(0.3)
        p.spawn(client, "bob")
        # while a newcomer is told why they cannot log in
        with httpx.Client(follow_redirects=True) as newcomer:
            page = newcomer.get(f"{p.url}/hub/oauth_login")
        assert 'id="idp-unavailable"' in page.text
    finally:
        stop_platform(p)
