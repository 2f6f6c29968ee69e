"""The medhub settings file: one TOML file, read into one typed model that configures the hub.

The file is read once into :class:`Settings` and validated completely; every error names the
file, the setting (``oidc.issuer``) and the fix. :mod:`medhub.config` turns the settings into
JupyterHub traits, for every deployment. Nothing else reads the file. Each field's docstring
is its documentation: ``medhub settings-reference`` writes the README's configuration
reference from them (:mod:`medhub.settings_reference`).

The model is pydantic (v2), not traitlets: the settings file is nested data (tables, arrays of
tables) read from TOML, not the options of a configurable application. pydantic validates it
strictly by type (``"yes"`` is no boolean), refuses unknown keys at any depth, reports every
error with its location in the file, and keeps one declaration per setting: its type, its
default and its documentation. traitlets would put medhub's settings in JupyterHub's own
configuration namespace, where they would be neither nested nor checked for unknown keys.

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
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError,
                      ValidationInfo, field_validator, model_validator)

from medlib.contract import SLUG, SLUG_RULE

from . import docker_network
from .catalog import SENSITIVITIES, Dataset, load_catalog
from .errors import HubConfigError
from .tomlfile import read_toml

SETTINGS_ENV = "MEDHUB_SETTINGS"
CLIENT_SECRET_ENV = "MEDHUB_OIDC_CLIENT_SECRET"
MEMORY = re.compile(r"^\d+(\.\d+)?[KMGT]?$")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class SettingError(ValueError):
    """A setting's value is wrong; ``key`` names the setting when a check of its whole table
    finds it (a check of one field needs none)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def _path(value: Any, info: ValidationInfo) -> Path:
    """A path setting: ``~`` expanded, relative to the settings file."""
    if not isinstance(value, (str, Path)):
        raise SettingError(f"must be str (a path), not {value!r}")
    path = Path(value).expanduser()
    base = (info.context or {}).get("base", Path.cwd())
    return path if path.is_absolute() else (base / path).resolve()


def _strings(value: tuple[str, ...]) -> tuple[str, ...]:
    if not all(value):
        raise SettingError("must be a list of non-empty strings")
    return value


def _port(value: int) -> int:
    if not 0 < value < 65536:
        raise SettingError("must be a TCP port number (1-65535)")
    return value


def _at_least(minimum: int, unit: str = "", why: str = "") -> AfterValidator:
    def check(value: int) -> int:
        if value < minimum:
            raise SettingError(f"must be {minimum}{unit} or more{why}")
        return value
    return AfterValidator(check)


def _slug(value: str) -> str:
    if not SLUG.match(value):
        raise SettingError(f"{value!r} is not a slug ({SLUG_RULE})")
    return value


FilePath = Annotated[Path, BeforeValidator(_path)]
Strings = Annotated[tuple[str, ...], Field(strict=False), AfterValidator(_strings)]
Port = Annotated[int, AfterValidator(_port)]
Slug = Annotated[str, AfterValidator(_slug)]


