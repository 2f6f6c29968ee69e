"""Fixtures that start the real platform: development IdP, configurable-http-proxy, JupyterHub.

Everything listens on free ports of 127.0.0.1 and lives in a temporary folder; processes
are started with the same functions ``medhub run`` and ``medhub demo`` use.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import json

import httpx
import pytest
import tomli_w

from medhub import single_node
from medhub.catalog import granted
from medhub.grants import GrantSigner
from medhub.idp import Account, Client, DevIdentityProvider
from medhub.idp.browser import scripted_login, submit_spawn_form
from medhub.processes import ManagedProcess, Stack, free_port, hub_process, idp_process, proxy_process
from medhub.settings import Settings, load
from medlib.manifest import MANIFEST, write_manifest
from medlib.synthetic import write_ct_series


@pytest.fixture
def as_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, catalog):
    """Become a server the hub started for a user in the given groups (a local spawner's view) of
    the test module's ``catalog`` (a fixture of it: a loaded catalogue); audit events are buffered
    (read them with :func:`events`)."""
    signer = GrantSigner(tmp_path / "grants.pem")
    monkeypatch.setenv("MEDHUB_AUDIT_BUFFER", str(tmp_path / "audit-buffer.jsonl"))  # no service here
    monkeypatch.delenv("MEDHUB_AUDIT_URL", raising=False)
    monkeypatch.setenv("MEDLIB_CACHE_DIR", str(tmp_path / "cache"))

    def become(user: str, groups: list[str]) -> None:
        view = tmp_path / "views" / user
        view.mkdir(parents=True, exist_ok=True)
        for d in catalog:
            if d.is_local and set(groups) & set(d.readers()) and not (view / d.id).exists():
                (view / d.id).symlink_to(d.path)
        monkeypatch.setenv("JUPYTERHUB_USER", user)
        monkeypatch.setenv("MEDHUB_GRANTS", signer.manifest(user, groups, catalog, granted(catalog, groups), str(view)))
        monkeypatch.setenv("MEDHUB_GRANTS_KEY", signer.public_key)

    return become


def events(tmp_path: Path) -> list[dict]:
    """The events recorded (buffered: no audit service runs in these tests)."""
    return [json.loads(line) for line in (tmp_path / "audit-buffer.jsonl").read_text().splitlines()]


def once_answering(call, timeout: float = 60):
    """``call()``'s result once it stops raising: the hub starts its services without waiting
    for them to listen."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def shared_data(path: Path) -> Path:
    """``path``, reference data from ../shared; the test skips, saying so, where a clone has no
    ../shared (the data is not redistributable, so the repository does not carry it)."""
    if not path.exists():
        pytest.skip(f"{path} is missing: this reference data comes from ../shared (see ../shared/README.md)")
    return path


#: id_tokens and access tokens live this long, so that refresh is exercised in the run.
TOKEN_TTL = 20


def make_accounts() -> dict[str, Account]:
    def account(name: str, *groups: str) -> Account:
        return Account(name, secrets.token_urlsafe(12), name.title(), f"{name}@hospital.example", groups)

    # One user per purpose, so that tests do not depend on each other's servers.
    return {
        "alice": account("alice", "radiology-research", "course-instructors"),  # spawn environment
        "bob": account("bob", "course-students"),  # login and first spawn
        "carol": account("carol", "course-students"),  # tokens, GPU profile
        "dave": account("dave", "course-students"),  # hub restart
        "erin": account("erin", "radiology-research"),  # real browser
        "frank": account("frank", "course-students"),  # audit events from a server
        "mallory": account("mallory", "visitors"),  # in no allowed group
        "tina": account("tina", "course-tutors"),  # the imaging-101 course: its instructor (no hub admin)
        "sara": account("sara", "course-students"),  # ... and two of its students
        "tom": account("tom", "course-students"),
        "eve": account("eve", "course-students"),  # the red team (test_isolation): an ordinary user ...
        "victor": account("victor", "radiology-research"),  # ... and the user she attacks
        "uma": account("uma", "course-students", "radiology-research"),  # a student with research grants too
        "wendy": account("wendy", "radiology-research"),  # removed from her groups at the IdP (test_isolation)
        "nina": account("nina", "radiology-research"),  # a server's activity reports (test_first_hour)
        "oscar": account("oscar", "radiology-research"),  # a server that cannot start (test_first_hour)
        "rita": account("rita", "course-students", "trial-readers"),  # asks for research-ct (test_access) ...
        "rick": account("rick", "course-students"),  # ... is granted it, then revoked
        "olga": account("olga", "radiology-research"),  # ... an owner of research-ct decides
        "adam": account("adam", "course-instructors"),  # ... a platform admin who cannot read it
        "pia": account("pia", "course-students"),  # ... and on the access page, in a browser
        "tara": account("tara", "trial-team", "trial-stewards"),  # owns trial-ct: deletes, publishes, reviews
        "kim": account("kim", "trial-team"),  # reads trial-ct and cohort-ct: his outputs leave by export
        "zoe": account("zoe", "course-students"),  # two accounts that differ only by case
        "Zoe": account("Zoe", "radiology-research"),
    }


@dataclass
class Platform:
    """A running medhub on loopback and the handles the tests need."""

    root: Path
    settings: Settings
    idp: DevIdentityProvider | None
    accounts: dict[str, Account]
    observer_token: str
    stack: Stack
    hub: ManagedProcess | ContainerisedHub
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.settings.hub.public_url

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        """Call the hub's REST API as the test observer service (admin scopes)."""
        headers = {"Authorization": f"token {self.observer_token}"}
        return httpx.request(method, f"{self.url}/hub/api{path}", headers=headers, timeout=30, **kwargs)

    def browser(self) -> httpx.Client:
        """A fresh cookie jar: one person's browser."""
        client = httpx.Client(timeout=30, follow_redirects=True)
        self.clients.append(client)
        return client

    def login(self, client: httpx.Client, username: str, password: str | None = None) -> httpx.Response:
        """Log in through the IdP's real pages: login form, consent, callback to the hub."""
        password = self.accounts[username].password if password is None else password
        return scripted_login(client, self.url, username, password)

    def spawn(self, client: httpx.Client, username: str, profile: str = "cpu", timeout: float = 90) -> dict:
        """Start ``username``'s server through the spawn form; wait until it is ready."""
        assert submit_spawn_form(client, self.url, username, profile), f"no spawn form for {username}"
        return self.wait_ready(username, timeout)

    def wait_ready(self, username: str, timeout: float = 90) -> dict:
        """Wait until ``username``'s default server is ready; its model."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.api("GET", f"/users/{username}").json()["servers"].get("")
            if server and server["ready"]:
                return server
            time.sleep(0.5)
        raise AssertionError(f"{username}'s server not ready after {timeout} s:\n{self.hub.log_tail()}")

    def server_status(self, client: httpx.Client, username: str) -> httpx.Response:
        """Open ``username``'s JupyterLab (completing the server's OAuth with the hub), then
        return ``/user/<name>/api/status``."""
        lab = client.get(f"{self.url}/user/{username}/lab")
        assert lab.status_code == 200, f"{lab.url}: {lab.status_code}"
        return client.get(f"{self.url}/user/{username}/api/status")

    def change_idp_groups(self, username: str, *groups: str) -> None:
        """What the institution's directory does: ``username`` is now in ``groups`` only."""
        account = self.accounts[username] = replace(self.accounts[username], groups=groups)
        idp = next(p for p in self.stack.processes if p.name == "identity provider")
        self.idp.change_account(account, idp.proc.pid)

    def restart_hub(self) -> None:
        self.hub.stop()
        self.stack.processes.remove(self.hub)
        self.hub = self.stack.start(hub_process(self.settings), timeout=120)


