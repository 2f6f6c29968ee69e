"""Spawners: a user's server, sized by a profile, seeing only its dataset grants.

:class:`ProfilesMixin` holds what every medhub spawner shares: the spawn form (one radio
button per profile), applying the chosen profile (CPU and memory limits, GPUs), the user's
identity and groups in the environment, and the datasets granted to those groups. The
concrete spawners only say how that reaches a process or a container:

- :class:`MedhubDockerSpawner` (production): the notebook image, GPUs as Docker device
  requests, a named per-user home volume, and read-only binds for granted datasets only.
- :class:`MedhubLocalSpawner` (demo and tests): a local process with a per-user home and a
  per-user folder of links to granted datasets; GPUs are chosen with CUDA_VISIBLE_DEVICES.
  It isolates nothing from the hub's own user: never use it in production.

A profile that needs more GPUs than the node has free (:mod:`medhub.gpus`) is shown as
unavailable and refused; a server that cannot start reaches its user as a sentence that says
what to do, and the audit log records the spawn as a failure.

Tokens never enter the environment except the server's own short-lived hub API token:
the identity provider's tokens stay in the hub's encrypted auth_state.
"""

from __future__ import annotations

import html
import inspect
import os
import pwd
from collections.abc import Callable
from pathlib import Path
from typing import Any

from docker.types import DeviceRequest
from dockerspawner import DockerSpawner
from jupyterhub.spawner import SimpleLocalProcessSpawner
from jupyterhub.utils import random_port
from tornado import web
from traitlets import Callable as CallableTrait
from traitlets import Dict, List, Unicode, default
from traitlets.config import Configurable

from medlib import contract

from . import grants
from .access import spawn as access_spawn
from .audit import hooks as audit_hooks
from .catalog import Dataset, granted
from .courses import check_start_by, courses_of, materials_for
from .gpus import GPUs, engine_devices, node_devices
from .settings import Course, Profile


#: What a teaching server's token loses: its course's instructors open it and run code in it, and
#: these services would act for the student beyond the server (jobs and runs with all the
#: student's grants, requests for data in the student's name).
NOT_FOR_TEACHING = frozenset(f"access:services!service={service}" for service in (
    contract.BATCH_SERVICE, contract.FEDERATED_SERVICE, contract.ACCESS_SERVICE))


def refusal(status: int, message: str) -> web.HTTPError:
    """An HTTP error whose ``message`` JupyterHub shows the user as it is (spawn form, progress page)."""
    error = web.HTTPError(status, message)
    error.jupyterhub_message = message
    return error


def docker_device_requests(gpus: int) -> list[DeviceRequest]:
    """Docker device requests for a profile's GPUs: none, ``gpus`` of them, or all (-1)."""
    if gpus == 0:
        return []
    return [DeviceRequest(count=gpus, capabilities=[["gpu"]])]


def cuda_visible_devices(gpus: int) -> str | None:
    """CUDA_VISIBLE_DEVICES for a local server: '' hides every GPU, None leaves all visible."""
    if gpus == 0:
        return ""
    if gpus < 0:
        return None
    return ",".join(str(i) for i in range(gpus))


