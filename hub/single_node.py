"""Single-node production: the hub image on the local Docker engine (``medhub up`` / ``down``).

``medhub up`` runs the hub image (``docker.hub_image``) as one container that runs
``medhub run``: configurable-http-proxy, JupyterHub and the hub's services, spawning each
user's server as a sibling container through the engine's socket (``hub.spawner =
"docker"``). What the container sees is derived from the settings file, so it cannot drift
from it: every file and folder the settings name (the settings file, the catalog and its local
datasets, course material, the client secret file, the TLS certificate and key, the extra
configuration) is bound read-only at the same path, the state folder and the versioned datasets
(where sites' deliveries are published) read-write. The container
runs as the owner of the state folder (never root), on the host's network, restarted by the
engine unless stopped with ``medhub down``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import docker_network
from .errors import HubConfigError, ProcessStartError
from .gpus import HOST_DEV
from .processes import url_answers
from .settings import CLIENT_SECRET_ENV, Settings

CONTAINER_NAME = "medhub"
SPEC_LABEL = "org.medhub.spec"  # hash of the container's spec: `medhub up` recreates it when it changes


@dataclass
class HubContainer:
    """What ``medhub up`` asks the engine for."""

    image: str
    name: str
    command: list[str]
    user: str
    binds: dict[str, dict[str, str]]
    group_add: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    files_digest: str = ""  # of the files the hub reads at start: an edit means a restart

    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:16]

    def run_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``docker.DockerClient.containers.run``."""
        return {
            "image": self.image, "name": self.name, "command": self.command, "user": self.user,
            "volumes": self.binds, "group_add": self.group_add, "environment": self.environment,
            "network_mode": "host", "detach": True, "restart_policy": {"Name": "unless-stopped"},
            "security_opt": ["no-new-privileges"], "cap_drop": ["ALL"],
            "labels": {SPEC_LABEL: self.spec_hash},
        }


def read_only_paths(settings: Settings) -> list[Path]:
    """Every host file or folder the hub reads, as the settings name them."""
    hub = settings.hub
    paths = [settings.source, hub.catalog, hub.extra_config, hub.tls_cert, hub.tls_key,
             settings.oidc.client_secret_file]
    paths += [d.path for d in settings.datasets if d.is_local and not d.versioned]
    paths += [c.materials for c in settings.courses]
    return [Path(p).resolve() for p in paths if p is not None]


def written_paths(settings: Settings) -> list[Path]:
    """The host folders the hub writes besides its state: the versioned datasets, where the
    ingest service publishes what sites deliver."""
    return [d.path.resolve() for d in settings.datasets if d.versioned]


def readable(path: Path, uid: int, gid: int, need: int | None = None) -> bool:
    """Whether ``uid:gid`` (no other groups) may read ``path``, and list it if a folder (or has
    the permission bits ``need``)."""
    st = path.stat()
    need = need if need is not None else (0o5 if path.is_dir() else 0o4)
    if uid == st.st_uid:
        bits = st.st_mode >> 6
    elif gid == st.st_gid:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & need == need


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def unprivileged_port_start() -> int:
    """The lowest port an unprivileged process may listen on here (Linux; 1024 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def docker_socket() -> Path:
    """The engine's unix socket, from ``DOCKER_HOST`` (default ``/var/run/docker.sock``)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    parsed = urllib.parse.urlparse(host)
    if parsed.scheme != "unix":
        raise HubConfigError(f"DOCKER_HOST={host}: medhub up needs the engine's unix socket on this host")
    return Path(parsed.path)