#: The groups of the data-owner tests (test_access): a trial's team and its stewards, and the
#: readers of what they publish. Nobody else is in them, so no other test sees their datasets.
TRIAL_GROUPS = ("trial-team", "trial-stewards", "trial-readers")


def write_catalog(root: Path, more: tuple[dict, ...] = (), trial: bool = False) -> Path:
    """Two small CT datasets with their manifests, and the catalog that grants them (with the
    entries ``more``); with ``trial``, also two pseudonymized datasets of :data:`TRIAL_GROUPS`:
    trial-ct (versioned, empty) and cohort-ct."""
    datasets = root / "datasets"
    for name, patient in (("research-ct", "PAT-0001"), ("teaching-ct", "PAT-0002"), ("cohort-ct", "COHORT-7")):
        if (trial or name != "cohort-ct") and not (datasets / name / MANIFEST).is_file():
            write_ct_series(datasets / name / "series-001", shape=(4, 16, 16), patient_id=patient)
            write_manifest(datasets / name)
    entry = {"modality": "CT", "licence": "CC0-1.0", "sensitivity": "anonymized", "contact": "steward@example.org"}
    trials = []
    if trial:
        (datasets / "trial-ct").mkdir(exist_ok=True)  # versioned: sites deliver into it
        trials = [
            {"id": "trial-ct", "title": "Trial CT", "location": str(datasets / "trial-ct"), "groups": ["trial-team"],
             "owners": ["trial-stewards"], "versioned": True, **entry | {"sensitivity": "pseudonymized"}},
            {"id": "cohort-ct", "title": "Cohort CT", "location": str(datasets / "cohort-ct"), "groups": ["trial-team"],
             "owners": ["radiology-research"], **entry | {"sensitivity": "pseudonymized"}},
        ]
    catalog = root / "datasets.toml"
    catalog.write_text(tomli_w.dumps({"dataset": [
        {"id": "research-ct", "title": "Research CT", "location": str(datasets / "research-ct"),
         "groups": ["radiology-research"], "owners": ["radiology-research"], **entry},
        {"id": "teaching-ct", "title": "Teaching CT", "location": str(datasets / "teaching-ct"),
         "groups": ["course-students", "course-instructors", "course-tutors"], "owners": ["course-tutors"], **entry},
        *trials,
        *more,
    ]}))
    return catalog