class ProfilesMixin(Configurable):
    """Profiles, identity and grants shared by every medhub spawner."""

    mounts_read_only: bool  # whether the datasets reach the server read-only (each spawner says)

    profiles = List(
        Dict(),
        config=True,
        help="""Server profiles offered in the spawn form: dicts with slug, display_name,
        description, cpu_limit, mem_limit, gpus (0 none, n, -1 all) and default.""",
    )
    datasets = List(
        Dict(),
        config=True,
        help="The dataset catalog: dicts as :meth:`medhub.catalog.Dataset.to_dict` makes them.",
    )
    grants_key_file = Unicode(
        "",
        config=True,
        help="""The hub's Ed25519 key (PEM, created if missing) that signs each server's grants
        manifest. Empty: no manifest is given (medlib.datasets then finds no grants).""",
    )
    access_store = Unicode(
        "",
        config=True,
        help="""The access service's database (:mod:`medhub.access.store`): each user's personal
        grants in force are mounted with their groups' datasets, and which server mounts which
        grant is noted there, so that an ended grant stops that server. Empty: groups only.""",
    )
    direct_download = List(
        Unicode(),
        ["anonymized"],
        config=True,
        help="""Sensitivities whose servers keep direct downloads: a server that mounts a dataset of
        another sensitivity is started with them off (``MEDHUB_DOWNLOADS=off``:
        :mod:`medhub_jupyter.downloads`), and its outputs leave by export request.""",
    )
    courses = List(
        Dict(),
        config=True,
        help="""Courses (:meth:`medhub.courses.Course.to_dict`): their material is given
        read-only to the servers of their instructors and students, at ~/courses/<name>.""",
    )

    gpu_devices: Callable[[Any], Any] | None = CallableTrait(
        None,
        allow_none=True,
        config=True,
        help="""A function of the spawner returning the node's GPUs now (a list of any ids; it may be
        async). None: each spawner's live inventory (:meth:`node_gpus`).""",
    )
    start_error: str | None = None  # why the last spawn failed (the audit hook records it), or None

    @default("apply_user_options")
    def _default_apply_user_options(self):
        return type(self).apply_profile

    def _profiles(self) -> list[Profile]:
        """The profiles this user is offered: those without groups, and those of their groups."""
        groups = self.group_names()
        profiles = [Profile.model_validate(p, strict=False) for p in self.profiles]
        return [p for p in profiles if p.offered_to(groups)]

    def _courses(self) -> tuple[Course, ...]:
        return tuple(Course.from_dict(c) for c in self.courses)

    def teaching_courses(self) -> tuple[Course, ...]:
        """The user's courses whose profile this server was started with: none unless it is a
        teaching server."""
        return tuple(c for c in courses_of(self._courses(), self.group_names()) if c.profile == self.profile.slug)

    def course_instructors(self) -> list[Any]:
        """The hub's accounts (orm) of the instructors of the courses this teaching server is
        for, when its user is a student there: they may open it, and only such servers."""
        from jupyterhub import orm

        groups = self.group_names()
        found = [orm.Group.find(self.user.db, c.instructors) for c in self.teaching_courses() if c.students in groups]
        return [u for group in found if group is not None for u in group.users if u.name != self.user.name]

    _course_shares: list[str] = []  # whom start() shared this server with (kept in the spawner's state)

    async def start(self):
        """Share a student's teaching server with the course's instructors (JupyterHub shares: the
        student sees them), prepare what the server sees (:meth:`prepare_start`), then start it.
        Shares left from a run that ended without :meth:`stop` go first, so they never open a
        server that is not for teaching. Any failure reaches the user as a sentence (the reason
        is in the hub's log and, as ``start_error``, in the audit log's failed spawn)."""
        from jupyterhub import orm

        self._revoke_course_shares()
        instructors = self.course_instructors()
        for instructor in instructors:
            orm.Share.grant(self.user.db, self.orm_spawner, instructor)
        self._course_shares = [u.name for u in instructors]
        try:
            self._catalog = access_spawn.catalog(self.access_store, [Dataset.from_dict(d) for d in self.datasets])
            self._personal = access_spawn.personal_grants(self.access_store, self.user.name, self._catalog,
                                                          granted(self._catalog, self.group_names()))
            access_spawn.note_mounts(self.access_store, self.user.name, self.name or "", self.mounted_datasets(),
                                     self._personal)
            await self.prepare_start()
            url = await super().start()
        except Exception as e:
            self.log.exception("%s could not start", self._log_name)
            self.start_error = f"{type(e).__name__}: {e}"
            raise refusal(503, "Your server could not start. Try again in a minute, or choose a smaller "
                               "profile; if it fails again, tell the platform's administrators the time "
                               f"({type(e).__name__}: the hub's log has the details).") from e
        audit_hooks.spawned(self)
        return url

    async def stop(self, now: bool = False):
        """Stop the server and take back exactly what :meth:`start` shared (whoever teaches now)."""
        try:
            return await super().stop(now=now)
        finally:
            self._revoke_course_shares()
            access_spawn.forget_mounts(self.access_store, self.user.name, self.name or "")

    def _revoke_course_shares(self) -> None:
        from jupyterhub import orm

        for name in self._course_shares:
            instructor = orm.User.find(self.user.db, name)
            if instructor is not None:
                orm.Share.revoke(self.user.db, self.orm_spawner, instructor)
        self._course_shares = []

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self._course_shares:
            state["course_shares"] = list(self._course_shares)
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self._course_shares = list(state.get("course_shares", ()))

    def course_materials(self) -> dict[str, Path]:
        """Course name → material folder: a teaching server's courses, or every course this user
        takes or teaches."""
        return materials_for(self.teaching_courses() or courses_of(self._courses(), self.group_names()))

    async def node_gpus(self) -> list[str]:
        """The node's GPUs (:attr:`gpu_devices`, or the node's NVIDIA device files)."""
        if self.gpu_devices is not None:
            found = self.gpu_devices(self)
            return list(await found if inspect.isawaitable(found) else found)
        return node_devices()

    async def gpus(self) -> GPUs:
        """The node's GPUs and how many this hub's other running servers hold."""
        from jupyterhub import orm

        wanted = {p["slug"]: Profile.model_validate(p, strict=False).gpus for p in self.profiles}
        running = self.user.db.query(orm.Spawner).filter(orm.Spawner.server_id.isnot(None))
        mine = self.orm_spawner.id if self.orm_spawner is not None else None
        held = [wanted.get((s.user_options or {}).get("profile", ""), 0) for s in running if s.id != mine]
        return GPUs.held(len(await self.node_gpus()), held)

    async def _options_form(self) -> str:
        gpus = await self.gpus()
        profiles = self._profiles()
        unavailable = {p.slug: gpus.unavailable(p.gpus) for p in profiles}
        chosen = self.profile.slug if not unavailable.get(self.profile.slug) else \
            next((p.slug for p in profiles if not unavailable[p.slug]), "")
        rows = []
        for p in profiles:
            why = unavailable[p.slug]
            state = "disabled" if why else ("checked" if p.slug == chosen else "")
            note = f' <span class="text-muted">(unavailable: {html.escape(why, quote=False)})</span>' if why else ""
            rows.append(
                f'<div class="form-check"><input class="form-check-input" type="radio" name="profile" '
                f'id="profile-{p.slug}" value="{p.slug}" {state}>'
                f'<label class="form-check-label" for="profile-{p.slug}"><b>{html.escape(p.display_name)}</b> '
                f"{html.escape(p.description)}{note}</label></div>"
            )
        return "<fieldset><legend>Server profile</legend>" + "".join(rows) + "</fieldset>"

    @default("options_form")
    def _default_options_form(self):
        async def form(spawner):
            return await spawner._options_form() if len(spawner._profiles()) > 1 else ""
        return form

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, Any]:
        return {"profile": formdata.get("profile", [""])[0]}

    _profile: Profile | None = None

    @property
    def profile(self) -> Profile:
        """The profile chosen at the last spawn (the default one before any)."""
        return self._profile or self._default_profile()

    def _default_profile(self) -> Profile:
        profiles = self._profiles()
        return next((p for p in profiles if p.default), profiles[0])

    async def apply_profile(self, user_options: dict[str, Any]) -> None:
        """``apply_user_options`` hook: validate the chosen profile, check that the node has the
        GPUs it needs free, and apply its limits."""
        self.start_error = None
        slug = (user_options or {}).get("profile") or self._default_profile().slug
        by_slug = {p.slug: p for p in self._profiles()}
        if slug not in by_slug:
            self.start_error = f"unknown profile {slug!r}"
            raise refusal(400, f"There is no profile {slug!r} for you; choose one of {', '.join(by_slug)}.")
        profile = by_slug[slug]
        why = (await self.gpus()).unavailable(profile.gpus)
        if why:
            self.start_error = f"profile {slug!r} needs GPUs: {why}"
            others = [p.display_name for p in by_slug.values() if p.gpus == 0]
            raise refusal(409, f"The profile '{profile.display_name}' needs "
                               f"{'every GPU' if profile.gpus < 0 else f'{profile.gpus} GPU' + 's' * (profile.gpus > 1)}"
                               f" and {why}. Choose {' or '.join(repr(o) for o in others) or 'another profile'}, "
                               "or try again when a GPU is free.")
        check_start_by(self._courses(), getattr(self.handler, "current_user", None) if self.handler else None,
                       self.user.name, self.group_names(), slug)
        self._profile = profile
        self.cpu_limit = profile.cpu_limit
        self.mem_limit = profile.mem_limit
        self.apply_hardware(profile)
        if self.teaching_courses():
            self._narrow_token(NOT_FOR_TEACHING)

    def _narrow_token(self, scopes: frozenset[str]) -> None:
        """Take ``scopes`` from the token this spawn made for the server (JupyterHub makes it
        before the profile is known, from ``server_token_scopes``)."""
        from jupyterhub import orm

        token = orm.APIToken.find(self.user.db, self.api_token) if self.api_token else None
        if token is not None and scopes & set(token.scopes):
            token.scopes = [s for s in token.scopes if s not in scopes]
            self.user.db.commit()

    def apply_hardware(self, profile: Profile) -> None:
        """Give the server the profile's GPUs (and shared memory, in a container): each spawner says how."""
        raise NotImplementedError

    async def prepare_start(self) -> None:
        """What the server will see, made just before it starts (each spawner says what)."""
        raise NotImplementedError

    def group_names(self) -> list[str]:
        return sorted(g.name for g in self.user.groups)

    _catalog: list[Dataset] | None = None  # the catalog at the last start, published derivatives included

    def catalog(self) -> list[Dataset]:
        """The settings' catalog and the published derivatives, as read at the last start."""
        return self._catalog if self._catalog is not None else [Dataset.from_dict(d) for d in self.datasets]

    _personal: dict[str, dict[str, Any]] = {}  # dataset id → personal grant, read at the last start

    def granted_datasets(self) -> list[Dataset]:
        """The datasets of the user's groups and of their personal grants in force at the start."""
        standing = {d.id for d in granted(self.catalog(), self.group_names())}
        return [d for d in self.catalog() if d.id in standing or d.id in self._personal]

    def mounted_datasets(self) -> list[Dataset]:
        """What this server sees: a teaching server its courses' datasets (of those granted),
        any other server every dataset granted to its user."""
        courses = self.teaching_courses()
        mine = self.granted_datasets()
        if not courses:
            return mine
        used = {d for c in courses for d in c.datasets}
        return [d for d in mine if d.id in used]

    def medhub_env(self, datasets_dir: str) -> dict[str, str]:
        env = {
            contract.USER_ENV: self.user.name,
            contract.GROUPS_ENV: ",".join(self.group_names()),
            contract.PROFILE_ENV: self.profile.slug,
            contract.DATASETS_DIR_ENV: datasets_dir,
            contract.DOWNLOADS_ENV: access_spawn.downloads(self.mounted_datasets(), self.direct_download),
        }
        if self.grants_key_file:
            signer = grants.GrantSigner(self.grants_key_file)
            env[contract.GRANTS_ENV] = signer.manifest(self.user.name, self.group_names(), self.catalog(),
                                                     self.mounted_datasets(), datasets_dir, self._personal)
            env[contract.GRANTS_KEY_ENV] = signer.public_key
        return env


