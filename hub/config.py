"""Settings → JupyterHub traits: the one function that decides the hub's configuration.

:func:`configure` sets the authenticator, the spawner, the services, roles, scopes and hooks
from :class:`medhub.settings.Settings`, for every deployment: ``jupyterhub_config.py`` calls it
for ``medhub run``, ``medhub up`` and ``medhub demo`` (a process, or the hub container), and
the hub pod of Zero to JupyterHub calls it through ``hub.extraConfig`` (:func:`configure_pod`)
with the settings :mod:`medhub.k8s` put in the chart's values. What differs between the two is
only where things are, and it is all in :class:`Deployment`: the state folder, where the
services listen and how servers reach the hub. On Kubernetes the chart decides the rest of the
process (bind addresses, proxy, database, cookie secret) and the shape of users' pods (image,
storage, the profiles' resources); everything medhub decides comes from here.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlets.config import Config

from medlib import contract

from . import child, k8s
from .audit import hooks as audit_hooks
from .access.service import ADMIN_SCOPE as ACCESS_ADMIN
from .audit.service import READ_ALL
from .auth import OIDCAuthenticator
from .courses import instructor_role
from .service_auth import BIND_ENV
from .settings import SETTINGS_ENV, Settings, from_document
from .spawner import MedhubDockerSpawner, MedhubLocalSpawner
from .state import StateDir

PROXY_TOKEN_ENV = "CONFIGPROXY_AUTH_TOKEN"
BATCH_SERVICE = contract.BATCH_SERVICE
CULLER_SERVICE = "idle-culler"
TEMPLATES = Path(__file__).with_name("templates")
_TEACHING = f"user-redirect/lab/tree/{contract.NOTEBOOKS_FOLDER}"
#: The home page's links (paths under the hub's base URL): name, where, what it is.
HOME_LINKS = (
    ("My datasets", f"{_TEACHING}/{contract.WELCOME_NOTEBOOK}", "The datasets your groups may use, in your server"),
    ("Batch jobs", f"{_TEACHING}/5-batch-job.ipynb", "Run a notebook as a job, and see your jobs"),
    ("Data access", f"../services/{contract.ACCESS_SERVICE}/", "Ask for a dataset; owners: decide who reads theirs"),
    ("Deliveries", f"../services/{contract.INGEST_SERVICE}/", "Data owners: what the hospitals' edge nodes delivered"),
)


@dataclass(frozen=True)
class Deployment:
    """Where the hub runs: everything :func:`configure` decides differently by deployment."""

    kubernetes: bool
    state: StateDir  # the hub's state folder (batch jobs, the hub's audit writer token)
    service_host: str  # the host at which the proxy and the hub reach the services
    service_bind: str  # where the services listen ("": at service_host)
    servers_url: str  # the hub's public address as users' servers reach it
    audit_dir: Path
    audit_key_file: Path
    audit_anchor: Path
    grants_key: Path

    @classmethod
    def process(cls, settings: Settings) -> Deployment:
        """``medhub run``, ``medhub up``, ``medhub demo``: everything in ``hub.state_dir``,
        services on loopback, servers through the public URL."""
        state = StateDir(settings.hub.state_dir)
        state.ensure()
        return cls(False, state, "127.0.0.1", "", settings.hub.public_url, state.audit_dir, state.audit_key_file,
                   settings.audit_anchor, state.grants_key)

    @classmethod
    def pod(cls, settings: Settings) -> Deployment:
        """The hub pod of Zero to JupyterHub, with the volumes :func:`medhub.k8s.values` gives it:
        services in the pod behind the hub's Service, servers through the proxy's Service."""
        state = StateDir(Path(settings.kubernetes.state_dir))
        state.ensure()
        return cls(True, state, k8s.HUB_SERVICE, "0.0.0.0", f"http://{k8s.PROXY_SERVICE}", Path(k8s.AUDIT_MOUNT),
                   Path(k8s.AUDIT_KEY_MOUNT) / k8s.AUDIT_KEY, Path(k8s.AUDIT_ANCHOR_MOUNT),
                   Path(settings.kubernetes.grants_key_file))

    @property
    def access_store(self) -> Path:
        """The access service's database: personal grants, read by the spawners too."""
        return self.state.path / "access" / "access.sqlite"

    def service_url(self, port: int) -> str:
        return f"http://{self.service_host}:{port}"

    def service_environment(self) -> dict[str, str]:
        """What a service needs beyond JupyterHub's variables to listen where it should."""
        return {BIND_ENV: self.service_bind} if self.service_bind else {}


def _profile_dicts(settings: Settings) -> list[dict[str, Any]]:
    return [p.model_dump() for p in settings.profiles]


