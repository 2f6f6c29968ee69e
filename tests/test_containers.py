"""Real containers: a user logs in through the real IdP and MedhubDockerSpawner starts their
server as a container of the notebook image; and the single-node production path, where the
hub itself runs as a container of the hub image (``medhub up``). Both images are built by
images/test-engine.sh on a local Docker engine (../shared/DOCKER.md). Skipped, saying why,
only where no engine runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import tomli_w

from conftest import Platform, start_platform, stop_platform
from medhub import docker_network, single_node
from medhub.errors import HubConfigError
from medhub.idp.browser import scripted_login, submit_spawn_form
from medhub.processes import free_port, url_answers
from medlib.synthetic import write_ct_series

IMAGE = "medhub/notebook:test"
HUB_IMAGE = "medhub/hub:test"


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, check=check)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``medhub ARGS``, as an administrator types it."""
    return subprocess.run([sys.executable, "-m", "medhub.cli", *args], capture_output=True, text=True, timeout=timeout)


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


#: The users' networks of the container tests, one a platform (made by medhub, removed
#: afterwards): the proxy serves on the gateway, so test traffic goes only to the host's end of a
#: network the test made.
NETWORK, SUBNET = "medhub-test-users", "172.29.238.0/24"
UP_NETWORK, UP_SUBNET = "medhub-test-up-users", "172.29.237.0/24"


@contextmanager
def spawning_containers(root: Path, home_volume: str, *images: str, network: str = NETWORK, subnet: str = SUBNET,
                        **options) -> Iterator[Platform]:
    """The platform with servers as containers of IMAGE on the users' network ``network``, homes
    in volumes ``<home_volume>-<user>`` (both removed afterwards); skipped, saying why, where no
    engine or no image is there."""
    problem = engine_problem(IMAGE, *images)
    if problem:
        pytest.skip(problem)
    p = start_platform(root, spawner="docker", insecure_http=True, public_host=docker_network.gateway(subnet),
                       **options, sections={"docker": {"image": IMAGE, "network": network, "subnet": subnet,
                                                       "home_volume": home_volume + "-{username}"}})
    try:
        yield p
    finally:
        stop_platform(p)
        docker("volume", "rm", "-f", *(f"{home_volume}-{user}" for user in p.accounts), check=False)
        docker("network", "rm", network, check=False)


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


#: Run in a container: open a TCP connection to argv[1]:argv[2]; print "open" or why not.
CONNECT = ("import socket, sys\n"
           "try:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close(); print('open')\n"
           "except OSError as e:\n print('closed', e)")


def test_users_containers_reach_the_hub_and_nothing_else_of_the_host_or_of_each_other(docker_platform):
    """The red team, on the network (issue 15, item 2): eve's code in her container tries to
    reach victor's Dask scheduler, the proxy's REST API and the audit writer's own port."""
    p = docker_platform
    for name in ("victor", "eve"):
        browser = p.browser()
        assert p.login(browser, name).status_code == 200
        p.spawn(browser, name, "cpu", timeout=180)
        assert p.server_status(browser, name).status_code == 200  # each reaches their own server
    victor_ip = json.loads(docker("inspect", "jupyter-victor").stdout)[0]["NetworkSettings"]["Networks"][NETWORK][
        "IPAddress"]
    docker("exec", "-d", "jupyter-victor", "python", "-c",
           "from distributed import LocalCluster; import time\n"
           "c = LocalCluster(host='0.0.0.0', scheduler_port=8786, n_workers=0, dashboard_address=None)\n"
           "time.sleep(300)")

    def connect(container: str, host: str, port: int) -> str:
        return docker("exec", container, "python", "-c", CONNECT, host, str(port), check=False).stdout.strip()

    for _ in range(60):  # the scheduler is up: victor's own container reaches it
        if connect("jupyter-victor", victor_ip, 8786) == "open":
            break
        time.sleep(0.5)
    assert connect("jupyter-victor", victor_ip, 8786) == "open"
    gateway, settings = docker_network.gateway(SUBNET), p.settings
    assert connect("jupyter-eve", victor_ip, 8786).startswith("closed")  # another user's scheduler
    assert connect("jupyter-eve", victor_ip, 8888).startswith("closed")  # ... and server
    assert connect("jupyter-eve", gateway, settings.hub.proxy_api_port).startswith("closed")  # the proxy's API
    assert connect("jupyter-eve", gateway, settings.audit.port).startswith("closed")  # the audit writer's port
    assert connect("jupyter-eve", gateway, settings.batch.port).startswith("closed")
    assert connect("jupyter-eve", gateway, settings.hub.hub_port) == "open"  # what a server needs: the hub's API
    audit = docker("exec", "jupyter-eve", "python", "-c",
                   "import os, urllib.request\n"
                   "r = urllib.request.Request(os.environ['MEDHUB_AUDIT_URL'], "
                   "headers={'Authorization': 'token ' + os.environ['JUPYTERHUB_API_TOKEN']})\n"
                   "print(urllib.request.urlopen(r, timeout=10).status)", check=False)
    assert audit.stdout.strip() == "200", audit.stderr  # ... and the services, through the proxy's public port
    config = json.loads(docker("inspect", "jupyter-eve").stdout)[0]["HostConfig"]
    assert config["NetworkMode"] == NETWORK and config["PidsLimit"] == settings.docker.pids_limit
    for name in ("victor", "eve"):
        p.api("DELETE", f"/users/{name}/server")