def hub_container(settings: Settings, image: str | None = None, name: str = CONTAINER_NAME) -> HubContainer:
    """The container for ``settings``.

    Raises:
        HubConfigError: the settings do not spawn containers, a path they name is missing, or
            the state folder belongs to root.
    """
    if settings.hub.spawner != "docker":
        raise HubConfigError(f"{settings.source}: hub.spawner is {settings.hub.spawner!r}; medhub up runs the hub "
                             "in a container, whose users' servers must be containers too: set hub.spawner = \"docker\"")
    state = settings.hub.state_dir.resolve()
    if not state.is_dir():
        raise HubConfigError(f"{settings.source}: hub.state_dir {state} does not exist; create it, owned by the "
                             "account the hub runs as (e.g. install -d -o 999 -g 100 -m 700 " + str(state) + ")")
    owner = state.stat()
    if owner.st_uid == 0:
        raise HubConfigError(f"{settings.source}: hub.state_dir {state} belongs to root and the hub never runs as "
                             f"root; give it to the hub's account: chown -R 999:100 {state}")
    port = urllib.parse.urlparse(settings.hub.public_url).port or 443
    if port < unprivileged_port_start():
        raise HubConfigError(
            f"{settings.source}: hub.public_url listens on port {port}, which only root may open on this host, and "
            f"the hub never runs as root. Allow it: sysctl -w net.ipv4.ip_unprivileged_port_start={port} (and in "
            "/etc/sysctl.d/ to keep it), or use a port of 1024 or more behind the site's load balancer")
    socket = docker_socket()
    if not socket.exists():
        raise HubConfigError(f"no Docker engine socket at {socket}: start the engine (systemctl start docker)")
    anchor = settings.audit_anchor.resolve()  # the audit checkpoints' second home, outside the state folder
    if not anchor.is_dir():
        anchor.mkdir(mode=0o700, parents=True)
        os.chown(anchor, owner.st_uid, owner.st_gid)
    binds = {str(state): {"bind": str(state), "mode": "rw"}, str(anchor): {"bind": str(anchor), "mode": "rw"},
             str(socket): {"bind": str(socket), "mode": "rw"},
             # the host's device files, read-only, for the spawn form's GPU inventory (the engine's
             # device cgroup lets the container open none of them)
             "/dev": {"bind": str(HOST_DEV), "mode": "ro"}}
    digest = hashlib.sha256()
    for path in read_only_paths(settings):
        if not path.exists():
            raise HubConfigError(f"{settings.source}: {path} does not exist; the hub's container needs it")
        if not readable(path, owner.st_uid, owner.st_gid):
            raise HubConfigError(
                f"{path}: the hub's container runs as {owner.st_uid}:{owner.st_gid} (the owner of hub.state_dir) "
                f"and could not read it; e.g. chgrp {owner.st_gid} {path} && chmod g+r{'x' if path.is_dir() else ''} "
                f"{path} (or make the hub's account its owner)")
        if not any(_inside(path, Path(bound)) for bound in binds):
            binds[str(path)] = {"bind": str(path), "mode": "ro"}
        if path.is_file():
            digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    for path in written_paths(settings):
        if not readable(path, owner.st_uid, owner.st_gid, need=0o7):
            raise HubConfigError(
                f"{path}: the hub's container runs as {owner.st_uid}:{owner.st_gid} (the owner of hub.state_dir) and "
                f"publishes the versions sites deliver there; e.g. chown {owner.st_uid}:{owner.st_gid} {path}")
        binds[str(path)] = {"bind": str(path), "mode": "rw"}
    environment = {}
    if settings.oidc.client_secret_file is None and CLIENT_SECRET_ENV in os.environ:
        environment[CLIENT_SECRET_ENV] = os.environ[CLIENT_SECRET_ENV]
    return HubContainer(
        image=image or settings.docker.hub_image,
        name=name,
        command=["run", "--settings", str(settings.source)],
        user=f"{owner.st_uid}:{owner.st_gid}",
        binds=binds,
        group_add=[str(socket.stat().st_gid)],  # the socket's group: to spawn users' containers
        environment=environment,
        files_digest=digest.hexdigest(),
    )


def _client():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        raise HubConfigError(f"no Docker engine answers ({e}); start it (systemctl start docker)") from None
    return client


def up(settings: Settings, image: str | None = None, name: str = CONTAINER_NAME, timeout: float | None = None,
       say: Callable[[str], None] = print) -> str:
    """Start the hub's container, or keep it when nothing changed (its binds, the image, the
    contents of the files the settings name); wait until the hub and its services answer.

    Returns ``"started"``, ``"recreated"`` or ``"unchanged"``.

    Raises:
        HubConfigError: see :func:`hub_container`; or no engine, or no such image.
        ProcessStartError: the container exited or the hub did not answer in time (with its log).
    """
    import docker

    spec = hub_container(settings, image, name)
    client = _client()
    if settings.users_network:  # the hub binds the network's gateway: the network comes first
        docker_network.ensure(settings.docker.network, settings.docker.subnet, client)
    try:
        image_id = client.images.get(spec.image).id
    except docker.errors.ImageNotFound:
        raise HubConfigError(f"no image {spec.image} on this engine: build it (images/README.md) or "
                             "set docker.hub_image") from None
    outcome = "started"
    try:
        existing = client.containers.get(spec.name)
    except docker.errors.NotFound:
        existing = None
    if existing is not None:
        if existing.status != "running":
            say(f"removing the stopped container {spec.name} …")
        elif existing.labels.get(SPEC_LABEL) == spec.spec_hash and existing.image.id == image_id:
            outcome = "unchanged"
        else:
            say(f"replacing container {spec.name}: its settings or its image ({spec.image}) changed …")
        if outcome != "unchanged":
            _stop(existing, settings)
            outcome = "recreated"
    container = existing if outcome == "unchanged" else client.containers.run(**spec.run_kwargs())
    ready = [settings.hub_url + "/hub/health",  # the hub, then its services
             *(f"http://127.0.0.1:{port}/" for port in (settings.audit.port, settings.batch.port, settings.ingest.port,
                                                         settings.access.port))]
    deadline = time.monotonic() + (timeout if timeout is not None else settings.hub.start_timeout + 60)
    while not all(map(url_answers, ready)):
        container.reload()
        if container.status not in ("created", "running") or time.monotonic() > deadline:
            tail = container.logs(tail=40).decode(errors="replace")
            raise ProcessStartError(f"the hub in container {spec.name} did not come up "
                                    f"({container.status}); its log ends:\n{tail}")
        time.sleep(0.5)
    return outcome


def _stop(container: Any, settings: Settings) -> None:
    # the hub may stop every server first (hub.cleanup_servers): give it the time it needs
    container.stop(timeout=settings.hub.start_timeout + 15)
    container.remove(v=True)  # and the image's anonymous volume (the state is a bind)


def down(settings: Settings, name: str = CONTAINER_NAME) -> bool:
    """Stop and remove the hub's container; False if there was none. Users' servers stay up
    unless ``hub.cleanup_servers``; their home volumes always stay."""
    import docker

    try:
        container = _client().containers.get(name)
    except docker.errors.NotFound:
        return False
    _stop(container, settings)
    return True