def culler_service(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The idle-culler hub service and its role, from ``[culler]``."""
    cull = settings.culler
    command = child.command(
        "jupyterhub_idle_culler",
        f"--timeout={cull.timeout}",
        f"--cull-every={cull.every}",
        f"--max-age={cull.max_age}",
    )
    if cull.cull_users:
        command.append("--cull-users=true")
    scopes = ["list:users", "read:users:activity", "read:servers", "delete:servers"]
    if cull.cull_users:
        scopes.append("admin:users")
    service = {"name": CULLER_SERVICE, "command": command}
    role = {"name": CULLER_SERVICE, "scopes": scopes, "services": [CULLER_SERVICE]}
    return service, role


def audit_services(settings: Settings, where: Deployment) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The audit service (the log's only writer), the hub's writer identity, and their roles."""
    name, writer = audit_hooks.AUDIT_SERVICE, audit_hooks.HUB_WRITER
    services = [
        {"name": name, "url": where.service_url(settings.audit.port), "display": False,
         "command": child.command("medhub.audit.service"),
         "environment": {"MEDHUB_AUDIT_DIR": str(where.audit_dir), "MEDHUB_AUDIT_KEY_FILE": str(where.audit_key_file),
                         "MEDHUB_AUDIT_HUB_WRITER": writer, "MEDHUB_AUDIT_FSYNC": settings.audit.fsync,
                         "MEDHUB_AUDIT_SYSLOG": settings.audit.syslog, "MEDHUB_AUDIT_ANCHOR": str(where.audit_anchor),
                         "MEDHUB_AUDIT_CHECKPOINT_SECONDS": str(settings.audit.checkpoint_seconds),
                         "MEDHUB_AUDIT_WRITERS": json.dumps({BATCH_SERVICE: "batch", contract.INGEST_SERVICE: "ingest",
                                                               contract.FEDERATED_SERVICE: "federated",
                                                               contract.ACCESS_SERVICE: "access"}),
                         **where.service_environment()}},
        {"name": writer, "api_token": where.state.audit_writer_token(), "display": False},
    ]
    access = f"access:services!service={name}"
    roles = [
        {"name": name, "scopes": ["read:users:groups", "read:users:name"], "services": [name]},
        {"name": writer, "scopes": [access], "services": [writer]},
        {"name": "medhub-auditors", "description": "Read everyone's audit events (a token must hold the scope itself)",
         "scopes": [READ_ALL, access], "groups": list(settings.auditor_groups)},
    ]
    return services, roles


def batch_service(settings: Settings, where: Deployment, audit_url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The batch service (:mod:`medhub.batch.service`) and its role: it starts and stops users'
    job servers, makes each job a token of its user that reaches only the job's server (its own
    token never goes to a server), and writes the jobs' audit events."""
    folder = where.state.path / "batch"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.json"
    config.write_text(json.dumps({
        "folder": str(folder), "public_url": where.servers_url,
        "max_running_per_user": settings.batch.max_running_per_user, "audit_url": audit_url,
        "job_token_ttl": settings.batch.job_token_ttl, "max_output_mb": settings.batch.max_output_mb,
        "min_free_mb": settings.batch.min_free_mb,
        "profiles": [{"slug": p.slug, "groups": list(p.groups)} for p in settings.profiles],
        "default_profile": settings.default_profile.slug,
        "datasets": [d.to_dict() for d in settings.datasets], "access_store": str(where.access_store),
    }))
    service = {"name": BATCH_SERVICE, "url": where.service_url(settings.batch.port), "display": False,
               "command": child.command("medhub.batch.service"),
               "environment": {"MEDHUB_BATCH_CONFIG": str(config), **where.service_environment()}}
    role = {"name": BATCH_SERVICE, "services": [BATCH_SERVICE],
            "scopes": ["read:users", "servers", "tokens", f"access:services!service={audit_hooks.AUDIT_SERVICE}"]}
    return service, role


def site_token(where: Deployment, site: str) -> str:
    """The API token of ``site``'s edge node (the hub service ``edge-<site>``), kept in the state folder."""
    return where.state.secret(f"{contract.EDGE_SERVICE_PREFIX}{site}-token")


def ingest_services(settings: Settings, where: Deployment, audit_url: str) -> tuple[list[dict], list[dict]]:
    """The ingest service (:mod:`medhub.ingest.service`), one hub service per site for its edge
    node, and their roles: an edge's token reaches the ingest service and nothing else."""
    folder = where.state.path / "ingest"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = folder / "config.json"
    config.write_text(json.dumps({
        "folder": str(folder), "audit_url": audit_url, "max_file_mb": settings.ingest.max_file_mb,
        "min_free_mb": settings.ingest.min_free_mb, "datasets": [d.to_dict() for d in settings.datasets],
        "sites": [site.model_dump() for site in settings.sites],
    }))
    name = contract.INGEST_SERVICE
    services = [{"name": name, "url": where.service_url(settings.ingest.port), "display": True,
                 "oauth_no_confirm": True,  # the hub's own page for owners: no consent screen
                 "command": child.command("medhub.ingest.service"),
                 "environment": {"MEDHUB_INGEST_CONFIG": str(config), **where.service_environment()}}]
    roles = [{"name": name, "services": [name],
              "scopes": ["read:users:groups", "read:users:name", f"access:services!service={audit_hooks.AUDIT_SERVICE}"]}]
    edges = [f"{contract.EDGE_SERVICE_PREFIX}{site.name}" for site in settings.sites]
    services += [{"name": edge, "api_token": site_token(where, site.name), "display": False}
                 for edge, site in zip(edges, settings.sites)]
    if edges:
        roles.append({"name": "medhub-edges", "description": "Sites' edge nodes: deliver to the ingest service",
                      "scopes": [f"access:services!service={name}"], "services": edges})
    return services, roles


def access_service(settings: Settings, where: Deployment, audit_url: str) -> tuple[dict[str, Any], list[dict]]:
    """The access service (:mod:`medhub.access.service`) and its roles: it reads users' groups and
    stops the servers whose grant ended; the platform admins' tokens may act as any dataset's
    owner (each such act audited as theirs)."""
    folder = where.access_store.parent
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = folder / "config.json"
    config.write_text(json.dumps({
        "store": str(where.access_store), "audit_url": audit_url, "enforce_seconds": settings.access.enforce_seconds,
        "self_approval": settings.access.self_approval, "datasets": [d.to_dict() for d in settings.datasets],
        "allowed_groups": list(settings.allowed_groups), "direct_download": list(settings.access.direct_download),
        "export_max_mb": settings.access.export_max_mb, "export_download_hours": settings.access.export_download_hours,
        "small_cell_threshold": settings.access.small_cell_threshold, "exports_dir": str(folder / "exports"),
        # published derivatives: where the spawners can mount them (not on Kubernetes: no claim for them)
        "publish_root": "" if where.kubernetes else str(where.state.path / "published"),
    }))
    name = contract.ACCESS_SERVICE
    service = {"name": name, "url": where.service_url(settings.access.port), "display": True,
               "oauth_no_confirm": True,  # the hub's own page: no consent screen
               "command": child.command("medhub.access.service"),
               "environment": {"MEDHUB_ACCESS_CONFIG": str(config), **where.service_environment()}}
    roles = [
        {"name": name, "services": [name],
         "scopes": ["read:users:groups", "read:users:name", "read:servers", "delete:servers",
                    f"access:services!service={audit_hooks.AUDIT_SERVICE}"]},
        {"name": "medhub-access-admins", "description": "Act as an owner of every dataset (audited as such)",
         "scopes": [ACCESS_ADMIN, f"access:services!service={name}"], "groups": list(settings.oidc.admin_groups)},
    ]
    return service, roles


def federated_service(settings: Settings, where: Deployment, audit_url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The federated service (:mod:`medhub.federated.service`) and its role. It reads the engine's
    admin startup kit; users reach it with their own tokens and never see the kit."""
    fed = settings.federated
    models = {d.id: d for d in settings.datasets}[fed.models_dataset]
    folder = where.state.path / "federated"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = folder / "config.json"
    config.write_text(json.dumps({
        "folder": str(folder), "audit_url": audit_url, "admin_kit": str(fed.admin_kit), "admin": fed.admin,
        "sites": list(fed.sites), "groups": list(fed.groups), "models_dataset": fed.models_dataset,
        "models_root": str(models.location), "round_timeout": fed.round_timeout, "poll_seconds": fed.poll_seconds,
    }))
    name = contract.FEDERATED_SERVICE
    service = {"name": name, "url": where.service_url(fed.port), "display": False,
               "command": child.command("medhub.federated.service"),
               "environment": {"MEDHUB_FEDERATED_CONFIG": str(config), **where.service_environment()}}
    role = {"name": name, "services": [name],
            "scopes": ["read:users:groups", "read:users:name", f"access:services!service={audit_hooks.AUDIT_SERVICE}"]}
    return service, role


def _chain(*hooks: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """One spawner hook that calls ``hooks`` in order (awaiting those that are async)."""
    async def hook(spawner: Any) -> None:
        for h in hooks:
            if inspect.isawaitable(done := h(spawner)):
                await done
    hook.__qualname__ = "+".join(h.__qualname__ for h in hooks)
    return hook


def _process(c: Config, settings: Settings, state: StateDir) -> None:
    """The hub's own process where medhub runs it: addresses, database, secrets, and the proxy
    medhub starts itself (:mod:`medhub.processes`), so that a hub restart leaves the proxy and
    every user's route in place. (On Kubernetes the chart decides these.)"""
    hub = settings.hub
    c.JupyterHub.bind_url = hub.public_url + "/"
    c.JupyterHub.hub_bind_url = settings.hub_url
    c.JupyterHub.db_url = f"sqlite:///{state.database}"
    c.JupyterHub.cookie_secret_file = str(state.cookie_secret)
    c.JupyterHub.pid_file = str(state.path / "jupyterhub.pid")
    c.JupyterHub.cleanup_servers = hub.cleanup_servers
    c.JupyterHub.cleanup_proxy = False
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{hub.proxy_api_port}"
    c.ConfigurableHTTPProxy.auth_token = os.environ.get(PROXY_TOKEN_ENV) or state.proxy_token()


def _pages(c: Config, settings: Settings) -> None:
    """The hub's pages in medhub's look (JupyterHub's template mechanism: ``hub/templates``
    extend JupyterHub's own), naming the institution and its identity provider."""
    c.JupyterHub.template_paths = [str(TEMPLATES)]
    c.JupyterHub.template_vars = {"medhub": {
        "institution": settings.hub.institution, "identity_provider": settings.oidc.login_service,
        "links": [{"name": name, "path": path, "title": title} for name, path, title in HOME_LINKS],
    }}


def _authenticator(c: Config, settings: Settings) -> None:
    oidc = settings.oidc
    c.JupyterHub.authenticator_class = OIDCAuthenticator
    a = c.OIDCAuthenticator
    a.issuer = oidc.issuer
    a.client_id = oidc.client_id
    a.client_secret = oidc.client_secret
    a.oauth_callback_url = settings.callback_url
    a.scope = list(oidc.scopes)
    a.username_claim = oidc.username_claim
    a.auth_state_groups_key = f"oauth_user.{oidc.groups_claim}"
    a.manage_groups = True
    a.allowed_groups = set(settings.allowed_groups)
    a.admin_groups = set(oidc.admin_groups)
    a.enable_auth_state = True
    a.enable_pkce = True
    a.refresh_pre_spawn = True
    a.auth_refresh_strict = True  # a user the IdP refuses (or has dropped from every allowed group) is refused on API tokens too
    a.auth_refresh_age = oidc.refresh_age
    a.login_service = oidc.login_service
    a.validate_server_cert = True


def _spawner(c: Config, settings: Settings, where: Deployment) -> Config:
    """The spawner class and what only it has; returns its config section."""
    if where.kubernetes:
        c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
        s = c.KubeSpawner
        s.profile_list = k8s.profiles_for_groups(settings)
        s.pre_spawn_hook = _chain(k8s.gpu_check_hook(settings),
                                  k8s.dataset_volumes_hook(settings.datasets, settings.kubernetes.datasets_claim_prefix,
                                                           str(where.grants_key), str(where.access_store),
                                                           settings.access.direct_download),
                                  audit_hooks.spawned)
        return s
    if settings.hub.spawner == "docker":
        c.JupyterHub.spawner_class = MedhubDockerSpawner
        s = c.MedhubDockerSpawner
        s.image = settings.docker.image
        s.network_name = settings.docker.network
        s.use_internal_ip = settings.users_network  # the proxy reaches each server at its address there
        s.home_volume = settings.docker.home_volume
        s.home_mount = settings.docker.home_mount
        s.notebook_dir = settings.docker.home_mount
        s.extra_create_kwargs = {"user": "1000:100"}
        s.extra_host_config = {"security_opt": ["no-new-privileges"], "cap_drop": ["ALL"],
                               "pids_limit": settings.docker.pids_limit}
    else:
        c.JupyterHub.spawner_class = MedhubLocalSpawner
        s = c.MedhubLocalSpawner
        s.home_dir_template = str(settings.local.home_root / "{username}")
        s.datasets_view_root = str(where.state.views_dir)
        s.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
    s.profiles = _profile_dicts(settings)
    s.datasets = [d.to_dict() for d in settings.datasets]
    s.courses = [course.to_dict() for course in settings.courses]
    s.grants_key_file = str(where.grants_key)  # medhub's spawners record their spawns (audit_hooks.spawned)
    s.access_store = str(where.access_store)
    s.direct_download = list(settings.access.direct_download)
    return s


def configure(c: Config, settings: Settings, where: Deployment | None = None) -> None:
    """Set every JupyterHub trait medhub decides from ``settings``, for the deployment ``where``
    (default: a process of ``medhub run``). Services, roles and tornado settings the deployment
    has already put in ``c`` (the chart's) are kept, medhub's added."""
    where = where or Deployment.process(settings)
    if not where.kubernetes:
        _process(c, settings, where.state)
    _pages(c, settings)
    _authenticator(c, settings)

    s = _spawner(c, settings, where)
    s.default_url = "/lab"
    s.start_timeout = settings.hub.start_timeout
    s.http_timeout = settings.hub.start_timeout
    s.post_stop_hook = audit_hooks.post_stop

    c.JupyterHub.custom_scopes = {READ_ALL: {"description": "Read every user's audit events, and export them."},
                                  ACCESS_ADMIN: {"description": "Decide on every dataset's access as its owners do."}}
    services, roles = audit_services(settings, where)
    # every user, on top of JupyterHub's default user role, may reach the audit and batch services
    user_scopes = {f"access:services!service={audit_hooks.AUDIT_SERVICE}", f"access:services!service={BATCH_SERVICE}",
                   f"access:services!service={contract.INGEST_SERVICE}",
                   f"access:services!service={contract.ACCESS_SERVICE}"}
    # a server's token may reach the audit service (its own events only: the service says who) and
    # the batch service (its user's jobs: a notebook submits one, 5-batch-job.ipynb)
    # and the access service (its user's requests and grants: medhub access, in a terminal of the server)
    token_scopes = ["users:activity!user", "access:servers!server", f"access:services!service={audit_hooks.AUDIT_SERVICE}",
                    f"access:services!service={BATCH_SERVICE}", f"access:services!service={contract.ACCESS_SERVICE}"]
    if where.kubernetes and settings.dask_gateway.enabled:
        user_scopes |= set(k8s.GATEWAY_USER_SCOPES)
        token_scopes += [scope for scope in k8s.GATEWAY_SERVER_TOKEN_SCOPES if scope not in token_scopes]
    if settings.federated.enabled:  # federated_fit in a notebook: the user's runs, with the server's token
        federated = f"access:services!service={contract.FEDERATED_SERVICE}"
        user_scopes.add(federated)
        token_scopes.append(federated)
    c.JupyterHub.extra_user_scopes = user_scopes
    s.server_token_scopes = token_scopes
    audit_url = f"http://127.0.0.1:{settings.audit.port}/services/{audit_hooks.AUDIT_SERVICE}/events"
    # servers reach the services through the proxy's public port, never at their internal ports
    s.environment = {contract.AUDIT_URL_ENV: f"{where.servers_url}/services/{audit_hooks.AUDIT_SERVICE}/events",
                     contract.URL_ENV: where.servers_url}
    if where.kubernetes and settings.dask_gateway.enabled:
        s.environment.update(k8s.gateway_environment(settings))
    service, role = batch_service(settings, where, audit_url)
    services.append(service)
    roles.append(role)
    more_services, more_roles = ingest_services(settings, where, audit_url)
    services += more_services
    roles += more_roles
    service, more_roles = access_service(settings, where, audit_url)
    services.append(service)
    roles += more_roles
    if settings.federated.enabled:
        service, role = federated_service(settings, where, audit_url)
        services.append(service)
        roles.append(role)
    # batch jobs run in named servers, batch-<job>; users may hold as many as jobs may run
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.named_server_limit_per_user = settings.batch.max_running_per_user + 1
    audit_hooks.configure(audit_url, where.state.audit_writer_token(), str(where.state.path / "audit-hub-buffer.jsonl"))
    c.JupyterHub.tornado_settings = {**c.JupyterHub.get("tornado_settings", {}), "log_function": audit_hooks.log_request}
    if settings.culler.enabled:
        service, role = culler_service(settings)
        services.append(service)
        roles.append(role)
    roles.extend(instructor_role(course) for course in settings.courses)
    c.JupyterHub.services = [*c.JupyterHub.get("services", []), *services]
    c.JupyterHub.load_roles = [*c.JupyterHub.get("load_roles", []), *roles]


def configure_pod(c: Config) -> None:
    """:func:`configure` in the hub pod of Zero to JupyterHub, from the settings document
    :func:`medhub.k8s.values` puts there, at ``$MEDHUB_SETTINGS`` (``hub.extraConfig`` calls this)."""
    path = os.environ[SETTINGS_ENV]
    settings = from_document(json.loads(Path(path).read_text()), path)
    configure(c, settings, Deployment.pod(settings))