class MedhubLocalSpawner(ProfilesMixin, SimpleLocalProcessSpawner):
    """A local process per user (demo and tests). No isolation: see the module docstring.

    When the hub runs as root, servers run as :attr:`unprivileged_user` if one is set (it
    must be able to execute the hub's Python); otherwise they run as root, with a warning.
    """

    datasets_view_root = Unicode(
        config=True,
        help="Folder holding each user's view of their granted datasets, one sub-folder per user.",
    )
    unprivileged_user = Unicode(
        "",
        config=True,
        help="""System account (e.g. 'nobody') the servers run as when the hub runs as root; the
        home folders are chowned to it. It must be able to execute the hub's Python interpreter.
        Empty: servers run as root (demo machines only).""",
    )
    _cuda_visible_devices: str | None = ""
    mounts_read_only = False  # links to the datasets: only their files' modes keep them unchanged

    def apply_hardware(self, profile: Profile) -> None:
        self._cuda_visible_devices = cuda_visible_devices(profile.gpus)

    def _view_dir(self) -> Path:
        return Path(self.datasets_view_root) / self.user.name

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env.update(self.medhub_env(str(self._view_dir())))
        if self._cuda_visible_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = self._cuda_visible_devices
        return env

    def make_preexec_fn(self, name: str):
        home = Path(self.home_dir)
        account = pwd.getpwnam(self.unprivileged_user) if os.geteuid() == 0 and self.unprivileged_user else None

        def preexec() -> None:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            if account is not None:
                os.chown(home, account.pw_uid, account.pw_gid)
                os.setgroups([])
                os.setgid(account.pw_gid)
                os.setuid(account.pw_uid)
            os.chdir(home)

        return preexec

    def get_args(self) -> list[str]:
        args = super().get_args()
        if os.geteuid() == 0 and not self.unprivileged_user:
            self.log.warning("Running %s's server as root: set MedhubLocalSpawner.unprivileged_user", self.user.name)
            args.append("--ServerApp.allow_root=True")
        return args

    async def prepare_start(self) -> None:
        grants.local_view(self._view_dir(), self.mounted_datasets(), access_spawn.only_versions(self._personal))
        home = Path(self.home_dir_template.format(username=self.user.name))
        grants.link_folder(home / "courses", self.course_materials())  # read-only only in containers


