"""Settings → JupyterHub traits. The one place where the hub's configuration is decided.

``jupyterhub_config.py`` calls :func:`configure`; everything shared by the local and Docker
spawners is set here once, and ``hub.spawner`` picks the spawner class.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from traitlets.config import Config

from . import child
from .audit import hooks as audit_hooks
from .audit.service import READ_ALL
from .auth import OIDCAuthenticator
from .courses import instructor_role
from .settings import Settings
from .spawner import MedhubDockerSpawner, MedhubLocalSpawner
from .state import StateDir

PROXY_TOKEN_ENV = "CONFIGPROXY_AUTH_TOKEN"
BATCH_SERVICE = "medhub-batch"


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
    service = {"name": "idle-culler", "command": command}
    role = {"name": "idle-culler", "scopes": scopes, "services": ["idle-culler"]}
    return service, role


def audit_services(settings: Settings, state: StateDir) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The audit service (the log's only writer), the hub's writer identity, and their roles."""
    name, writer = audit_hooks.AUDIT_SERVICE, audit_hooks.HUB_WRITER
    services = [
        {"name": name, "url": f"http://127.0.0.1:{settings.audit.port}", "display": False,
         "command": child.command("medhub.audit.service"),
         "environment": {"MEDHUB_AUDIT_DIR": str(state.audit_dir), "MEDHUB_AUDIT_KEY_FILE": str(state.audit_key_file),
                         "MEDHUB_AUDIT_HUB_WRITER": writer, "MEDHUB_AUDIT_FSYNC": settings.audit.fsync,
                         "MEDHUB_AUDIT_SYSLOG": settings.audit.syslog, "MEDHUB_AUDIT_ANCHOR": str(settings.audit_anchor),
                         "MEDHUB_AUDIT_CHECKPOINT_SECONDS": str(settings.audit.checkpoint_seconds)}},
        {"name": writer, "api_token": state.audit_writer_token(), "display": False},
    ]
    access = f"access:services!service={name}"
    roles = [
        {"name": name, "scopes": ["read:users:groups", "read:users:name"], "services": [name]},
        {"name": writer, "scopes": [access], "services": [writer]},
        {"name": "medhub-auditors", "description": "Read everyone's audit events (a token must hold the scope itself)",
         "scopes": [READ_ALL, access], "groups": list(settings.auditor_groups)},
    ]
    return services, roles


def batch_service(settings: Settings, state: StateDir, audit_url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The batch service (:mod:`medhub.batch.service`) and its role: it starts and stops users'
    job servers, makes each job a token of its user that reaches only the job's server (its own
    token never goes to a server), and writes the jobs' audit events."""
    folder = state.path / "batch"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.json"
    config.write_text(json.dumps({
        "folder": str(folder), "public_url": settings.hub.public_url,
        "max_running_per_user": settings.batch.max_running_per_user, "audit_url": audit_url,
        "job_token_ttl": settings.batch.job_token_ttl, "max_output_mb": settings.batch.max_output_mb,
        "min_free_mb": settings.batch.min_free_mb,
        "profiles": [{"slug": p.slug, "groups": list(p.groups)} for p in settings.profiles],
        "default_profile": settings.default_profile.slug,
        "datasets": [d.to_dict() for d in settings.datasets],
    }))
    service = {"name": BATCH_SERVICE, "url": f"http://127.0.0.1:{settings.batch.port}", "display": False,
               "command": child.command("medhub.batch.service"),
               "environment": {"MEDHUB_BATCH_CONFIG": str(config)}}
    role = {"name": BATCH_SERVICE, "services": [BATCH_SERVICE],
            "scopes": ["read:users", "servers", "tokens", f"access:services!service={audit_hooks.AUDIT_SERVICE}"]}
    return service, role


def configure(c: Config, settings: Settings) -> None:
    """Set every JupyterHub trait medhub decides from ``settings``."""
    state = StateDir(settings.hub.state_dir)
    state.ensure()
    hub = settings.hub

    c.JupyterHub.bind_url = hub.public_url + "/"
    c.JupyterHub.hub_bind_url = settings.hub_url
    c.JupyterHub.db_url = f"sqlite:///{state.database}"
    c.JupyterHub.cookie_secret_file = str(state.cookie_secret)
    c.JupyterHub.pid_file = str(state.path / "jupyterhub.pid")
    c.JupyterHub.cleanup_servers = hub.cleanup_servers
    c.JupyterHub.cleanup_proxy = False

    # medhub runs configurable-http-proxy itself (see medhub.processes), so that a hub restart
    # leaves the proxy and every user's route in place.
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{hub.proxy_api_port}"
    c.ConfigurableHTTPProxy.auth_token = os.environ.get(PROXY_TOKEN_ENV) or state.proxy_token()

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

    if hub.spawner == "docker":
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
        s.datasets_view_root = str(state.views_dir)
        s.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
    s.profiles = _profile_dicts(settings)
    s.datasets = [d.to_dict() for d in settings.datasets]
    s.courses = [course.to_dict() for course in settings.courses]
    s.grants_key_file = str(state.grants_key)
    s.default_url = "/lab"
    s.start_timeout = hub.start_timeout
    s.http_timeout = hub.start_timeout

    s.pre_spawn_hook = audit_hooks.pre_spawn
    s.post_stop_hook = audit_hooks.post_stop

    c.JupyterHub.custom_scopes = {READ_ALL: {"description": "Read every user's audit events, and export them."}}
    services, roles = audit_services(settings, state)
    # every user, on top of JupyterHub's default user role, may reach the audit and batch services
    c.JupyterHub.extra_user_scopes = {f"access:services!service={audit_hooks.AUDIT_SERVICE}",
                                      f"access:services!service={BATCH_SERVICE}"}
    audit_url = f"http://127.0.0.1:{settings.audit.port}/services/{audit_hooks.AUDIT_SERVICE}/events"
    # servers reach the services through the proxy's public port, never at their internal ports
    s.environment = {"MEDHUB_AUDIT_URL": f"{hub.public_url}/services/{audit_hooks.AUDIT_SERVICE}/events",
                     "MEDHUB_URL": hub.public_url}
    service, role = batch_service(settings, state, audit_url)
    services.append(service)
    roles.append(role)
    services[0]["environment"]["MEDHUB_AUDIT_BATCH_WRITER"] = BATCH_SERVICE
    # batch jobs run in named servers, batch-<job>; users may hold as many as jobs may run
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.named_server_limit_per_user = settings.batch.max_running_per_user + 1
    # a server's token may reach the audit service (its own events only: the service says who)
    s.server_token_scopes = ["users:activity!user", "access:servers!server",
                             f"access:services!service={audit_hooks.AUDIT_SERVICE}"]
    audit_hooks.configure(audit_url, state.audit_writer_token(), str(state.path / "audit-hub-buffer.jsonl"))
    c.JupyterHub.tornado_settings = {"log_function": audit_hooks.log_request}
    if settings.culler.enabled:
        service, role = culler_service(settings)
        services.append(service)
        roles.append(role)
    roles.extend(instructor_role(course) for course in settings.courses)
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles
