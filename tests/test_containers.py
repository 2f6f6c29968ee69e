"""Real containers: a user logs in through the real IdP and MedhubDockerSpawner starts their
server as a container of the notebook image; and the single-node production path, where the
hub itself runs as a container of the hub image (``medhub up``). Both images are built by
images/test-engine.sh on a local Docker engine (../shared/DOCKER.md). Skipped, saying why,
only where no engine runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import Platform, start_platform, stop_platform
from medhub import single_node

IMAGE = "medhub/notebook:test"
HUB_IMAGE = "medhub/hub:test"


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, check=check)


def engine_problem(*images: str) -> str | None:
    """Why the container tests cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker client: run images/test-engine.sh (make test does)"
    if docker("info", check=False).returncode != 0:
        return "no Docker engine answers: run images/test-engine.sh (make test does)"
    for image in images:
        if docker("image", "inspect", image, check=False).returncode != 0:
            return f"no {image} image: run images/test-engine.sh (make test does)"
    return None


@contextmanager
def spawning_containers(root: Path, home_volume: str, *images: str, **options) -> Iterator[Platform]:
    """The platform with servers as containers of IMAGE, homes in volumes ``<home_volume>-<user>``
    (removed afterwards); skipped, saying why, where no engine or no image is there."""
    problem = engine_problem(IMAGE, *images)
    if problem:
        pytest.skip(problem)
    p = start_platform(root, spawner="docker", **options, sections={
        "docker": {"image": IMAGE, "network": "host", "home_volume": home_volume + "-{username}"}})
    try:
        yield p
    finally:
        stop_platform(p)
        docker("volume", "rm", "-f", *(f"{home_volume}-{user}" for user in p.accounts), check=False)


@pytest.fixture(scope="module")
def docker_platform(tmp_path_factory):
    with spawning_containers(tmp_path_factory.mktemp("docker-platform"), "medhub-test-home") as p:
        yield p


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


@pytest.fixture(scope="module")
def hub_container_platform():
    # the hub runs as uid 999: its files must be readable by others (pytest's own tmp is root's only)
    root = Path(tempfile.mkdtemp(prefix="medhub-up-"))
    root.chmod(0o755)
    try:
        with spawning_containers(root, "medhub-test-up-home", HUB_IMAGE, hub_image=HUB_IMAGE) as p:
            yield p
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_medhub_up_runs_the_hub_and_its_services_in_an_unprivileged_container(hub_container_platform):
    p = hub_container_platform
    container = p.hub.container
    config = json.loads(docker("inspect", container).stdout)[0]
    assert config["Config"]["User"] == "999:100"  # the state folder's owner, not root
    assert config["HostConfig"]["NetworkMode"] == "host"
    binds = {b.split(":")[1]: b.split(":")[2] for b in config["HostConfig"]["Binds"]}
    assert binds[str(p.settings.hub.state_dir)] == "rw"
    for read_only in (p.settings.source, p.settings.hub.catalog, *(d.path for d in p.settings.datasets)):
        assert binds[str(read_only)] == "ro"
    programs = ("configurable-http-proxy", "jupyterhub", "medhub.audit.service", "medhub.batch.service",
                "jupyterhub_idle_culler")  # the culler, which listens nowhere, may start after up returned
    for _ in range(60):
        processes = docker("top", container, "-eo", "pid,uid,args").stdout.splitlines()[1:]
        if all(any(program in line for line in processes) for program in programs):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"not all of {programs} run in the hub's container: {processes}")
    assert {line.split()[1] for line in processes} == {"999"}  # nothing in it runs as root

    browser = p.browser()
    assert p.login(browser, "bob").status_code == 200
    p.spawn(browser, "bob", "cpu", timeout=180)  # a sibling container, through the engine's socket
    assert p.server_status(browser, "bob").status_code == 200
    assert docker("exec", "jupyter-bob", "ls", "/datasets").stdout.split() == ["teaching-ct"]
    assert p.api("GET", "/users/bob").json()["servers"][""]["ready"]  # the containerised hub's API

    # up again with the same settings keeps the running hub; a changed image would replace it
    assert single_node.up(p.settings, image=HUB_IMAGE, name=container) == "unchanged"