def write_materials(root: Path) -> Path:
    """The imaging-101 course's material: one notebook."""
    folder = root / "materials" / "imaging-101"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lesson-1.ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    return folder


def write_settings(root: Path, issuer: str, client_secret: str, *, public_url: str, batch_limit: int = 1,
                   sections: dict | None = None, datasets: tuple[dict, ...] = (), trial: bool = True,
                   **hub: object) -> Path:
    catalog = write_catalog(root, datasets, trial=trial)
    observer = root / "observer_config.py"
    settings = {
        "hub": {
            "public_url": public_url,
            "hub_port": free_port(),
            "proxy_api_port": free_port(),
            "state_dir": str(root / "state"),
            "institution": "Example University Hospital",
            "spawner": "local",
            "cleanup_servers": False,
            "extra_config": str(observer),
            "catalog": str(catalog),
            **hub,
        },
        "oidc": {
            "issuer": issuer,
            "client_id": "medhub-test",
            "client_secret": client_secret,
            "allowed_groups": ["radiology-research", "course-instructors", "course-students", *TRIAL_GROUPS],
            "admin_groups": ["course-instructors"],
            "refresh_age": 5,
            "login_service": "the hospital's identity provider",
        },
        "local": {"home_root": str(root / "home")},
        "culler": {"enabled": True, "timeout": 3600, "every": 600},
        "audit": {"port": free_port()},
        "batch": {"port": free_port(), "max_running_per_user": batch_limit, "max_output_mb": 2},
        "ingest": {"port": free_port()},
        "access": {"port": free_port(), "enforce_seconds": 1},
        "course": [{"name": "imaging-101", "instructors": "course-tutors", "students": "course-students",
                    "materials": str(write_materials(root)), "datasets": ["teaching-ct"]}],
    }
    settings.update(sections or {})
    path = root / "medhub.toml"
    path.write_text(tomli_w.dumps(settings))
    return path


OBSERVER_CONFIG = """
c.JupyterHub.services.append({{"name": "test-observer", "api_token": "{token}"}})
c.JupyterHub.load_roles.append({{
    "name": "test-observer",
    "scopes": ["admin:users", "admin:servers", "admin:server_state", "admin:auth_state",
               "admin:groups", "list:services", "read:services", "access:services", "tokens",
               "read:shares", "custom:audit:read-all"],
    "services": ["test-observer"],
}})
"""