class Table(BaseModel):
    """A table of the settings file: typed strictly, unknown keys refused, read-only."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True)


class HubSettings(Table):
    """``[hub]``: where the hub runs and what it reads."""

    public_url: str = "http://127.0.0.1:8000"
    """Where users reach medhub. Plain http only on loopback (or with `insecure_http`)."""
    institution: str = ""
    """The institution's name, on the login and home pages ("": none named)."""
    hub_port: Port = 8081
    """The hub's own HTTP port (its API, which servers call)."""
    proxy_api_port: Port = 8001
    """The proxy's REST API port, on loopback."""
    state_dir: FilePath = Field(Path("state"), validate_default=True)
    """Database, cookie secret, crypt key, proxy token (all 0600), grants key, audit log, logs."""
    spawner: Literal["local", "docker"] = "local"
    """`local` (demo and tests: servers are processes of the hub's account) or `docker`
    (production: one unprivileged container per server). On Kubernetes the spawner is
    KubeSpawner, whatever this says."""
    cleanup_servers: bool = False
    """Stop user servers when the hub stops. False keeps them running across hub restarts (the
    proxy keeps their routes, users keep their sessions)."""
    start_timeout: int = 120
    """Seconds a server may take to start."""
    extra_config: FilePath | None = None
    """A JupyterHub config file loaded last, for what the settings do not cover."""
    catalog: FilePath | None = None
    """The dataset catalog (its own TOML file, below); none: no datasets."""
    tls_cert: FilePath | None = None
    """A PEM certificate (chain) the proxy serves https with (`public_url` must be https);
    without it, terminate TLS in front of the proxy."""
    tls_key: FilePath | None = None
    """The certificate's private key (PEM)."""
    insecure_http: bool = False
    """Allow a plain-http `public_url` on a non-loopback host: only behind a TLS-terminating
    front end on a trusted network."""

    @model_validator(mode="after")
    def _check(self) -> HubSettings:
        _url(self.public_url, "public_url", plain_http=self.insecure_http)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingError("give both tls_cert and tls_key, or neither",
                               "tls_key" if self.tls_key is None else "tls_cert")
        for key in ("tls_cert", "tls_key", "extra_config"):
            path = getattr(self, key)
            if path is not None and not path.is_file():
                raise SettingError(f"{path} is not a file", key)
        if self.tls_cert is not None and not self.public_url.startswith("https://"):
            raise SettingError("must be https:// when tls_cert is given (the proxy then serves TLS)", "public_url")
        if self.catalog is not None and not self.catalog.is_file():
            raise SettingError(f"{self.catalog} is not a file; see 'Dataset catalog' in README.md", "catalog")
        return self

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")


def _url(value: str, key: str | None = None, plain_http: bool = False) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SettingError(f"must be an http(s) URL, not {value!r}", key)
    if parsed.scheme == "http" and parsed.hostname not in LOOPBACK and not plain_http:
        raise SettingError(f"{value!r} uses plain http on a non-loopback host; use https", key)
    return value.rstrip("/")


class OIDCSettings(Table):
    """``[oidc]``: the institution's OpenID Connect identity provider."""

    issuer: Annotated[str, AfterValidator(_url)]
    """The issuer URL; endpoints come from its discovery document."""
    client_id: Annotated[str, Field(min_length=1)]
    """medhub's client id at the IdP."""
    client_secret: str = Field("", repr=False)
    """The client secret, inline; better `client_secret_file`, or `$MEDHUB_OIDC_CLIENT_SECRET`."""
    client_secret_file: FilePath | None = None
    """A file holding the client secret (read at start)."""
    scopes: Strings = ("openid", "profile", "email", "groups")
    """Scopes asked of the IdP; must include `openid`."""
    username_claim: str = "sub"
    """The claim that names the hub user: `sub`, the one claim OpenID Connect promises stable and
    unique. Another (`preferred_username`, `email`) is refused unless `username_claim_stable`.
    The hub user is the claim's value as given (`Alice` and `alice` are two users)."""
    username_claim_stable: bool = False
    """Say that the IdP lets no user edit `username_claim` and never hands it to another person."""
    groups_claim: str = "groups"
    """The claim listing the user's groups."""
    allowed_groups: Strings = ()
    """IdP groups whose members may log in (with every course's groups)."""
    admin_groups: Strings = ()
    """IdP groups whose members are hub admins."""
    refresh_age: int = 300
    """Seconds between checks of a user's tokens; they are refreshed before they expire, and
    each check reads the groups again: a user the IdP has removed from every allowed group has
    their servers stopped and their API tokens refused until a login, which is then refused."""
    login_service: str = "your institution"
    """The identity provider's name, on the login button and page ("Sign in with ...")."""

    @model_validator(mode="before")
    @classmethod
    def _read_secret(cls, data: Any, info: ValidationInfo) -> Any:
        """The secret from the file, the environment or the table, in that order."""
        if not isinstance(data, dict):
            return data
        inline, path = data.get("client_secret"), data.get("client_secret_file")
        if inline and path:
            raise SettingError("set either client_secret or client_secret_file, not both", "client_secret")
        if path:
            file = _path(path, info)
            try:
                return {**data, "client_secret": file.read_text().strip()}
            except OSError as e:
                raise SettingError(f"cannot read {file}: {e.strerror}", "client_secret_file") from None
        secret = os.environ.get(CLIENT_SECRET_ENV, inline or "")
        if not secret:
            raise SettingError(f"no client secret: set oidc.client_secret_file or the {CLIENT_SECRET_ENV} "
                               "environment variable", "client_secret_file")
        return {**data, "client_secret": secret}

    @model_validator(mode="after")
    def _check(self) -> OIDCSettings:
        if self.username_claim != "sub" and not self.username_claim_stable:
            raise SettingError(
                f"{self.username_claim!r} may change or be reused at the identity provider (OpenID Connect promises "
                "only 'sub' stable and unique per user): a user who renames themselves there would become, or take "
                "over, another hub user. Use 'sub', or set oidc.username_claim_stable = true once you have made sure "
                "the IdP lets no user edit this claim and never hands it to another person", "username_claim")
        if "openid" not in self.scopes:
            raise SettingError("must include 'openid'", "scopes")
        if not self.allowed_groups and not self.admin_groups:
            raise SettingError("name at least one group whose members may log in", "allowed_groups")
        return self