def test_the_users_network_is_made_without_traffic_between_containers_and_a_lax_one_is_refused():
    problem = engine_problem()
    if problem:
        pytest.skip(problem)
    name, subnet = "medhub-test-netcheck", "172.29.239.0/24"
    docker("network", "rm", name, check=False)
    try:
        assert docker_network.ensure(name, subnet) == "172.29.239.1"
        made = json.loads(docker("network", "inspect", name).stdout)[0]
        assert made["Options"][docker_network.ICC] == "false" and made["IPAM"]["Config"][0]["Subnet"] == subnet
        assert docker_network.ensure(name, subnet) == "172.29.239.1"  # there already: kept
        with pytest.raises(HubConfigError, match="has subnet 172.29.239.0/24, not docker.subnet 172.29.240.0/24"):
            docker_network.ensure(name, "172.29.240.0/24")
        docker("network", "rm", name)
        docker("network", "create", "--subnet", subnet, name)  # Docker's default: containers reach each other
        with pytest.raises(HubConfigError, match="lets its containers reach each other"):
            docker_network.ensure(name, subnet)
    finally:
        docker("network", "rm", name, check=False)


@pytest.fixture(scope="module")
def hub_container_platform():
    # the hub runs as uid 999: its files must be readable by others (pytest's own tmp is root's only)
    root = Path(tempfile.mkdtemp(prefix="medhub-up-"))
    root.chmod(0o755)
    try:
        with spawning_containers(root, "medhub-test-up-home", HUB_IMAGE, network=UP_NETWORK, subnet=UP_SUBNET,
                                 hub_image=HUB_IMAGE) as p:
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
    gateway = docker_network.gateway(UP_SUBNET)  # bob's container reaches the hub's API, nothing else of it
    reach = {port: docker("exec", "jupyter-bob", "python", "-c", CONNECT, gateway, str(port)).stdout.split()[0]
             for port in (p.settings.hub.hub_port, p.settings.hub.proxy_api_port, p.settings.audit.port,
                          p.settings.batch.port)}
    assert reach == {p.settings.hub.hub_port: "open", p.settings.hub.proxy_api_port: "closed",
                     p.settings.audit.port: "closed", p.settings.batch.port: "closed"}
    assert p.api("GET", "/users/bob").json()["servers"][""]["ready"]  # the containerised hub's API

    # up again with the same settings keeps the running hub; a changed image would replace it
    assert single_node.up(p.settings, image=HUB_IMAGE, name=container) == "unchanged"


