"""``medhub up``'s container, as derived from the settings: what it binds, as whom it runs, and
what it refuses. The real container runs in tests/test_containers.py."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import tomli_w

from conftest import write_catalog, write_materials
from medhub.errors import HubConfigError
from medhub.settings import load
from medhub.single_node import hub_container


@pytest.fixture
def engine_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    return path


def write(root: Path, **hub: object) -> Path:
    (root / "secret").write_text("s3cret\n")
    (root / "tls.pem").write_text("cert")
    (root / "tls.key").write_text("key")
    state = root / "state"
    state.mkdir(exist_ok=True)
    if os.getuid() == 0:  # the hub never runs as root
        os.chown(state, 999, 100)
    settings = {
        "hub": {"public_url": "https://hub.example.org:8443", "spawner": "docker", "state_dir": str(state),
                "catalog": str(write_catalog(root)), "tls_cert": str(root / "tls.pem"),
                "tls_key": str(root / "tls.key"), **hub},
        "oidc": {"issuer": "https://idp.example.org", "client_id": "medhub", "client_secret_file": "secret",
                 "allowed_groups": ["radiology-research", "course-students", "course-tutors"]},
        "docker": {"hub_image": "registry.example.org/medhub/hub:0.1.0"},
        "course": [{"name": "imaging-101", "instructors": "course-instructors", "students": "course-students",
                    "materials": str(write_materials(root)), "datasets": ["teaching-ct"]}],
    }
    path = root / "medhub.toml"
    path.write_text(tomli_w.dumps(settings))
    return path


def test_the_container_sees_what_the_settings_name_read_only_and_its_state_read_write(tmp_path, engine_socket):
    settings = load(write(tmp_path))
    spec = hub_container(settings)
    state = str(settings.hub.state_dir)
    owner = os.stat(state)
    assert spec.user == f"{owner.st_uid}:{owner.st_gid}"
    assert spec.image == "registry.example.org/medhub/hub:0.1.0"
    assert spec.command == ["run", "--settings", str(settings.source)]
    assert spec.group_add == [str(engine_socket.stat().st_gid)]
    expected_ro = [settings.source, settings.hub.catalog, settings.hub.tls_cert, settings.hub.tls_key,
                   tmp_path / "secret", tmp_path / "datasets" / "research-ct", tmp_path / "datasets" / "teaching-ct",
                   tmp_path / "materials" / "imaging-101"]
    assert spec.binds == {
        state: {"bind": state, "mode": "rw"},
        str(settings.audit_anchor): {"bind": str(settings.audit_anchor), "mode": "rw"},  # made if missing
        str(engine_socket): {"bind": str(engine_socket), "mode": "rw"},
        "/dev": {"bind": "/run/medhub/host-dev", "mode": "ro"},  # its GPUs' names, for the spawn form
        **{str(p): {"bind": str(p), "mode": "ro"} for p in expected_ro},
    }
    assert spec.environment == {}  # the secret is read from its bound file, never passed in the environment
    kwargs = spec.run_kwargs()
    assert kwargs["network_mode"] == "host" and kwargs["cap_drop"] == ["ALL"]
    assert kwargs["security_opt"] == ["no-new-privileges"]
    assert hub_container(settings).spec_hash == spec.spec_hash  # stable: `up` keeps an unchanged container
    assert hub_container(settings, image="medhub/hub:other").spec_hash != spec.spec_hash
    settings.hub.catalog.write_text(settings.hub.catalog.read_text() + "\n# edited\n")
    assert hub_container(settings).spec_hash != spec.spec_hash  # an edited file needs a restart


def test_a_versioned_dataset_is_bound_writable_for_the_ingest_service(tmp_path, engine_socket):
    path = write(tmp_path)
    delivered = tmp_path / "delivered"
    delivered.mkdir()
    catalog = tmp_path / "datasets.toml"
    catalog.write_text(catalog.read_text() + tomli_w.dumps({"dataset": [{
        "id": "harvest-ct", "title": "H", "location": str(delivered), "groups": ["radiology-research"],
        "owners": ["radiology-research"], "sensitivity": "anonymized", "licence": "CC0-1.0", "versioned": True}]}).replace("[[dataset]]", "\n[[dataset]]"))
    delivered.chmod(0o555)
    with pytest.raises(HubConfigError, match=f"publishes the versions .* chown .* {delivered}"):  # it must write there
        hub_container(load(path))
    if os.getuid() == 0:  # the container runs as the state folder's owner
        os.chown(delivered, 999, 100)
    delivered.chmod(0o755)
    spec = hub_container(load(path))
    assert spec.binds[str(delivered)] == {"bind": str(delivered), "mode": "rw"}
    assert spec.binds[str(tmp_path / "datasets" / "research-ct")]["mode"] == "ro"


def test_a_path_inside_a_bound_folder_is_not_bound_twice(tmp_path, engine_socket):
    path = write(tmp_path)
    (tmp_path / "state" / "observer.py").write_text("")
    text = path.read_text().replace('[hub]\n', f'[hub]\nextra_config = "{tmp_path / "state" / "observer.py"}"\n')
    path.write_text(text)
    spec = hub_container(load(path))
    assert str(tmp_path / "state" / "observer.py") not in spec.binds


@pytest.mark.parametrize("change, named", [
    ({"spawner": "local"}, 'set hub.spawner = "docker"'),
    ({"public_url": "https://hub.example.org"}, "net.ipv4.ip_unprivileged_port_start=443"),
])
def test_up_refuses_settings_it_cannot_run(tmp_path, engine_socket, change, named):
    if "public_url" in change and int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) <= 443:
        pytest.skip("this host lets unprivileged processes open port 443")
    with pytest.raises(HubConfigError, match=named.replace(".", r"\.")):
        hub_container(load(write(tmp_path, **change)))


@pytest.mark.skipif(os.getuid() != 0, reason="only root can make a root-owned state folder here")
def test_up_refuses_a_state_folder_of_root(tmp_path, engine_socket):
    path = write(tmp_path)
    os.chown(tmp_path / "state", 0, 0)
    with pytest.raises(HubConfigError, match=r"chown -R 999:100"):
        hub_container(load(path))


def test_up_says_where_the_engine_socket_is_missing(tmp_path, engine_socket, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nowhere.sock")
    with pytest.raises(HubConfigError, match="no Docker engine socket"):
        hub_container(load(write(tmp_path)))


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give the key to another account than the hub's")
def test_up_says_which_file_the_unprivileged_hub_could_not_read(tmp_path, engine_socket):
    path = write(tmp_path)
    (tmp_path / "tls.key").chmod(0o600)  # root's key, readable by root only
    with pytest.raises(HubConfigError, match=r"tls\.key: the hub's container runs as 999:100 .* chgrp 100"):
        hub_container(load(path))