def _gpus(value: Any) -> Any:
    if value == "all":
        return -1
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise SettingError(f"must be a number of GPUs or 'all', not {value!r}")
    return value


def _memory(value: str | None) -> str | None:
    if value is not None and not MEMORY.match(value):
        raise SettingError(f"{value!r} is not a size such as '8G' or '512M'")
    return value


class Profile(Table):
    """``[[profiles]]``: a server size a user picks in the spawn form (default: the four of
    `DEFAULT_PROFILES`: CPU only, 1 GPU, all GPUs, teaching)."""

    slug: Slug
    """Its id."""
    display_name: str
    """Its name in the spawn form."""
    description: str = ""
    """A line under the name."""
    cpu_limit: float | None = None
    """CPUs; none: no limit."""
    mem_limit: Annotated[str | None, AfterValidator(_memory)] = None
    """Memory, such as "8G"; none: no limit."""
    gpus: Annotated[int, BeforeValidator(_gpus)] = 0
    """GPUs: 0, a number, or "all" (on Kubernetes: `kubernetes.gpus_per_node`). A profile that
    needs more than the node has free is shown as unavailable, and refused."""
    shm_size: Annotated[str, AfterValidator(_memory)] = "1G"
    """Shared memory (`/dev/shm`) of its container: PyTorch's data-loader workers pass batches
    through it, and Docker's default (64M) stops them."""
    default: bool = False
    """The profile chosen unless the user picks another (at most one; none: the first)."""
    groups: Strings = ()
    """Offered only to members of these groups; empty: to everyone."""

    def offered_to(self, groups: Iterable[str]) -> bool:
        """Whether a member of ``groups`` may pick this profile."""
        return not self.groups or not set(self.groups).isdisjoint(groups)


class Course(Table):
    """``[[course]]``: a class working together under its instructors (:mod:`medhub.courses`)."""

    name: Slug
    """Its id."""
    instructors: str
    """The IdP group of its instructors."""
    students: str
    """The IdP group of its students, another than the instructors'."""
    materials: FilePath | None = None
    """A folder of course material, read-only at `~/courses/<name>` in every member's server."""
    datasets: Strings = ()
    """Catalog datasets the course uses; each must be granted to the students group."""
    profile: str = "teaching"
    """The profile of its teaching servers: they mount only the course's datasets."""

    @property
    def groups(self) -> tuple[str, str]:
        return self.instructors, self.students

    @model_validator(mode="after")
    def _check(self) -> Course:
        if self.instructors == self.students:
            raise SettingError("must be a different group from instructors", "students")
        if self.materials is not None and not self.materials.is_dir():
            raise SettingError(f"{self.materials} is not a folder", "materials")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Course:
        return cls.model_validate(d, strict=False)


class LocalSettings(Table):
    """``[local]``: the local spawner (demo and tests)."""

    home_root: FilePath | None = Field(None, json_schema_extra={"derived": "<hub.state_dir>/home"})
    """Per-user home folders."""


