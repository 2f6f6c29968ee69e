"""``medhub demo``: the whole platform on one machine, on loopback, in one command.

Prepares a state folder (kept between runs; ``--reset`` starts clean) holding a settings
file, the development IdP's accounts and the hub's client secret, and a synthetic DICOM
dataset; then runs the IdP, configurable-http-proxy and the hub with the local spawner
until Ctrl-C.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from medlib.synthetic import write_ct_series

from .idp import DEMO_ACCOUNTS, Account, Client, DevIdentityProvider
from .processes import Stack, hub_process, idp_process, proxy_process
from .settings import Settings, load
from .state import StateDir

DEMO_DATASET = "demo-phantom-ct"


@dataclass(frozen=True)
class DemoPorts:
    public: int = 8000
    hub: int = 8081
    proxy_api: int = 8001
    idp: int = 9000


def prepare(
    state_dir: Path,
    ports: DemoPorts = DemoPorts(),
    reset: bool = False,
    accounts: tuple[Account, ...] = DEMO_ACCOUNTS,
    start_timeout: int = 120,
) -> tuple[Settings, DevIdentityProvider]:
    """Create (or reuse) the demo's state folder; return its settings and IdP.

    ``accounts`` and ``start_timeout`` let the benchmarks reuse the demo with more users.
    """
    state_dir = Path(state_dir).resolve()
    if reset and state_dir.exists():
        shutil.rmtree(state_dir)
    state = StateDir(state_dir)
    state.ensure()
    public_url = f"http://127.0.0.1:{ports.public}"
    secret = state.secret("oidc_client_secret")

    idp = DevIdentityProvider(
        state_dir=state.idp_dir,
        port=ports.idp,
        accounts=accounts,
        clients=(Client("medhub", secret, (public_url + "/hub/oauth_callback",), (public_url + "/hub/login",)),),
    )

    dataset_dir = state_dir / "datasets" / DEMO_DATASET
    if not dataset_dir.is_dir():
        tmp = dataset_dir.with_name(DEMO_DATASET + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_ct_series(tmp / "series-001")
        tmp.rename(dataset_dir)

    settings = {
        "hub": {
            "public_url": public_url,
            "hub_port": ports.hub,
            "proxy_api_port": ports.proxy_api,
            "state_dir": str(state_dir),
            "spawner": "local",
            "cleanup_servers": True,
            "start_timeout": start_timeout,
        },
        "oidc": {
            "issuer": idp.issuer,
            "client_id": "medhub",
            "client_secret_file": str(state_dir / "oidc_client_secret"),
            "allowed_groups": ["radiology-research", "course-instructors", "course-students"],
            "admin_groups": ["course-instructors"],
            "login_service": "the medhub demo identity provider",
        },
        "local": {"home_root": str(state_dir / "home")},
        "culler": {"enabled": True, "timeout": 3600, "every": 300},
        "datasets": [
            {
                "id": DEMO_DATASET,
                "title": "Synthetic CT phantom",
                "description": "One synthetic CT series (16 slices) of a water cylinder with three spheres.",
                "path": str(dataset_dir),
                "groups": ["radiology-research", "course-students"],
            }
        ],
    }
    settings_file = state_dir / "medhub.toml"
    settings_file.write_text("# Written by `medhub demo`; edit freely, `medhub demo --reset` rewrites it.\n"
                             + tomli_w.dumps(settings))
    return load(settings_file), idp


def banner(settings: Settings, idp: DevIdentityProvider) -> str:
    lines = [
        "",
        f"medhub demo is running: open {settings.hub.public_url}/",
        f"  identity provider: {idp.issuer} (development IdP; accounts below)",
        "",
        "  user  password   groups",
    ]
    for a in idp.accounts:
        lines.append(f"  {a.username:<5} {a.password:<10} {', '.join(a.groups)}")
    lines += [
        "",
        "  ada is an admin (course-instructors); eve is in no allowed group and is refused.",
        f"  state: {settings.hub.state_dir} (logs in {StateDir(settings.hub.state_dir).logs_dir})",
        "  Press Ctrl-C to stop everything.",
        "",
    ]
    return "\n".join(lines)


def run(state_dir: Path, ports: DemoPorts = DemoPorts(), reset: bool = False) -> int:
    settings, idp = prepare(state_dir, ports, reset)
    logs = StateDir(settings.hub.state_dir).logs_dir
    with Stack() as stack:
        try:
            print("starting the identity provider …", flush=True)
            stack.start(idp_process(idp, logs))
            print("starting configurable-http-proxy …", flush=True)
            stack.start(proxy_process(settings))
            print("starting JupyterHub …", flush=True)
            stack.start(hub_process(settings), timeout=120)
            print(banner(settings, idp), flush=True)
            reason = stack.wait()
        except KeyboardInterrupt:  # Ctrl-C before wait() took over the signal
            reason = "SIGINT"
        print(f"\nstopping ({reason}) …", flush=True)
    return 0
