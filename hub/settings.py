"""The medhub settings file: one TOML file that configures the whole hub.

The file is read once, validated completely and turned into typed settings; every error
names the setting (``oidc.issuer``) and the file. :mod:`medhub.config` turns the settings
into JupyterHub traits. Nothing else reads the file.

Example (the demo writes one like it)::

    [hub]
    public_url = "http://127.0.0.1:8000"
    state_dir = "state"
    spawner = "local"
    catalog = "datasets.toml"        # the dataset catalog (medhub.catalog)

    [oidc]
    issuer = "https://login.example-hospital.org/realms/research"
    client_id = "medhub"
    client_secret_file = "/etc/medhub/oidc-client-secret"
    allowed_groups = ["radiology-research"]
    admin_groups = ["medhub-admins"]
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from . import docker_network
from .catalog import Dataset, load_catalog
from .courses import Course, parse_courses
from .errors import HubConfigError
from .tomlfile import Section, read_toml

SETTINGS_ENV = "MEDHUB_SETTINGS"
CLIENT_SECRET_ENV = "MEDHUB_OIDC_CLIENT_SECRET"
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MEMORY = re.compile(r"^\d+(\.\d+)?[KMGT]?$")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Profile:
    """A server size a user picks in the spawn form."""

    slug: str
    display_name: str
    description: str = ""
    cpu_limit: float | None = None
    mem_limit: str | None = None
    gpus: int = 0  # 0: none, n: that many, -1: all
    default: bool = False
    groups: tuple[str, ...] = ()  # offered only to members of these groups; empty: to everyone

    def offered_to(self, groups: Iterable[str]) -> bool:
        """Whether a member of ``groups`` may pick this profile."""
        return not self.groups or not set(self.groups).isdisjoint(groups)


@dataclass(frozen=True)
class HubSettings:
    public_url: str = "http://127.0.0.1:8000"
    hub_port: int = 8081
    proxy_api_port: int = 8001
    state_dir: Path = Path("state")
    spawner: str = "local"
    cleanup_servers: bool = False
    start_timeout: int = 120
    extra_config: Path | None = None
    catalog: Path | None = None  # the dataset catalog (datasets.toml); none: no datasets
    tls_cert: Path | None = None  # PEM certificate (chain) the proxy serves https with
    tls_key: Path | None = None  # its private key
    insecure_http: bool = False  # allow a plain-http public_url on a non-loopback host (not advised)


@dataclass(frozen=True)
class OIDCSettings:
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    scopes: tuple[str, ...] = ("openid", "profile", "email", "groups")
    username_claim: str = "sub"  # stable and unique; another claim only with username_claim_stable
    username_claim_stable: bool = False  # the IdP lets no user change username_claim (say so to use one)
    groups_claim: str = "groups"
    allowed_groups: tuple[str, ...] = ()
    admin_groups: tuple[str, ...] = ()
    refresh_age: int = 300
    login_service: str = "your institution"
    client_secret_file: Path | None = None  # where the secret was read from, if from a file


@dataclass(frozen=True)
class LocalSettings:
    home_root: Path = Path("state/home")


@dataclass(frozen=True)
class DockerSettings:
    image: str = "medhub/notebook:latest"
    hub_image: str = "medhub/hub:latest"  # what `medhub up` runs
    home_volume: str = "medhub-home-{username}"
    home_mount: str = "/home/jovyan"
    network: str = "medhub-users"  # the users' bridge network (medhub.docker_network), or "host"
    subnet: str = "172.29.0.0/24"  # its addresses; the hub listens on the first (the gateway)
    shared_host_network: bool = False  # allow network = "host" although more than one user may log in
    pids_limit: int = 2048  # processes (and threads) a user's container may hold at once


@dataclass(frozen=True)
class CullerSettings:
    enabled: bool = True
    timeout: int = 3600
    every: int = 300
    max_age: int = 0
    cull_users: bool = False


@dataclass(frozen=True)
class AuditSettings:
    port: int = 8082  # the audit service, on 127.0.0.1
    fsync: str = "always"  # "always": each event is on disk before it is acknowledged
    syslog: str = ""  # forward every event to udp://host:port or tcp://host:port (RFC 5424)
    auditor_groups: tuple[str, ...] = ()  # whose tokens may read everyone's events; empty: oidc.admin_groups
    anchor_dir: str = ""  # where checkpoints are anchored, outside the state folder; empty: <state_dir>-audit-anchor
    checkpoint_seconds: int = 60  # a checkpoint at least this often while events come in


@dataclass(frozen=True)
class BatchSettings:
    port: int = 8092
    max_running_per_user: int = 2  # jobs holding a server at once; more wait in the queue
    job_token_ttl: int = 3600  # seconds a job server's token lives (renewed while the job runs)
    max_output_mb: int = 100  # an executed notebook or log beyond this fails its job
    min_free_mb: int = 1024  # the state folder's disk (the audit log's) keeps this free from jobs' results


@dataclass(frozen=True)
class KubernetesSettings:
    image: str = "medhub/notebook:latest"
    hub_image: str = "medhub/hub:latest"
    gpus_per_node: int = 0
    storage_capacity: str = "10Gi"
    datasets_claim_prefix: str = "medhub-dataset-"
    grants_key_file: str = "/srv/jupyterhub/grants_signing_key.pem"  # in the hub pod's persistent volume


@dataclass(frozen=True)
class DaskGatewaySettings:
    enabled: bool = False  # Kubernetes: users get Dask clusters from a dask-gateway beside the hub
    service: str = "traefik-dask-gateway"  # the gateway's proxy Service, in the hub's namespace
    idle_timeout: int = 1800  # seconds before an unused cluster is shut down (0: never)
    max_workers: int = 16  # per cluster


@dataclass(frozen=True)
class Settings:
    source: Path
    hub: HubSettings
    oidc: OIDCSettings
    local: LocalSettings
    docker: DockerSettings
    culler: CullerSettings
    audit: AuditSettings
    kubernetes: KubernetesSettings
    profiles: tuple[Profile, ...]
    datasets: tuple[Dataset, ...]
    courses: tuple[Course, ...] = ()
    batch: BatchSettings = BatchSettings()
    dask_gateway: DaskGatewaySettings = DaskGatewaySettings()

    @property
    def allowed_groups(self) -> tuple[str, ...]:
        """Groups whose members may log in: ``oidc.allowed_groups`` and every course's groups."""
        extra = [g for c in self.courses for g in c.groups]
        return tuple(dict.fromkeys(self.oidc.allowed_groups + tuple(extra)))

    @property
    def auditor_groups(self) -> tuple[str, ...]:
        """Groups whose tokens may read everyone's audit events: ``audit.auditor_groups``, or
        ``oidc.admin_groups`` when that is empty."""
        return self.audit.auditor_groups or self.oidc.admin_groups

    @property
    def audit_anchor(self) -> Path:
        """The folder outside the state folder where audit checkpoints are anchored."""
        if self.audit.anchor_dir:
            return Path(self.audit.anchor_dir)
        return self.hub.state_dir.with_name(self.hub.state_dir.name + "-audit-anchor")

    @property
    def users_network(self) -> bool:
        """Whether users' servers are containers on medhub's own network (not the host's)."""
        return self.hub.spawner == "docker" and self.docker.network != "host"

    @property
    def hub_url(self) -> str:
        """Where the hub's own HTTP server listens: on the users' network's gateway when servers
        are containers there (they call its API), else on loopback."""
        host = docker_network.gateway(self.docker.subnet) if self.users_network else "127.0.0.1"
        return f"http://{host}:{self.hub.hub_port}"

    @property
    def callback_url(self) -> str:
        return self.hub.public_url.rstrip("/") + "/hub/oauth_callback"

    @property
    def default_profile(self) -> Profile:
        return next((p for p in self.profiles if p.default), self.profiles[0])


