"""Login → server-ready for N concurrent users: medhub (real OIDC login) vs stock JupyterHub.

Both hubs run on this machine in the same run, one after the other, with the same local
process spawner command (jupyterhub-singleuser with JupyterLab), the same proxy and the same
client code. medhub's users log in through the development OIDC provider (login form,
consent, code exchange with PKCE, id_token verification, userinfo, group sync) and pick the
CPU profile in the spawn form; stock JupyterHub's users post its DummyAuthenticator form.

    python benchmarks/login_spawn.py            # 50 users
    python benchmarks/login_spawn.py --quick    # 5 users
    python benchmarks/login_spawn.py --users 20 --record   # append the table to README.md

Prints p50/p95 seconds from the first login request to the user's server reporting ready,
and the CPU seconds the hub process (and medhub's IdP) used during the run.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from medhub import demo
from medhub.idp import Account, node_tool
from medhub.idp.browser import scripted_login, submit_spawn_form
from medhub.processes import ManagedProcess, Stack, free_port, hub_process, idp_process, proxy_process
from medhub.state import StateDir
from results import append as record

START_TIMEOUT = 600


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    name: str
    seconds: list[float]
    failures: list[str]
    hub_cpu: float
    idp_cpu: float | None
    wall: float

    def pct(self, q: float) -> float:
        if not self.seconds:
            return float("nan")
        if len(self.seconds) == 1:
            return self.seconds[0]
        return statistics.quantiles(self.seconds, n=100, method="inclusive")[int(q) - 1]


def wait_ready(client: httpx.Client, url: str, deadline: float) -> None:
    """Poll the user's own model until their server is ready; fail fast if its spawn failed."""
    seen_pending = False
    while time.monotonic() < deadline:
        server = client.get(f"{url}/hub/api/user").json().get("servers", {}).get("")
        if server and server.get("ready"):
            return
        if server and server.get("pending"):
            seen_pending = True
        elif seen_pending:
            raise RuntimeError("the spawn failed (see the hub's log)")
        time.sleep(0.5)
    raise TimeoutError("server not ready in time")


def medhub_user(url: str, account: Account) -> float:
    with httpx.Client(follow_redirects=True, timeout=START_TIMEOUT) as client:
        t0 = time.monotonic()
        r = scripted_login(client, url, account.username, account.password)
        r.raise_for_status()
        submit_spawn_form(client, url, account.username, "cpu")
        wait_ready(client, url, t0 + START_TIMEOUT)
        return time.monotonic() - t0


def stock_user(url: str, name: str) -> float:
    with httpx.Client(follow_redirects=True, timeout=START_TIMEOUT) as client:
        t0 = time.monotonic()
        page = client.get(f"{url}/hub/login")
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
        r = client.post(f"{url}/hub/login", data={"username": name, "password": "x", "_xsrf": xsrf})
        r.raise_for_status()
        submit_spawn_form(client, url, name, "")  # stock JupyterHub has no form: it spawns on the GET
        wait_ready(client, url, t0 + START_TIMEOUT)
        return time.monotonic() - t0


def run_users(fn, args: list[tuple]) -> tuple[list[float], list[str]]:
    seconds, failures = [], []
    with ThreadPoolExecutor(max_workers=len(args)) as pool:
        futures = [pool.submit(fn, *a) for a in args]
        for f in futures:
            try:
                seconds.append(f.result())
            except Exception as e:  # a benchmark reports what failed and goes on
                failures.append(f"{type(e).__name__}: {e}")
    return sorted(seconds), failures


def bench_medhub(root: Path, users: int) -> Result:
    accounts = tuple(Account(f"user{i:03d}", secrets.token_urlsafe(8), f"User {i}", f"user{i}@h.example",
                             ("radiology-research",)) for i in range(users))
    ports = demo.DemoPorts(public=free_port(), hub=free_port(), proxy_api=free_port(), idp=free_port())
    settings, idp = demo.prepare(root / "medhub", ports, reset=True, accounts=accounts, start_timeout=START_TIMEOUT)
    logs = StateDir(settings.hub.state_dir).logs_dir
    with Stack() as stack:
        idp_proc = stack.start(idp_process(idp, logs))
        stack.start(proxy_process(settings))
        hub = stack.start(hub_process(settings), timeout=120)
        hub_cpu0, idp_cpu0, t0 = cpu_seconds(hub.proc.pid), cpu_seconds(idp_proc.proc.pid), time.monotonic()
        seconds, failures = run_users(medhub_user, [(settings.hub.public_url, a) for a in accounts])
        wall = time.monotonic() - t0
        hub_cpu, idp_cpu = cpu_seconds(hub.proc.pid) - hub_cpu0, cpu_seconds(idp_proc.proc.pid) - idp_cpu0
    return Result("medhub (OIDC via dev IdP)", seconds, failures, hub_cpu, idp_cpu, wall)