class DockerSettings(Table):
    """``[docker]``: the Docker spawner, and `medhub up`."""

    image: str = "medhub/notebook:latest"
    """The notebook image."""
    hub_image: str = "medhub/hub:latest"
    """The hub image `medhub up` runs."""
    home_volume: str = "medhub-home-{username}"
    """Each user's home volume."""
    home_mount: str = "/home/jovyan"
    """Where the home is mounted in the server (Kubernetes too)."""
    network: str = "medhub-users"
    """The users' bridge network medhub creates with traffic between containers off: a server
    reaches only its gateway, where the hub's API listens (`public_url` must then name an address
    they reach, not loopback); or "host" (see `shared_host_network`)."""
    subnet: str = "172.29.0.0/24"
    """The users' network's addresses; the hub listens on the first (the gateway)."""
    shared_host_network: bool = False
    """Allow `network = "host"`, which puts every server, kernel and Dask scheduler and the hub's
    internal ports on one loopback: only on a single-user test rig."""
    pids_limit: Annotated[int, _at_least(64, why=" (a notebook server alone runs dozens of threads)")] = 2048
    """Processes (and threads) a user's container may hold at once."""

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        try:
            subnet = ipaddress.ip_network(value)
        except ValueError:
            raise SettingError(f"{value!r} is not a network such as '172.29.0.0/24'") from None
        if subnet.num_addresses < 8:
            raise SettingError(f"{value} is too small for users' servers")
        return value


class CullerSettings(Table):
    """``[culler]``: jupyterhub-idle-culler as a hub service."""

    enabled: bool = True
    """Stop idle servers."""
    timeout: int = 3600
    """Seconds of inactivity before a server is stopped."""
    every: int = 300
    """Seconds between checks."""
    max_age: int = 0
    """Seconds after which a server is stopped even if active (0: never)."""
    cull_users: bool = False
    """Also delete users who have been idle (their home stays)."""


class AuditSettings(Table):
    """``[audit]``: the audit service, the tamper-evident log's only writer."""

    port: Port = 8082
    """Its port (on 127.0.0.1; in the hub pod on Kubernetes)."""
    fsync: Literal["always", "never"] = "always"
    """"always": every event is on disk before it is acknowledged; "never" only for tests."""
    syslog: str = ""
    """Also forward each event to `udp://host:port` or `tcp://host:port` (RFC 5424 carrying the
    DICOM audit message); empty: do not."""
    auditor_groups: Strings = Field((), json_schema_extra={"derived": "oidc.admin_groups"})
    """Groups whose tokens may read and export everyone's events; empty: `oidc.admin_groups`."""
    anchor_dir: FilePath | None = Field(None, json_schema_extra={"derived": '<hub.state_dir> + "-audit-anchor"'})
    """Where checkpoints are anchored: outside `hub.state_dir`, where cutting the log does not reach."""
    checkpoint_seconds: Annotated[int, _at_least(1)] = 60
    """A checkpoint at least this often while events come in."""

    @field_validator("syslog")
    @classmethod
    def _syslog(cls, value: str) -> str:
        if value and not re.match(r"^(udp|tcp)://[^:/]+:\d+$", value):
            raise SettingError(f"must be udp://host:port or tcp://host:port, not {value!r}")
        return value


class BatchSettings(Table):
    """``[batch]``: the batch service that runs notebooks with papermill in job servers."""

    port: Port = 8092
    """Its port (on 127.0.0.1; in the hub pod on Kubernetes)."""
    max_running_per_user: Annotated[int, _at_least(1)] = 2
    """Jobs holding a server at once per user; more wait in the queue."""
    job_token_ttl: Annotated[int, _at_least(60, " seconds")] = 3600
    """Seconds a job server's token lives (renewed while the job runs, revoked at its end)."""
    max_output_mb: Annotated[int, _at_least(1)] = 100
    """An executed notebook or log beyond this fails its job."""
    min_free_mb: Annotated[int, _at_least(0)] = 1024
    """Kept free from jobs' results on the state folder's disk (the audit log's)."""


class IngestSettings(Table):
    """``[ingest]``: the ingest service, where the hospitals' edge nodes deliver into versioned
    datasets and pick up the harvest requests addressed to them (:mod:`medhub.ingest`)."""

    port: Port = 8093
    """Its port (on 127.0.0.1; in the hub pod on Kubernetes)."""
    max_file_mb: Annotated[int, _at_least(1)] = 2048
    """A delivered file larger than this is refused."""
    min_free_mb: Annotated[int, _at_least(0)] = 1024
    """Kept free from deliveries on the state folder's disk (the audit log's)."""


