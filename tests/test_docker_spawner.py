"""The Docker spawner's container configuration: GPUs, limits, mounts and environment.

Starting real containers is issue 9's end-to-end test; here the spawner is a real
MedhubDockerSpawner for a real JupyterHub user, and the checks are on what it would send. The
node's GPUs come from a fake inventory (``gpu_devices``); the real GPU-less machine is
tests/test_first_hour.py's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from docker.types import DeviceRequest
from jupyterhub import orm
from jupyterhub.objects import Hub
from jupyterhub.user import User

from tornado import web

from medhub.gpus import GPUs, engine_devices, node_devices
from medhub.settings import DEFAULT_PROFILES
from medhub.spawner import MedhubDockerSpawner, cuda_visible_devices, docker_device_requests

PROFILES = [p.model_dump() for p in DEFAULT_PROFILES]
TWO_GPUS = ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]


def apply(spawner: MedhubDockerSpawner, options: dict) -> None:
    asyncio.run(spawner.apply_profile(options))


def form(spawner: MedhubDockerSpawner) -> str:
    return asyncio.run(spawner.options_form(spawner))


@pytest.fixture
def spawner(tmp_path: Path) -> MedhubDockerSpawner:
    db = orm.new_session_factory("sqlite://")()
    user = orm.User(name="alice")
    for name in ("radiology-research", "course-instructors"):
        group = orm.Group(name=name)
        db.add(group)
        user.groups.append(group)
    db.add(user)
    orm_spawner = orm.Spawner(user=user, name="")
    db.add(orm_spawner)
    db.commit()
    (tmp_path / "research").mkdir()
    (tmp_path / "secret").mkdir()
    entry = {"sensitivity": "anonymized", "licence": "CC0-1.0"}
    datasets = [
        {"id": "research-ct", "title": "R", "location": str(tmp_path / "research"), "groups": ["radiology-research"],
         **entry},
        {"id": "secret-ct", "title": "S", "location": str(tmp_path / "secret"), "groups": ["oncology"], **entry},
    ]
    return MedhubDockerSpawner(
        user=User(user, {"db": db}), orm_spawner=orm_spawner, hub=Hub(ip="127.0.0.1", port=8081, base_url="/hub/"),
        profiles=PROFILES, datasets=datasets, image="medhub/notebook:test", gpu_devices=lambda _: TWO_GPUS,
    )


@pytest.mark.parametrize("slug, count", [("gpu1", 1), ("gpu-all", -1)])
def test_gpu_profiles_become_docker_device_requests(spawner: MedhubDockerSpawner, slug: str, count: int):
    apply(spawner, {"profile": slug})
    (request,) = spawner.extra_host_config["device_requests"]
    assert isinstance(request, DeviceRequest)
    assert request["Count"] == count
    assert request["Capabilities"] == [["gpu"]]
    assert spawner.cpu_limit == {"gpu1": 8.0, "gpu-all": 16.0}[slug]


def test_cpu_profile_requests_no_device_and_sets_limits(spawner: MedhubDockerSpawner):
    apply(spawner, {})  # no choice: the default profile
    assert spawner.extra_host_config["device_requests"] == []
    assert spawner.extra_host_config["shm_size"] == "2G"  # room for PyTorch's data-loader workers
    assert spawner.cpu_limit == 2.0
    assert spawner.mem_limit == 8 * 1024**3


def test_a_node_without_gpus_shows_gpu_profiles_unavailable_and_refuses_them(spawner: MedhubDockerSpawner):
    spawner.gpu_devices = lambda _: []
    shown = form(spawner)
    for slug in ("gpu1", "gpu-all"):
        assert f'value="{slug}" disabled' in shown
    assert shown.count("(unavailable: this node has no GPU)") == 2
    assert 'value="cpu" checked' in shown
    with pytest.raises(web.HTTPError) as refused:
        apply(spawner, {"profile": "gpu1"})
    assert refused.value.status_code == 409
    assert refused.value.jupyterhub_message == ("The profile '1 GPU' needs 1 GPU and this node has no GPU. Choose "
                                                "'CPU only' or 'Teaching', or try again when a GPU is free.")
    assert spawner.start_error == "profile 'gpu1' needs GPUs: this node has no GPU"
    assert "device_requests" not in spawner.extra_host_config  # nothing was applied


def test_gpus_held_by_running_servers_are_not_offered_again(spawner: MedhubDockerSpawner):
    db = spawner.user.db
    bob = orm.User(name="bob")
    running = orm.Spawner(user=bob, name="", server=orm.Server(), user_options={"profile": "gpu1"})
    db.add_all([bob, running])
    db.commit()
    shown = form(spawner)
    assert 'value="gpu1" checked' not in shown and 'value="gpu1" disabled' not in shown  # one of two is free
    assert 'value="gpu-all" disabled' in shown and "1 of the node's 2 GPUs are in use" in shown
    apply(spawner, {"profile": "gpu1"})
    spawner.gpu_devices = lambda _: TWO_GPUS[:1]
    with pytest.raises(web.HTTPError, match="0 of the node's 1 GPUs are free"):
        apply(spawner, {"profile": "gpu1"})


def test_gpu_inventories(tmp_path: Path):
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "sda"):
        (tmp_path / name).touch()
    assert node_devices(tmp_path) == ["nvidia0", "nvidia1"]
    assert node_devices(tmp_path / "missing") == []
    assert engine_devices({}) is None  # an engine that does not report devices
    assert engine_devices({"DiscoveredDevices": None}) == []
    assert engine_devices({"DiscoveredDevices": [{"Source": "cdi", "ID": "nvidia.com/gpu=0"},
                                                 {"Source": "cdi", "ID": "nvidia.com/gpu=all"},
                                                 {"Source": "cdi", "ID": "vendor.com/fpga=0"}]}) == ["nvidia.com/gpu=0"]
    assert GPUs.held(4, [1, 2]).unavailable(2) == "1 of the node's 4 GPUs is free"
    assert GPUs.held(4, [-1]).free == 0
    assert GPUs(1, 0).unavailable(2) == "this node has 1 GPU"
    assert GPUs(0, 0).unavailable(0) is None


def test_volumes_are_the_home_and_granted_datasets_read_only(spawner: MedhubDockerSpawner, tmp_path: Path):
    volumes = spawner.container_volumes()
    assert volumes == {
        "medhub-home-{username}": {"bind": "/home/jovyan", "mode": "rw"},
        str(tmp_path / "research"): {"bind": "/datasets/research-ct", "mode": "ro"},
    }


def test_environment_carries_identity(spawner: MedhubDockerSpawner):
    apply(spawner, {"profile": "gpu1"})
    env = spawner.get_env()
    assert env["MEDHUB_USER"] == "alice"
    assert env["MEDHUB_GROUPS"] == "course-instructors,radiology-research"
    assert env["MEDHUB_PROFILE"] == "gpu1"
    assert env["MEDHUB_DATASETS_DIR"] == "/datasets"


def test_spawn_form_offers_every_profile(spawner: MedhubDockerSpawner):
    shown = form(spawner)
    for p in DEFAULT_PROFILES:
        assert f'value="{p.slug}"' in shown
    assert 'value="cpu" checked' in shown and "unavailable" not in shown
    assert spawner.options_from_form({"profile": ["gpu1"]}) == {"profile": "gpu1"}


def test_helpers():
    assert docker_device_requests(0) == []
    assert cuda_visible_devices(0) == "" and cuda_visible_devices(2) == "0,1" and cuda_visible_devices(-1) is None


def test_profiles_kept_to_groups_are_offered_and_accepted_only_for_members(spawner: MedhubDockerSpawner,
                                                                          tmp_path: Path):
    spawner.profiles = PROFILES + [{"slug": "onco-gpu", "display_name": "Oncology GPU", "gpus": 1,
                                    "groups": ["oncology"]},
                                   {"slug": "research-big", "display_name": "Research", "cpu_limit": 32,
                                    "groups": ["radiology-research"]}]
    offered = [p.slug for p in spawner._profiles()]
    assert "research-big" in offered and "onco-gpu" not in offered  # alice is in radiology-research only
    assert "onco-gpu" not in form(spawner)
    with pytest.raises(web.HTTPError, match="There is no profile 'onco-gpu' for you"):
        apply(spawner, {"profile": "onco-gpu"})
    apply(spawner, {"profile": "research-big"})
    assert spawner.cpu_limit == 32


def test_course_material_is_mounted_read_only_for_members(spawner: MedhubDockerSpawner, tmp_path: Path):
    (tmp_path / "course").mkdir()
    spawner.courses = [{"name": "imaging-101", "instructors": "course-instructors", "students": "course-students",
                        "materials": str(tmp_path / "course"), "datasets": []},
                       {"name": "other", "instructors": "x", "students": "y", "materials": str(tmp_path / "secret"),
                        "datasets": []}]
    volumes = spawner.container_volumes()
    assert volumes[str(tmp_path / "course")] == {"bind": "/home/jovyan/courses/imaging-101", "mode": "ro"}
    assert str(tmp_path / "secret") not in volumes
