"""Real containers: a user logs in through the real IdP and MedhubDockerSpawner starts their
server as a container of the notebook image (built by images/test-engine.sh on a local Docker
engine, ../shared/DOCKER.md). Skipped, saying why, only where no engine runs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import start_platform, stop_platform

IMAGE = "medhub/notebook:test"


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, check=check)


def engine_problem() -> str | None:
    """Why the container tests cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker client: run images/test-engine.sh (make test does)"
    if docker("info", check=False).returncode != 0:
        return "no Docker engine answers: run images/test-engine.sh (make test does)"
    if docker("image", "inspect", IMAGE, check=False).returncode != 0:
        return f"no {IMAGE} image: run images/test-engine.sh (make test does)"
    return None


@pytest.fixture(scope="module")
def docker_platform(tmp_path_factory):
    problem = engine_problem()
    if problem:
        pytest.skip(problem)
    p = start_platform(tmp_path_factory.mktemp("docker-platform"), spawner="docker",
                       sections={"docker": {"image": IMAGE, "network": "host",
                                            "home_volume": "medhub-test-home-{username}"}})
    try:
        yield p
    finally:
        stop_platform(p)
        docker("volume", "rm", "-f", "medhub-test-home-alice", check=False)


def test_a_server_is_an_unprivileged_container_with_only_its_grants(docker_platform):
    p = docker_platform
    browser = p.browser()
    assert p.login(browser, "alice").status_code == 200
    p.spawn(browser, "alice", "cpu", timeout=180)
    assert p.server_status(browser, "alice").status_code == 200
    name = "jupyter-alice"

    def inside(*command: str) -> subprocess.CompletedProcess:
        return docker("exec", name, *command, check=False)

    assert inside("id", "-u").stdout.strip() == "1000"  # not root
    assert sorted(inside("ls", "/datasets").stdout.split()) == ["research-ct", "teaching-ct"]  # alice's grants only
    assert inside("touch", "/datasets/research-ct/written").returncode != 0  # read-only
    assert inside("sh", "-c", "ls /datasets/research-ct/series-001 | head -1").stdout.strip()  # readable
    mounts = json.loads(docker("inspect", name).stdout)[0]["Mounts"]
    sources = {m.get("Name") or m["Source"]: (m["Destination"], m["RW"]) for m in mounts}
    datasets = Path(p.root) / "datasets"
    assert sources == {  # the home volume and the grants: no other host path
        "medhub-test-home-alice": ("/home/jovyan", True),
        str(datasets / "research-ct"): ("/datasets/research-ct", False),
        str(datasets / "teaching-ct"): ("/datasets/teaching-ct", False),
    }
    assert inside("sh", "-c", "echo kept > /home/jovyan/note.txt").returncode == 0

    assert p.api("DELETE", "/users/alice/server").status_code in (202, 204)
    deadline_ok = False
    for _ in range(60):
        if docker("ps", "-a", "--filter", f"name=^{name}$", "--format", "{{.Names}}").stdout.strip() == "":
            deadline_ok = True
            break
        subprocess.run(["sleep", "0.5"])
    assert deadline_ok, "the stopped server's container was not removed"
    assert docker("volume", "inspect", "medhub-test-home-alice", check=False).returncode == 0  # the home stays
    kept = docker("run", "--rm", "--network", "none", "-v", "medhub-test-home-alice:/h", IMAGE, "cat", "/h/note.txt")
    assert kept.stdout.strip() == "kept"