class AccessSettings(Table):
    """``[access]``: the access service, where users ask for datasets with a purpose, an approval
    reference and an end date, and the datasets' owners grant, refuse and revoke
    (:mod:`medhub.access`)."""

    port: Port = 8095
    """Its port (on 127.0.0.1; in the hub pod on Kubernetes)."""
    enforce_seconds: Annotated[float, _at_least(0.5, " seconds")] = 30.0
    """How often ended grants are looked for: a server that mounts a grant that expired or was
    revoked is stopped within about this long."""
    self_approval: bool = False
    """Whether an owner may approve their own request (false: another owner, or an admin, decides)."""
    direct_download: Strings = ("anonymized",)
    """Sensitivities whose servers keep JupyterLab's download and the raw files URL; a server that
    mounts a dataset of another sensitivity has them off, and its outputs leave by export request."""
    export_max_mb: Annotated[int, _at_least(1)] = 100
    """The largest output an export request may carry."""
    export_download_hours: Annotated[int, _at_least(1, " hours")] = 72
    """How long an approved export stays downloadable by its requester."""
    small_cell_threshold: Annotated[int, _at_least(2)] = 10
    """Counts from 1 to one less than this in a table's whole-number columns are flagged to reviewers."""

    @field_validator("direct_download")
    @classmethod
    def _sensitivities(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(SENSITIVITIES))
        if unknown:
            raise SettingError(f"{', '.join(unknown)} is no sensitivity; choose from {', '.join(SENSITIVITIES)}")
        return value


class FederatedSettings(Table):
    """``[federated]``: cross-site training on an NVIDIA FLARE federation through the
    ``medhub-federated`` service, which alone holds the engine's admin credentials and submits
    recipes for users (:mod:`medhub.federated`)."""

    enabled: bool = False
    """Run the service; needs ``admin_kit``, ``admin`` and ``models_dataset``."""
    port: Port = 8094
    """Its port (on 127.0.0.1; in the hub pod on Kubernetes)."""
    admin_kit: FilePath | None = None
    """The engine's admin startup kit (the folder holding ``startup/fed_admin.json``): read by the
    service only, never by a user's server."""
    admin: str = ""
    """The admin identity of that kit, e.g. ``admin@hospital.org``."""
    sites: Strings = ()
    """The federation's sites that runs may name."""
    groups: Strings = ()
    """Groups whose members may start runs."""
    models_dataset: str = ""
    """The versioned catalog dataset each run's final model is published to, as a version with its
    provenance (sites, rounds, recipe digest, ε)."""
    round_timeout: Annotated[int, _at_least(10, " seconds")] = 3600
    """Seconds a round waits for a site's answer before going on without it."""
    poll_seconds: Annotated[float, _at_least(0)] = 2.0
    """How often the service follows its runs on the engine."""

    @model_validator(mode="after")
    def _check(self) -> FederatedSettings:
        if self.enabled:
            for key in ("admin_kit", "admin", "models_dataset"):
                if not getattr(self, key):
                    raise SettingError("must be set when enabled = true", key)
            if not (self.admin_kit / "startup" / "fed_admin.json").is_file():
                raise SettingError(f"{self.admin_kit} is no admin startup kit (no startup/fed_admin.json)", "admin_kit")
        return self


class Site(Table):
    """``[[site]]``: a hospital whose edge node (`medlib edge`) delivers data. Its edge signs in as
    the hub service `edge-<name>`; the token is `medhub site-token <name>`."""

    name: Slug
    """The site's id: lower-case letters, digits and '-'."""
    datasets: Strings
    """Versioned catalog datasets its edge may deliver to; nothing else."""
    description: str = ""
    """Shown to dataset owners choosing where to harvest."""


class KubernetesSettings(Table):
    """``[kubernetes]``: the Zero to JupyterHub deployment (`medhub k8s-values`)."""

    image: str | None = Field(None, json_schema_extra={"derived": "docker.image"})
    """The notebook image."""
    hub_image: str | None = Field(None, json_schema_extra={"derived": "docker.hub_image"})
    """The hub image (medhub's: the chart's own lacks medhub and its JupyterHub is too old)."""
    gpus_per_node: int = 0
    """GPUs of a node: needed for an "all GPUs" profile."""
    storage_capacity: str = "10Gi"
    """Each user's home volume."""
    datasets_claim_prefix: str = "medhub-dataset-"
    """Dataset `<id>` is the PersistentVolumeClaim `<prefix><id>`, mounted read-only."""
    grants_key_file: str = "/srv/jupyterhub/grants_signing_key.pem"
    """The key that signs grants manifests, in the hub pod's persistent volume."""
    state_dir: str = "/srv/jupyterhub/medhub"
    """The hub's state folder in the hub pod (its persistent volume): the batch service's jobs."""
    audit_claim: str = "medhub-audit"
    """The PersistentVolumeClaim of the audit log, mounted in the hub pod."""
    audit_anchor_claim: str = "medhub-audit-anchor"
    """The PersistentVolumeClaim where audit checkpoints are anchored (another volume)."""