DEFAULT_PROFILES = (
    Profile("cpu", "CPU only", "2 CPUs, 8 GB memory, no GPU", 2, "8G", 0, True),
    Profile("gpu1", "1 GPU", "8 CPUs, 32 GB memory, one GPU", 8, "32G", 1),
    Profile("gpu-all", "All GPUs", "16 CPUs, 64 GB memory, every GPU of the node", 16, "64G", -1),
    Profile("teaching", "Teaching", "1 CPU, 2 GB memory, no GPU: for courses", 1, "2G", 0),
)


def _url(section: Section, key: str, value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise section.error(key, f"must be an http(s) URL, not {value!r}")
    if parsed.scheme == "http" and parsed.hostname not in LOOPBACK:
        raise section.error(key, f"{value!r} uses plain http on a non-loopback host; use https")
    return value.rstrip("/")


def _hub(s: Section) -> HubSettings:
    d = HubSettings()
    insecure = s.get("insecure_http", bool, d.insecure_http)
    public_url = s.get("public_url", str, d.public_url)
    hub = HubSettings(
        public_url=public_url.rstrip("/") if insecure and public_url.startswith("http://")
        else _url(s, "public_url", public_url),
        hub_port=s.get("hub_port", int, d.hub_port),
        proxy_api_port=s.get("proxy_api_port", int, d.proxy_api_port),
        state_dir=s.path("state_dir", d.state_dir),
        spawner=s.get("spawner", str, d.spawner),
        cleanup_servers=s.get("cleanup_servers", bool, d.cleanup_servers),
        start_timeout=s.get("start_timeout", int, d.start_timeout),
        extra_config=s.path("extra_config", Path(".")) if "extra_config" in s.data else None,
        catalog=s.path("catalog", Path(".")) if "catalog" in s.data else None,
        tls_cert=s.path("tls_cert", Path(".")) if "tls_cert" in s.data else None,
        tls_key=s.path("tls_key", Path(".")) if "tls_key" in s.data else None,
        insecure_http=insecure,
    )
    if (hub.tls_cert is None) != (hub.tls_key is None):
        raise s.error("tls_key" if hub.tls_key is None else "tls_cert", "give both tls_cert and tls_key, or neither")
    for key in ("tls_cert", "tls_key"):
        path = getattr(hub, key)
        if path is not None and not path.is_file():
            raise s.error(key, f"{path} is not a file")
    if hub.tls_cert is not None and not hub.public_url.startswith("https://"):
        raise s.error("public_url", "must be https:// when tls_cert is given (the proxy then serves TLS)")
    if hub.spawner not in ("local", "docker"):
        raise s.error("spawner", f"must be 'local' or 'docker', not {hub.spawner!r}")
    if hub.extra_config is not None and not hub.extra_config.is_file():
        raise s.error("extra_config", f"{hub.extra_config} is not a file")
    if hub.catalog is not None and not hub.catalog.is_file():
        raise s.error("catalog", f"{hub.catalog} is not a file; see 'Dataset catalog' in README.md")
    for key in ("hub_port", "proxy_api_port"):
        if not 0 < getattr(hub, key) < 65536:
            raise s.error(key, "must be a TCP port number (1-65535)")
    s.done()
    return hub


def _check_network(s: Section, docker: DockerSettings, hub: HubSettings) -> None:
    """Users' containers on a network of their own, reaching the hub's public URL; the host's
    network only where its risk is accepted."""
    if docker.pids_limit < 64:
        raise s.error("pids_limit", "must be 64 or more (a notebook server alone runs dozens of threads)")
    if docker.network == "host":
        if hub.spawner == "docker" and not docker.shared_host_network:
            raise s.error("network", "'host' puts every user's kernels, Dask schedulers (unauthenticated) and the "
                                     "hub's internal ports (the proxy's REST API, the audit writer) on one loopback "
                                     "that every user's code reaches. Use the default users' network "
                                     "('medhub-users'), or, on a single-user test rig only, set "
                                     "docker.shared_host_network = true")
        return
    try:
        subnet = ipaddress.ip_network(docker.subnet)
    except ValueError:
        raise s.error("subnet", f"{docker.subnet!r} is not a network such as '172.29.0.0/24'") from None
    if subnet.num_addresses < 8:
        raise s.error("subnet", f"{docker.subnet} is too small for users' servers")
    host = urlparse(hub.public_url).hostname
    if hub.spawner == "docker" and host in LOOPBACK:
        raise s.error("network", f"users' containers on {docker.network!r} cannot reach hub.public_url "
                                 f"{hub.public_url} (loopback is each container's own): give public_url the host's "
                                 f"name, or the network's gateway address {docker_network.gateway(docker.subnet)}")


def _client_secret(s: Section) -> tuple[str, Path | None]:
    """The client secret, and the file it was read from (None: inline or from the environment)."""
    inline = s.get("client_secret", str, "")
    path = s.get("client_secret_file", str, "")
    if inline and path:
        raise s.error("client_secret", "set either client_secret or client_secret_file, not both")
    if path:
        file = Path(path).expanduser()
        file = file if file.is_absolute() else s.source.parent / file
        try:
            secret = file.read_text().strip()
        except OSError as e:
            raise s.error("client_secret_file", f"cannot read {file}: {e.strerror}") from None
    else:
        file, secret = None, os.environ.get(CLIENT_SECRET_ENV, inline)
    if not secret:
        raise s.error(
            "client_secret_file",
            f"no client secret: set oidc.client_secret_file or the {CLIENT_SECRET_ENV} environment variable",
        )
    return secret, file


def _oidc(s: Section) -> OIDCSettings:
    d = OIDCSettings("", "", "")
    secret, secret_file = _client_secret(s)
    oidc = OIDCSettings(
        issuer=_url(s, "issuer", s.get("issuer", str)),
        client_id=s.get("client_id", str),
        client_secret=secret,
        client_secret_file=secret_file,
        scopes=s.strings("scopes", d.scopes),
        username_claim=s.get("username_claim", str, d.username_claim),
        username_claim_stable=s.get("username_claim_stable", bool, d.username_claim_stable),
        groups_claim=s.get("groups_claim", str, d.groups_claim),
        allowed_groups=s.strings("allowed_groups"),
        admin_groups=s.strings("admin_groups"),
        refresh_age=s.get("refresh_age", int, d.refresh_age),
        login_service=s.get("login_service", str, d.login_service),
    )
    if not oidc.client_id:
        raise s.error("client_id", "must not be empty")
    if oidc.username_claim != "sub" and not oidc.username_claim_stable:
        raise s.error("username_claim", f"{oidc.username_claim!r} may change or be reused at the identity provider "
                                        "(OpenID Connect promises only 'sub' stable and unique per user): a user who "
                                        "renames themselves there would become, or take over, another hub user. Use "
                                        "'sub', or set oidc.username_claim_stable = true once you have made sure the "
                                        "IdP lets no user edit this claim and never hands it to another person")
    if "openid" not in oidc.scopes:
        raise s.error("scopes", "must include 'openid'")
    if not oidc.allowed_groups and not oidc.admin_groups:
        raise s.error("allowed_groups", "name at least one group whose members may log in")
    s.done()
    return oidc


def _profiles(raw: Any, source: Path) -> tuple[Profile, ...]:
    if raw is None:
        return DEFAULT_PROFILES
    if not isinstance(raw, list) or not raw:
        raise HubConfigError(f"{source}: [[profiles]] must be a non-empty array of tables")
    profiles = []
    for i, item in enumerate(raw):
        s = Section(item, f"profiles[{i}]", source)
        gpus = s.get("gpus", (int, str), 0)
        if gpus == "all":
            gpus = -1
        if not isinstance(gpus, int) or gpus < -1:
            raise s.error("gpus", f"must be a number of GPUs or 'all', not {gpus!r}")
        p = Profile(
            slug=s.get("slug", str),
            display_name=s.get("display_name", str),
            description=s.get("description", str, ""),
            cpu_limit=s.get("cpu_limit", float, None),
            mem_limit=s.get("mem_limit", str, None),
            gpus=gpus,
            default=s.get("default", bool, False),
            groups=s.strings("groups"),
        )
        if not SLUG.match(p.slug):
            raise s.error("slug", f"{p.slug!r} is not a slug (lower-case letters, digits, '-')")
        if p.mem_limit is not None and not MEMORY.match(p.mem_limit):
            raise s.error("mem_limit", f"{p.mem_limit!r} is not a size such as '8G' or '512M'")
        s.done()
        profiles.append(p)
    slugs = [p.slug for p in profiles]
    if len(set(slugs)) != len(slugs):
        raise HubConfigError(f"{source}: [[profiles]] slugs must be unique, got {slugs}")
    if sum(p.default for p in profiles) > 1:
        raise HubConfigError(f"{source}: [[profiles]] at most one profile may be default = true")
    return tuple(profiles)


def _plain(s: Section, defaults: Any) -> Any:
    """A section whose keys are the fields of a dataclass of str, int, bool and tuple-of-str
    values, all optional; ``defaults`` is an instance holding each field's default."""
    def value(name: str, default: Any) -> Any:
        return s.strings(name, default) if isinstance(default, tuple) else s.get(name, type(default), default)

    values = {f.name: value(f.name, getattr(defaults, f.name)) for f in fields(defaults)}
    s.done()
    return replace(defaults, **values)


def load(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read and validate a settings file.

    Args:
        path: the TOML file; defaults to ``$MEDHUB_SETTINGS``.

    Raises:
        HubConfigError: naming the file and the setting that is wrong.
    """
    if path is None:
        path = os.environ.get(SETTINGS_ENV)
        if not path:
            raise HubConfigError(f"no settings file: pass --settings FILE or set {SETTINGS_ENV}")
    source = Path(path).expanduser().resolve()
    data = read_toml(source, "settings file")

    known = {"hub", "oidc", "local", "docker", "culler", "audit", "kubernetes", "profiles", "course", "batch",
             "dask_gateway"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise HubConfigError(f"{source}: unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if "oidc" not in data:
        raise HubConfigError(f"{source}: the [oidc] section is required (issuer, client_id, client secret)")

    def section(name: str) -> Section:
        return Section(data.get(name, {}), name, source)

    hub = _hub(section("hub"))
    local = section("local")
    local_settings = LocalSettings(home_root=local.path("home_root", hub.state_dir / "home"))
    local.done()
    docker_section = section("docker")
    docker_settings = _plain(docker_section, DockerSettings())
    _check_network(docker_section, docker_settings, hub)
    culler_settings = _plain(section("culler"), CullerSettings())
    audit_section = section("audit")
    audit_settings = _plain(audit_section, AuditSettings())
    if audit_settings.fsync not in ("always", "never"):
        raise audit_section.error("fsync", "must be 'always' (production) or 'never' (tests only)")
    if audit_settings.syslog and not re.match(r"^(udp|tcp)://[^:/]+:\d+$", audit_settings.syslog):
        raise audit_section.error("syslog", f"must be udp://host:port or tcp://host:port, not {audit_settings.syslog!r}")
    if audit_settings.anchor_dir:
        anchor = audit_section.path("anchor_dir", Path("."))
        if anchor.is_relative_to(hub.state_dir.resolve()):
            raise audit_section.error("anchor_dir", f"{anchor} lies inside hub.state_dir; anchor checkpoints outside "
                                                    "it, where cutting the log does not reach")
        audit_settings = replace(audit_settings, anchor_dir=str(anchor))
    if audit_settings.checkpoint_seconds < 1:
        raise audit_section.error("checkpoint_seconds", "must be 1 or more")
    k8s_settings = _plain(section("kubernetes"), KubernetesSettings(image=docker_settings.image, hub_image=docker_settings.hub_image))
    batch_section = section("batch")
    batch_settings = _plain(batch_section, BatchSettings())
    if batch_settings.max_running_per_user < 1:
        raise batch_section.error("max_running_per_user", "must be 1 or more")
    if batch_settings.max_output_mb < 1:
        raise batch_section.error("max_output_mb", "must be 1 or more")
    if batch_settings.min_free_mb < 0:
        raise batch_section.error("min_free_mb", "must be 0 or more")
    if batch_settings.job_token_ttl < 60:
        raise batch_section.error("job_token_ttl", "must be 60 seconds or more")
    gateway_section = section("dask_gateway")
    gateway_settings = _plain(gateway_section, DaskGatewaySettings())
    if gateway_settings.max_workers < 1:
        raise gateway_section.error("max_workers", "must be 1 or more")
    oidc = _oidc(section("oidc"))
    course_groups = tuple(g for c in data.get("course") or () if isinstance(c, dict)
                          for g in (c.get("instructors"), c.get("students")) if isinstance(g, str))
    datasets = load_catalog(hub.catalog, known_groups=oidc.allowed_groups + oidc.admin_groups + course_groups) \
        if hub.catalog else ()
    profiles = _profiles(data.get("profiles"), source)
    return Settings(
        source=source,
        hub=hub,
        oidc=oidc,
        local=local_settings,
        docker=docker_settings,
        culler=culler_settings,
        audit=audit_settings,
        kubernetes=k8s_settings,
        profiles=profiles,
        datasets=datasets,
        courses=parse_courses(data.get("course"), source, datasets, tuple(p.slug for p in profiles)),
        batch=batch_settings,
        dask_gateway=gateway_settings,
    )