class ContainerisedHub:
    """``medhub up``'s container in place of the hub process: what Platform and Stack use of one."""

    name = "hub container"

    def __init__(self, settings: Settings, image: str, container: str) -> None:
        self.settings, self.image, self.container = settings, image, container

    def start(self, timeout: float = 120) -> ContainerisedHub:
        state = self.settings.hub.state_dir
        state.mkdir(mode=0o700, exist_ok=True)
        if os.getuid() == 0:  # the hub never runs as root: give its state to the image's account
            os.chown(state, 999, 100)
        single_node.up(self.settings, image=self.image, name=self.container, timeout=timeout)
        return self

    def running(self) -> bool:
        inspect = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", self.container],
                                 capture_output=True, text=True)
        return inspect.stdout.strip() == "true"

    def stop(self) -> None:
        single_node.down(self.settings, name=self.container)

    def log_tail(self, lines: int = 30) -> str:
        logs = subprocess.run(["docker", "logs", "--tail", str(lines), self.container], capture_output=True, text=True)
        return logs.stdout + logs.stderr


def start_platform(root: Path, *, issuer: str | None = None, batch_limit: int = 1, sections: dict | None = None,
                   hub_image: str | None = None, extra_config: str = "", public_host: str = "127.0.0.1",
                   datasets: tuple[dict, ...] = (), **hub: object) -> Platform:
    """Start IdP (unless ``issuer`` points elsewhere), proxy and hub under ``root``; with
    ``hub_image``, the hub runs in a container of that image (``medhub up``) instead.
    ``extra_config`` is JupyterHub configuration loaded last (``hub.extra_config``);
    ``public_host`` the address the proxy serves on (a users' network's gateway for containers);
    ``datasets`` more catalog entries."""
    root.mkdir(parents=True, exist_ok=True)
    accounts = make_accounts()
    client_secret = secrets.token_urlsafe(24)
    public_url = f"http://{public_host}:{free_port()}"
    observer_token = secrets.token_hex(16)
    (root / "observer_config.py").write_text(OBSERVER_CONFIG.format(token=observer_token) + extra_config)
    stack = Stack()
    idp = None
    try:
        if issuer is None:
            idp = DevIdentityProvider(
                state_dir=root / "idp",
                port=free_port(),
                accounts=tuple(accounts.values()),
                clients=(Client("medhub-test", client_secret, (public_url + "/hub/oauth_callback",),
                                (public_url + "/hub/login",)),),
                access_token_ttl=TOKEN_TTL,
                id_token_ttl=TOKEN_TTL,
            )
            stack.start(idp_process(idp, root / "logs"))
            issuer = idp.issuer
        # the hub's container would have to own trial-ct to publish into it: the data-owner tests
        # (test_access) run with the hub process
        settings = load(write_settings(root, issuer, client_secret, public_url=public_url, batch_limit=batch_limit,
                                       sections=sections, datasets=datasets, trial=hub_image is None, **hub))
        if hub_image:
            hub_proc = stack.start(ContainerisedHub(settings, hub_image, f"medhub-test-{root.name}"), timeout=180)
        else:
            stack.start(proxy_process(settings))
            hub_proc = stack.start(hub_process(settings), timeout=120)
    except BaseException:
        stack.stop()
        raise
    return Platform(root, settings, idp, accounts, observer_token, stack, hub_proc)


def stop_platform(platform: Platform) -> None:
    """Stop every server (named ones too: a failed test may leave one), then the processes, even
    when the hub no longer answers."""
    for client in platform.clients:
        client.close()
    try:
        # Servers outlive the hub by design (cleanup_servers = false): stop them through the API.
        users = platform.api("GET", "/users").json() if platform.hub.running() else []
        for user in users:
            for name in user["servers"]:
                platform.api("DELETE", f"/users/{user['name']}/servers/{name}")
        for user in users:
            deadline = time.monotonic() + 30
            while platform.api("GET", f"/users/{user['name']}").json()["servers"] and time.monotonic() < deadline:
                time.sleep(0.3)
    finally:
        platform.stack.stop()


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    p = start_platform(tmp_path_factory.mktemp("platform"))
    try:
        yield p
    finally:
        stop_platform(p)