class DaskGatewaySettings(Table):
    """``[dask_gateway]`` (Kubernetes): Dask clusters for users who outgrow one machine."""

    enabled: bool = False
    """Register a dask-gateway beside the hub and give users access."""
    service: str = "traefik-dask-gateway"
    """The gateway's proxy Service, in the hub's namespace."""
    idle_timeout: int = 1800
    """Seconds before an unused cluster is shut down (0: never)."""
    max_workers: Annotated[int, _at_least(1)] = 16
    """Workers per cluster."""


DEFAULT_PROFILES = (
    Profile(slug="cpu", display_name="CPU only", description="2 CPUs, 8 GB memory, no GPU", cpu_limit=2,
            mem_limit="8G", shm_size="2G", default=True),
    Profile(slug="gpu1", display_name="1 GPU", description="8 CPUs, 32 GB memory, one GPU", cpu_limit=8,
            mem_limit="32G", gpus=1, shm_size="8G"),
    Profile(slug="gpu-all", display_name="All GPUs", description="16 CPUs, 64 GB memory, every GPU of the node",
            cpu_limit=16, mem_limit="64G", gpus=-1, shm_size="16G"),
    Profile(slug="teaching", display_name="Teaching", description="1 CPU, 2 GB memory, no GPU: for courses",
            cpu_limit=1, mem_limit="2G", shm_size="512M"),
)