def test_the_hub_image_runs_the_charts_hub_configuration(tmp_path: Path):
    """The hub image on Kubernetes: Zero to JupyterHub's own jupyterhub_config.py, with the
    values of images/k8s (the example), runs in it as in the chart's hub pod (no network), and
    every trait it sets exists in the image's JupyterHub, OAuthenticator and KubeSpawner; the
    hub it configures is the one the same values give here (tests/test_k8s.py)."""
    problem = engine_problem(HUB_IMAGE)
    if problem:
        pytest.skip(problem)
    from test_k8s import HUB_TRAITS, JUPYTERHUB_CHART, comparable_services, hub_traits

    examples = Path(__file__).parents[1] / "images" / "k8s"
    root, srv = tmp_path / "etc-jupyterhub", tmp_path / "srv-jupyterhub"
    for folder in (root, srv):
        folder.mkdir()
        folder.chmod(0o777)
    done = docker("run", "--rm", "--network", "none", "--entrypoint", "python",
                  "-e", "MEDHUB_TEST_SECRET_OIDC_CLIENT_SECRET=s",
                  "-v", f"{HUB_TRAITS}:/test/hub_traits.py:ro", "-v", f"{JUPYTERHUB_CHART}:/charts/{JUPYTERHUB_CHART.name}:ro",
                  "-v", f"{examples / 'values.yaml'}:/values.yaml:ro",
                  "-v", f"{root}:/usr/local/etc/jupyterhub", "-v", f"{srv}:/srv/jupyterhub",
                  HUB_IMAGE, "/test/hub_traits.py", "chart", f"/charts/{JUPYTERHUB_CHART.name}", "/values.yaml", "/usr/local/etc/jupyterhub",
                  check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    image = json.loads(done.stdout)
    assert image["missing"] == []
    assert image["classes"]["Spawner"] == "kubespawner.spawner.KubeSpawner"
    assert "extra_user_scopes" in image["JupyterHub"] and image["Authenticator"]["auth_refresh_strict"]
    assert (srv / "medhub" / "batch" / "config.json").is_file()  # the state folder on the hub's volume

    here = tmp_path / "here"
    here.mkdir()
    text = (examples / "values.yaml").read_text().replace("/srv/jupyterhub/medhub", str(here / "state"))
    (here / "values.yaml").write_text(text)
    local = hub_traits("chart", str(JUPYTERHUB_CHART), str(here / "values.yaml"), str(here / "root"),
                       env={"MEDHUB_TEST_SECRET_OIDC_CLIENT_SECRET": "s"})
    assert image["Authenticator"] == local["Authenticator"]
    assert comparable_services(image["JupyterHub"]["services"]) == comparable_services(local["JupyterHub"]["services"])


#: The single-node example's own users' network (made by medhub up, removed afterwards).
NODE_NETWORK, NODE_SUBNET = "medhub-test-node-users", "172.29.236.0/24"
EXAMPLE = Path(__file__).parents[1] / "images" / "single-node"


def wait_for(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not url_answers(url):
        assert time.monotonic() < deadline, f"{url} did not answer in {timeout} s"
        time.sleep(0.3)


def test_the_single_node_example_runs_with_medhub_up_and_the_development_idp_alone():
    """images/single-node as an administrator follows it: its settings and catalog (paths moved
    to a temporary folder; the test's own IdP, images and network, plain http on the network's
    gateway), prepare.sh for owners and modes, `medhub idp` for the identity provider, `medhub
    up`; a user signs in and starts a server; the hub's log is the container's; `medhub down`
    leaves no volume behind."""
    problem = engine_problem(IMAGE, HUB_IMAGE)
    if problem:
        pytest.skip(problem)
    root = Path(tempfile.mkdtemp(prefix="medhub-node-"))
    root.chmod(0o755)  # the hub (uid 999) walks down to its files
    etc, state, data = root / "etc-medhub", root / "var-lib-medhub", root / "srv-medhub-datasets"
    etc.mkdir()
    shutil.copy(EXAMPLE / "prepare.sh", etc)
    public_url = f"http://{docker_network.gateway(NODE_SUBNET)}:{free_port()}"
    settings = tomllib.loads((EXAMPLE / "medhub.toml").read_text().replace("/etc/medhub", str(etc))
                             .replace("/var/lib/medhub", str(state)))
    hub = settings["hub"]
    del hub["tls_cert"], hub["tls_key"]
    hub.update(public_url=public_url, insecure_http=True, hub_port=free_port(), proxy_api_port=free_port())
    settings["docker"].update(image=IMAGE, hub_image=HUB_IMAGE, network=NODE_NETWORK, subnet=NODE_SUBNET,
                              home_volume="medhub-test-node-home-{username}")
    idp_port = free_port()
    settings["oidc"]["issuer"] = f"http://127.0.0.1:{idp_port}"
    for service in ("audit", "batch", "ingest"):
        settings[service] = {"port": free_port()}
    (etc / "medhub.toml").write_text(tomli_w.dumps(settings))
    (etc / "datasets.toml").write_text((EXAMPLE / "datasets.toml").read_text().replace("/srv/medhub/datasets", str(data)))
    write_ct_series(data / "phantom-ct" / "series-001", shape=(4, 16, 16))
    assert cli("catalog", "manifest", str(data / "phantom-ct")).returncode == 0

    idp = subprocess.Popen([sys.executable, "-m", "medhub.cli", "idp", "--accounts", str(EXAMPLE / "accounts.toml"),
                            "--redirect-url", f"{public_url}/hub/oauth_callback", "--port", str(idp_port),
                            "--state", str(root / "idp")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    container, volumes = "medhub-test-node", set(docker("volume", "ls", "-q").stdout.split())
    try:
        wait_for(f"http://127.0.0.1:{idp_port}/.well-known/openid-configuration")
        shutil.copy(root / "idp" / "oidc_client_secret", etc / "oidc-client-secret")
        prepared = subprocess.run([str(etc / "prepare.sh")], capture_output=True, text=True,
                                  env={**os.environ, "ETC": str(etc), "STATE": str(state), "DATASETS": str(data)})
        assert prepared.returncode == 0, prepared.stderr
        assert (state.stat().st_uid, state.stat().st_mode & 0o777) == (999, 0o700)
        assert oct((etc / "oidc-client-secret").stat().st_mode & 0o777) == "0o640"

        up = cli("up", "--settings", str(etc / "medhub.toml"), "--name", container, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        client = httpx.Client(timeout=30, follow_redirects=True)
        assert scripted_login(client, public_url, "sam", "change-me-sam").status_code == 200
        assert submit_spawn_form(client, public_url, "sam", "cpu")
        deadline = time.monotonic() + 180
        while not (lab := client.get(f"{public_url}/user/sam/lab")).url.path.startswith("/user/sam/lab"):
            assert time.monotonic() < deadline, docker("logs", "--tail", "40", container).stdout
            time.sleep(1)  # the hub's pending page, until the server is up
        assert lab.status_code == 200 and client.get(f"{public_url}/user/sam/api/status").status_code == 200
        server = json.loads(docker("inspect", "jupyter-sam").stdout)[0]
        assert server["HostConfig"]["ShmSize"] == 2 * 1024**3  # the cpu profile's shm_size, not Docker's 64 MB
        assert docker("exec", "jupyter-sam", "ls", "/datasets").stdout.split() == ["phantom-ct"]
        logs = docker("logs", container)
        assert "JupyterHub is now running" in logs.stdout + logs.stderr  # the hub's own log, not two lines
        client.close()
    finally:
        down = cli("down", "--settings", str(etc / "medhub.toml"), "--name", container)
        docker("rm", "-f", "jupyter-sam", check=False)
        idp.terminate()
        idp.wait(10)
        left = set(docker("volume", "ls", "-q").stdout.split()) - volumes
        docker("volume", "rm", "-f", *left, check=False)
        docker("network", "rm", NODE_NETWORK, check=False)
        shutil.rmtree(root, ignore_errors=True)
    assert down.returncode == 0, down.stderr
    assert left == {"medhub-test-node-home-sam"}  # the user's home, and no anonymous volume of the hub's
