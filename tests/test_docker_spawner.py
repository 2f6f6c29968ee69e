"""The Docker spawner's container configuration: GPUs, limits, mounts and environment.

Starting real containers is issue 9's end-to-end test; here the spawner is a real
MedhubDockerSpawner for a real JupyterHub user, and the checks are on what it would send.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from docker.types import DeviceRequest
from jupyterhub import orm
from jupyterhub.objects import Hub
from jupyterhub.user import User

from medhub.settings import DEFAULT_PROFILES
from medhub.spawner import MedhubDockerSpawner, cuda_visible_devices, docker_device_requests

PROFILES = [
    {"slug": p.slug, "display_name": p.display_name, "description": p.description, "cpu_limit": p.cpu_limit,
     "mem_limit": p.mem_limit, "gpus": p.gpus, "default": p.default}
    for p in DEFAULT_PROFILES
]


@pytest.fixture
def spawner(tmp_path: Path) -> MedhubDockerSpawner:
    db = orm.new_session_factory("sqlite://")()
    user = orm.User(name="alice")
    for name in ("radiology-research", "course-instructors"):
        group = orm.Group(name=name)
        db.add(group)
        user.groups.append(group)
    db.add(user)
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
        user=User(user, {}), hub=Hub(ip="127.0.0.1", port=8081, base_url="/hub/"),
        profiles=PROFILES, datasets=datasets, image="medhub/notebook:test",
    )


@pytest.mark.parametrize("slug, count", [("gpu1", 1), ("gpu-all", -1)])
def test_gpu_profiles_become_docker_device_requests(spawner: MedhubDockerSpawner, slug: str, count: int):
    spawner.apply_profile({"profile": slug})
    (request,) = spawner.extra_host_config["device_requests"]
    assert isinstance(request, DeviceRequest)
    assert request["Count"] == count
    assert request["Capabilities"] == [["gpu"]]
    assert spawner.cpu_limit == {"gpu1": 8.0, "gpu-all": 16.0}[slug]


def test_cpu_profile_requests_no_device_and_sets_limits(spawner: MedhubDockerSpawner):
    spawner.apply_profile({})  # no choice: the default profile
    assert spawner.extra_host_config["device_requests"] == []
    assert spawner.cpu_limit == 2.0
    assert spawner.mem_limit == 8 * 1024**3


def test_volumes_are_the_home_and_granted_datasets_read_only(spawner: MedhubDockerSpawner, tmp_path: Path):
    volumes = spawner.container_volumes()
    assert volumes == {
        "medhub-home-{username}": {"bind": "/home/jovyan", "mode": "rw"},
        str(tmp_path / "research"): {"bind": "/datasets/research-ct", "mode": "ro"},
    }


def test_environment_carries_identity(spawner: MedhubDockerSpawner):
    spawner.apply_profile({"profile": "gpu1"})
    env = spawner.get_env()
    assert env["MEDHUB_USER"] == "alice"
    assert env["MEDHUB_GROUPS"] == "course-instructors,radiology-research"
    assert env["MEDHUB_PROFILE"] == "gpu1"
    assert env["MEDHUB_DATASETS_DIR"] == "/datasets"


def test_spawn_form_offers_every_profile(spawner: MedhubDockerSpawner):
    form = spawner.options_form(spawner)
    for p in DEFAULT_PROFILES:
        assert f'value="{p.slug}"' in form
    assert 'value="cpu" checked' in form
    assert spawner.options_from_form({"profile": ["gpu1"]}) == {"profile": "gpu1"}


def test_helpers():
    assert docker_device_requests(0) == []
    assert cuda_visible_devices(0) == "" and cuda_visible_devices(2) == "0,1" and cuda_visible_devices(-1) is None


def test_profiles_kept_to_groups_are_offered_and_accepted_only_for_members(spawner: MedhubDockerSpawner,
                                                                          tmp_path: Path):
    from tornado import web

    spawner.profiles = PROFILES + [{"slug": "onco-gpu", "display_name": "Oncology GPU", "gpus": 1,
                                    "groups": ["oncology"]},
                                   {"slug": "research-big", "display_name": "Research", "cpu_limit": 32,
                                    "groups": ["radiology-research"]}]
    offered = [p.slug for p in spawner._profiles()]
    assert "research-big" in offered and "onco-gpu" not in offered  # alice is in radiology-research only
    assert "onco-gpu" not in spawner._options_form()
    with pytest.raises(web.HTTPError, match="Unknown profile 'onco-gpu'"):
        spawner.apply_profile({"profile": "onco-gpu"})
    spawner.apply_profile({"profile": "research-big"})
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