class Settings(Table):
    """The whole settings file. ``source`` is the file; ``datasets`` its catalog's entries."""

    oidc: OIDCSettings
    hub: HubSettings = HubSettings()
    local: LocalSettings = LocalSettings()
    docker: DockerSettings = DockerSettings()
    culler: CullerSettings = CullerSettings()
    audit: AuditSettings = AuditSettings()
    batch: BatchSettings = BatchSettings()
    ingest: IngestSettings = IngestSettings()
    access: AccessSettings = AccessSettings()
    federated: FederatedSettings = FederatedSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()
    dask_gateway: DaskGatewaySettings = DaskGatewaySettings()
    profiles: Annotated[tuple[Profile, ...], Field(strict=False)] = DEFAULT_PROFILES
    courses: Annotated[tuple[Course, ...], Field(strict=False, alias="course")] = ()
    sites: Annotated[tuple[Site, ...], Field(strict=False, alias="site")] = ()

    _source: Path = PrivateAttr(Path("medhub.toml"))
    _datasets: tuple[Dataset, ...] = PrivateAttr(())

    @model_validator(mode="before")
    @classmethod
    def _derived_defaults(cls, data: Any) -> Any:
        """Every table read from the file (relative paths are the file's), and the defaults that
        follow other settings filled in."""
        tables = [name for name, field in cls.model_fields.items()
                  if isinstance(field.annotation, type) and issubclass(field.annotation, Table)]
        if not isinstance(data, dict) or not all(isinstance(data.get(n, {}), dict) for n in tables):
            return data
        data = {name: {} for name in tables if name != "oidc"} | data
        hub, docker = data["hub"], data["docker"]
        state_dir = hub.get("state_dir", HubSettings.model_fields["state_dir"].default)
        local = {"home_root": str(Path(state_dir) / "home"), **data["local"]}
        kubernetes = {name: docker.get(name, DockerSettings.model_fields[name].default)
                      for name in ("image", "hub_image")} | data["kubernetes"]
        return {**data, "local": local, "kubernetes": kubernetes}

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Settings:
        self._check_network()
        if self.audit.anchor_dir is not None and self.audit.anchor_dir.is_relative_to(self.hub.state_dir.resolve()):
            raise SettingError(f"{self.audit.anchor_dir} lies inside hub.state_dir; anchor checkpoints outside it, "
                               "where cutting the log does not reach", "audit.anchor_dir")
        slugs = [p.slug for p in self.profiles]
        if not slugs:
            raise SettingError("must be a non-empty array of tables ([[profiles]]), or left out for the defaults",
                               "profiles")
        if len(set(slugs)) != len(slugs):
            raise SettingError(f"slugs must be unique, got {slugs}", "profiles")
        if sum(p.default for p in self.profiles) > 1:
            raise SettingError("at most one profile may be default = true", "profiles")
        names = [c.name for c in self.courses]
        if len(set(names)) != len(names):
            raise SettingError(f"names must be unique, got {names}", "course")
        names = [site.name for site in self.sites]
        if len(set(names)) != len(names):
            raise SettingError(f"names must be unique, got {names}", "site")
        for i, course in enumerate(self.courses):
            if course.profile not in slugs:
                raise SettingError(f"{course.profile!r} is not a profile; choose one of {', '.join(slugs)}",
                                   f"course[{i}].profile")
        return self

    def _check_network(self) -> None:
        """Users' containers on a network of their own, reaching the hub's public URL; the host's
        network only where its risk is accepted."""
        docker, hub = self.docker, self.hub
        if docker.network == "host":
            if hub.spawner == "docker" and not docker.shared_host_network:
                raise SettingError(
                    "'host' puts every user's kernels, Dask schedulers (unauthenticated) and the hub's internal "
                    "ports (the proxy's REST API, the audit writer) on one loopback that every user's code reaches. "
                    "Use the default users' network ('medhub-users'), or, on a single-user test rig only, set "
                    "docker.shared_host_network = true", "docker.network")
            return
        if hub.spawner == "docker" and urlparse(hub.public_url).hostname in LOOPBACK:
            raise SettingError(
                f"users' containers on {docker.network!r} cannot reach hub.public_url {hub.public_url} (loopback is "
                "each container's own): give public_url the host's name, or the network's gateway address "
                f"{docker_network.gateway(docker.subnet)}", "docker.network")

    def _read_catalog(self, source: Path) -> None:
        """Read the dataset catalog, and check the courses against it."""
        self._source = source
        if self.hub.catalog is None:
            self._check_models({})
            return
        course_groups = tuple(g for c in self.courses for g in c.groups)
        self._datasets = load_catalog(self.hub.catalog, known_groups=self.oidc.allowed_groups
                                      + self.oidc.admin_groups + course_groups)
        by_id = {d.id: d for d in self._datasets}
        for i, course in enumerate(self.courses):
            for dataset in course.datasets:
                where = f"{source}: course[{i}].datasets"
                if dataset not in by_id:
                    raise HubConfigError(f"{where}: {dataset!r} is not in the dataset catalog (hub.catalog)")
                if course.students not in by_id[dataset].groups:
                    raise HubConfigError(f"{where}: the catalog does not grant {dataset!r} to {course.students!r}; "
                                         "add the group to that dataset's groups")
        for i, site in enumerate(self.sites):
            for dataset in site.datasets:
                where = f"{source}: site[{i}].datasets"
                if dataset not in by_id:
                    raise HubConfigError(f"{where}: {dataset!r} is not in the dataset catalog (hub.catalog)")
                if not by_id[dataset].versioned:
                    raise HubConfigError(f"{where}: {dataset!r} is not versioned; sites deliver only into datasets "
                                         "catalogued with versioned = true")
        self._check_models(by_id)

    def _check_models(self, by_id: dict[str, Dataset]) -> None:
        models = self.federated.models_dataset
        if self.federated.enabled and not (models in by_id and by_id[models].versioned):
            raise HubConfigError(f"{self._source}: federated.models_dataset: {models!r} is not a versioned dataset of "
                                 "the catalog (hub.catalog); final models are published there as versions")

    @property
    def source(self) -> Path:
        """The settings file."""
        return self._source

    @property
    def datasets(self) -> tuple[Dataset, ...]:
        """The entries of the dataset catalog (``hub.catalog``)."""
        return self._datasets

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
        if self.audit.anchor_dir is not None:
            return self.audit.anchor_dir
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
        return self.hub.public_url + "/hub/oauth_callback"

    @property
    def default_profile(self) -> Profile:
        return next((p for p in self.profiles if p.default), self.profiles[0])


