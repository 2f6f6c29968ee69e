"""What a spawned server gets: identity, profile, dataset grants, and no secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Platform
from medhub.gpus import node_devices


def server_environ(platform: Platform, username: str) -> dict[str, str]:
    """The environment of ``username``'s running server process, read from /proc."""
    server = platform.api("GET", f"/users/{username}").json()["servers"][""]
    pid = server["state"]["pid"]
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


@pytest.fixture(scope="module")
def alice(platform: Platform) -> dict[str, str]:
    client = platform.browser()
    platform.login(client, "alice")
    platform.spawn(client, "alice", profile="cpu")
    return server_environ(platform, "alice")


def test_server_knows_its_owner_groups_and_profile(alice: dict[str, str]):
    assert alice["MEDHUB_USER"] == "alice"
    assert alice["MEDHUB_GROUPS"] == "course-instructors,radiology-research"
    assert alice["MEDHUB_PROFILE"] == "cpu"
    assert alice["CUDA_VISIBLE_DEVICES"] == ""  # the CPU profile hides every GPU
    assert alice["MEM_LIMIT"] == str(8 * 1024**3)
    assert alice["CPU_LIMIT"] == "2.0"


def test_medlib_reads_the_identity_inside_the_server(alice: dict[str, str]):
    out = subprocess.run([sys.executable, "-m", "medlib.cli", "whoami", "--json"], env=alice,
                         capture_output=True, text=True, check=True)
    identity = json.loads(out.stdout)
    assert identity["user"] == "alice"
    assert identity["groups"] == ["course-instructors", "radiology-research"]


def test_no_idp_secret_or_token_enters_the_server(platform: Platform, alice: dict[str, str]):
    auth_state = platform.api("GET", "/users/alice").json()["auth_state"]
    environ = "\0".join(f"{k}={v}" for k, v in alice.items())
    secrets = {
        "client secret": platform.settings.oidc.client_secret,
        "refresh token": auth_state["refresh_token"],
        "IdP access token": auth_state["access_token"],
        "id_token": auth_state["id_token"],
        "crypt key": (platform.settings.hub.state_dir / "jupyterhub_crypt_key").read_text().strip(),
        "proxy token": (platform.settings.hub.state_dir / "proxy_auth_token").read_text().strip(),
    }
    for what, value in secrets.items():
        assert value not in environ, f"the {what} leaked into the server's environment"
    # the only token is the server's own hub API token
    assert alice["JUPYTERHUB_API_TOKEN"]


def test_server_sees_exactly_its_granted_datasets(platform: Platform, alice: dict[str, str]):
    view = Path(alice["MEDHUB_DATASETS_DIR"])
    assert sorted(p.name for p in view.iterdir()) == ["research-ct", "teaching-ct"]
    assert (view / "research-ct" / "series-001" / "CT000001.dcm").is_file()


def test_server_serves_its_users_grants_and_the_medlib_kernel(platform: Platform, alice: dict[str, str]):
    client = platform.browser()
    platform.login(client, "alice")
    assert platform.server_status(client, "alice").status_code == 200
    grants = client.get(f"{platform.url}/user/alice/medlib/datasets")
    assert grants.status_code == 200, grants.text
    datasets = {d["id"]: d for d in grants.json()["datasets"]}
    assert sorted(datasets) == ["research-ct", "teaching-ct"]
    assert datasets["research-ct"]["jsonld"]["@type"] == "Dataset"
    assert datasets["research-ct"]["path"] == str(Path(alice["MEDHUB_DATASETS_DIR"]) / "research-ct")
    specs = client.get(f"{platform.url}/user/alice/api/kernelspecs").json()["kernelspecs"]
    assert specs["medlib"]["spec"]["display_name"] == "Python 3 (medlib)"
    other = platform.browser()  # another user never reaches alice's server
    platform.login(other, "dave")
    refused = other.get(f"{platform.url}/user/alice/medlib/datasets", follow_redirects=True)
    assert refused.status_code in (403, 404) and "research-ct" not in refused.text


def test_per_user_home_and_grants_for_a_student(platform: Platform):
    client = platform.browser()
    platform.login(client, "dave")
    if not platform.api("GET", "/users/dave").json()["servers"]:
        platform.spawn(client, "dave")
    env = server_environ(platform, "dave")
    assert sorted(p.name for p in Path(env["MEDHUB_DATASETS_DIR"]).iterdir()) == ["teaching-ct"]
    assert env["HOME"] == str(platform.settings.local.home_root / "dave")
    assert Path(env["HOME"]).is_dir()


def test_gpu_profile_and_unknown_profile(platform: Platform):
    client = platform.browser()
    platform.login(client, "carol")
    bad = platform.api("POST", "/users/carol/server", json={"profile": "quantum"})
    assert bad.status_code == 400
    assert "There is no profile 'quantum' for you" in bad.json()["message"]
    gpu = platform.api("POST", "/users/carol/server", json={"profile": "gpu1"})
    if node_devices():  # a machine with GPUs: the server gets the first
        assert gpu.status_code in (201, 202), gpu.text
        platform.wait_ready("carol")
        assert server_environ(platform, "carol")["CUDA_VISIBLE_DEVICES"] == "0"
        platform.api("DELETE", "/users/carol/server")
    else:  # this one has none: refused, saying so (the GPU path itself: the next test)
        assert gpu.status_code == 409 and "this node has no GPU" in gpu.json()["message"]
    assert platform.api("GET", "/users/carol").json()["servers"] == {}


def test_a_local_server_sees_the_gpus_of_its_profile(tmp_path):
    """CUDA_VISIBLE_DEVICES from the profile, on a node whose inventory (a fake here) has two GPUs."""
    import asyncio

    from jupyterhub import orm
    from jupyterhub.objects import Hub
    from jupyterhub.user import User

    from medhub.settings import DEFAULT_PROFILES
    from medhub.spawner import MedhubLocalSpawner

    db = orm.new_session_factory("sqlite://")()
    user = orm.User(name="carol")
    spawner_row = orm.Spawner(user=user, name="")
    db.add_all([user, spawner_row])
    db.commit()
    spawner = MedhubLocalSpawner(user=User(user, {"db": db}), orm_spawner=spawner_row, hub=Hub(),
                                 profiles=[p.model_dump() for p in DEFAULT_PROFILES], datasets_view_root=str(tmp_path),
                                 gpu_devices=lambda _: ["nvidia0", "nvidia1"])
    for slug, visible in (("gpu1", "0"), ("cpu", ""), ("gpu-all", None)):
        asyncio.run(spawner.apply_profile({"profile": slug}))
        assert spawner.get_env().get("CUDA_VISIBLE_DEVICES") == visible, slug


def test_idle_culler_runs_as_a_hub_service(platform: Platform):
    services = platform.api("GET", "/services").json()
    culler = services["idle-culler"]
    assert "--timeout=3600" in culler["command"]
    assert culler["pid"] and os.path.exists(f"/proc/{culler['pid']}")