STOCK_CONFIG = """
c.JupyterHub.bind_url = "http://127.0.0.1:{public}/"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub}"
c.JupyterHub.db_url = "sqlite:///{root}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{root}/cookie_secret"
c.ConfigurableHTTPProxy.command = ["{chp}"]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api}"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{root}/home/{{username}}"
c.Spawner.cmd = ["{python}", "-m", "jupyterhub.singleuser"]
c.Spawner.args = {args}
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = {timeout}
c.Spawner.http_timeout = {timeout}
"""


def bench_stock(root: Path, users: int) -> Result:
    root.mkdir(parents=True)
    public, hub_port, api = free_port(), free_port(), free_port()
    args = ["--ServerApp.allow_root=True"] if os.geteuid() == 0 else []  # as MedhubLocalSpawner does
    config = root / "jupyterhub_config.py"
    config.write_text(STOCK_CONFIG.format(public=public, hub=hub_port, api=api, root=root, python=sys.executable,
                                          chp=node_tool("configurable-http-proxy"), args=args, timeout=START_TIMEOUT))
    hub = ManagedProcess("stock jupyterhub", [sys.executable, "-m", "jupyterhub", "-f", str(config)],
                         root / "jupyterhub.log", f"http://127.0.0.1:{hub_port}/hub/health", cwd=root,
                         stop_timeout=START_TIMEOUT)
    url = f"http://127.0.0.1:{public}"
    with Stack() as stack:
        stack.start(hub, timeout=120)
        hub_cpu0, t0 = cpu_seconds(hub.proc.pid), time.monotonic()
        seconds, failures = run_users(stock_user, [(url, f"user{i:03d}") for i in range(users)])
        wall = time.monotonic() - t0
        hub_cpu = cpu_seconds(hub.proc.pid) - hub_cpu0
    return Result("stock JupyterHub (DummyAuthenticator)", seconds, failures, hub_cpu, None, wall)


def table(results: list[Result], users: int) -> str:
    rows = [
        "| hub | users ok | p50 s | p95 s | hub CPU s | IdP CPU s | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        idp = f"{r.idp_cpu:.1f}" if r.idp_cpu is not None else "—"
        rows.append(f"| {r.name} | {len(r.seconds)}/{users} | {r.pct(50):.2f} | {r.pct(95):.2f} | "
                    f"{r.hub_cpu:.1f} | {idp} | {r.wall:.1f} |")
    m, s = results
    rows.append(f"| ratio medhub / stock | | {m.pct(50) / s.pct(50):.2f} | {m.pct(95) / s.pct(95):.2f} | "
                f"{m.hub_cpu / s.hub_cpu:.2f} | | {m.wall / s.wall:.2f} |")
    return "\n".join(rows)


def main() -> int:
    # SIGTERM unwinds like Ctrl-C, so that every hub, proxy and server started here is stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=50, help="concurrent users (default 50)")
    p.add_argument("--quick", action="store_true", help="5 users")
    p.add_argument("--record", action="store_true", help="append the result to benchmarks/README.md")
    args = p.parse_args()
    users = 5 if args.quick else args.users
    with tempfile.TemporaryDirectory(prefix="medhub-bench-") as tmp:
        results = [bench_medhub(Path(tmp), users), bench_stock(Path(tmp) / "stock", users)]
    text = table(results, users)
    print(text)
    for r in results:
        for failure in r.failures:
            print(f"{r.name}: failed: {failure}", file=sys.stderr)
    if args.record:
        cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                             capture_output=True, text=True).stdout.strip()
        command = "python benchmarks/login_spawn.py" + (" --quick" if args.quick else f" --users {users}")
        record(f"login → server ready, {users} concurrent users, {cpu}", command, text)
    return 1 if any(r.failures for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