#: pydantic's error types → the kind of value a setting must have.
KINDS = {"bool": "bool", "int": "int", "float": "float", "string": "str", "tuple": "list", "list": "list",
         "model": "a table", "dict": "a table", "model_attributes": "a table"}


def _location(loc: tuple[int | str, ...]) -> str:
    """``("profiles", 0, "slug")`` → ``profiles[0].slug``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _message(error: dict[str, Any], source: Path) -> str:
    """One validation error as the line that tells the user what to fix."""
    loc, kind = tuple(error["loc"]), error["type"]
    if kind == "value_error" and isinstance(error.get("ctx", {}).get("error"), SettingError):
        cause = error["ctx"]["error"]
        if cause.key:
            loc = () if "." in cause.key else loc
            loc = (*loc, *cause.key.split("."))
        return f"{source}: {_location(loc)}: {cause}"
    if kind == "extra_forbidden":
        if len(loc) == 1:
            known = ", ".join(sorted(Settings.model_fields[f].alias or f for f in Settings.model_fields))
            return f"{source}: unknown section(s) {loc[0]}; known: {known}"
        return (f"{source}: [{_location(loc[:-1])}] has unknown setting(s) {loc[-1]}; see the configuration "
                "reference in README.md")
    if kind == "missing":
        if loc == ("oidc",):
            return f"{source}: the [oidc] section is required (issuer, client_id, client secret)"
        return f"{source}: {_location(loc)}: is required"
    base = re.sub(r"_(type|parsing|from_float)$", "", kind)
    if base in KINDS:
        return f"{source}: {_location(loc)}: must be {KINDS[base]}, not {error['input']!r}"
    if kind == "literal_error":
        return f"{source}: {_location(loc)}: must be {error['ctx']['expected']}, not {error['input']!r}"
    if kind in ("too_short", "string_too_short"):
        return f"{source}: {_location(loc)}: must not be empty"
    return f"{source}: {_location(loc)}: {error['msg']}"


def _validate(data: Any, source: Path) -> Settings:
    """``data`` read from ``source`` as :class:`Settings`; relative paths are ``source``'s.

    Raises:
        HubConfigError: every error, one a line, naming ``source`` and the setting.
    """
    try:
        return Settings.model_validate(data, context={"base": source.parent})
    except ValidationError as e:
        raise HubConfigError("\n".join(dict.fromkeys(_message(err, source) for err in e.errors()))) from None


#: What a settings document leaves out: secrets, and the files and folders of the machine it was
#: made on (the hub pod has its own: :class:`medhub.config.Deployment`).
NOT_IN_DOCUMENT = {"oidc": {"client_secret", "client_secret_file"}, "local": True, "audit": {"anchor_dir"},
                   "hub": {"catalog", "extra_config", "tls_cert", "tls_key", "state_dir"}}


def to_document(settings: Settings) -> dict[str, Any]:
    """``settings`` as JSON data for another machine (the hub pod): the validated settings,
    without secrets or local files, and the catalog's datasets (:func:`from_document`)."""
    data = settings.model_dump(mode="json", by_alias=True, exclude=NOT_IN_DOCUMENT)
    for course in data["course"]:
        course["materials"] = None  # a folder of this machine
    return {"settings": data, "datasets": [d.to_dict() for d in settings.datasets]}


def from_document(document: dict[str, Any], source: str | os.PathLike[str]) -> Settings:
    """The settings :func:`to_document` made; the client secret from ``$MEDHUB_OIDC_CLIENT_SECRET``.

    Raises:
        HubConfigError: naming ``source`` and the setting.
    """
    source = Path(source)
    settings = _validate(document["settings"], source)
    settings._source = source
    settings._datasets = tuple(Dataset.from_dict(d) for d in document["datasets"])
    return settings


def load(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read and validate a settings file.

    Args:
        path: the TOML file; defaults to ``$MEDHUB_SETTINGS``.

    Raises:
        HubConfigError: naming the file, the setting that is wrong and the fix (every error of
        the file, one per line).
    """
    if path is None:
        path = os.environ.get(SETTINGS_ENV)
        if not path:
            raise HubConfigError(f"no settings file: pass --settings FILE or set {SETTINGS_ENV}")
    source = Path(path).expanduser().resolve()
    settings = _validate(read_toml(source, "settings file"), source)
    settings._read_catalog(source)
    return settings