class MedhubDockerSpawner(ProfilesMixin, DockerSpawner):
    """A container per user from the notebook image (production)."""

    home_volume = Unicode(
        "medhub-home-{username}",
        config=True,
        help="Name of the per-user Docker volume mounted as home; it survives the container.",
    )
    home_mount = Unicode("/home/jovyan", config=True, help="Where the home volume is mounted in the container.")
    mounts_read_only = True  # read-only bind mounts

    @default("remove")
    def _remove_default(self):
        return True

    def apply_hardware(self, profile: Profile) -> None:
        self.extra_host_config = {**self.extra_host_config, "device_requests": docker_device_requests(profile.gpus),
                                  "shm_size": profile.shm_size}

    async def node_gpus(self) -> list[str]:
        """The Docker engine's discovered NVIDIA devices; where it reports none (engines before
        API 1.50), the node's device files."""
        if self.gpu_devices is not None:
            return await super().node_gpus()
        found = engine_devices(await self.docker("info"))
        return node_devices() if found is None else found

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env.update(self.medhub_env(contract.DATASETS_ROOT))
        return env

    def container_volumes(self) -> dict[str, dict[str, str]]:
        """The home volume, the granted datasets and course material (both read-only): never any
        other host path."""
        return {
            self.home_volume: {"bind": self.home_mount, "mode": "rw"},
            **grants.docker_volumes(self.mounted_datasets(), access_spawn.only_versions(self._personal)),
            **{str(path): {"bind": f"{self.home_mount}/courses/{name}", "mode": "ro"}
               for name, path in self.course_materials().items()},
        }

    async def prepare_start(self) -> None:
        self.volumes = self.container_volumes()
        if self.network_name == "host":  # containers share the host's loopback: each its own port there,
            self.ip, self.port = "127.0.0.1", random_port()  # and no port bindings (Docker refuses them)
            self.use_internal_ip = True

    async def get_ip_and_port(self) -> tuple[str, int]:
        if self.network_name == "host":
            return "127.0.0.1", self.port
        return await super().get_ip_and_port()
