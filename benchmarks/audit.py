"""Audit log throughput and the latency it adds to a dataset open.

A real medhub (development IdP, proxy, hub and its audit service) runs on loopback with the
production durability setting: every event is fsync'd before the service acknowledges it
(group commit: requests that arrive together share one write and one fsync). Measured:

- events/s through the service: ``--clients`` processes, each posting one event per request
  with a user's JupyterHub token for ``--seconds``; and the same with batches of 50 events;
- events/s written directly with ``AuditLog.append`` (one event per append, fsync each);
- the latency one ``medlib.audit.record("dataset-open", ...)`` adds (median and p95 of 300).

    python benchmarks/audit.py            # 8 clients, 10 s each way
    python benchmarks/audit.py --quick    # 4 clients, 3 s
    python benchmarks/audit.py --record   # append the table to README.md
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

from medhub import demo
from medhub.audit.log import AuditLog, verify
from medhub.audit.schema import make_event
from medhub.idp import Account
from medhub.idp.browser import scripted_login
from medhub.processes import Stack, free_port, hub_process, idp_process, proxy_process
from medhub.state import StateDir
from medlib.audit import AuditClient
from results import append as record


def user_token(url: str, account: Account) -> str:
    """Log in through the IdP and make an API token that may reach the audit service."""
    with httpx.Client(follow_redirects=True, timeout=60) as client:
        scripted_login(client, url, account.username, account.password).raise_for_status()
        client.get(f"{url}/hub/home")
        xsrf = client.cookies.get("_xsrf", path="/hub/") or client.cookies.get("_xsrf")
        r = client.post(f"{url}/hub/api/users/{account.username}/tokens", headers={"X-XSRFToken": xsrf},
                        json={"scopes": ["access:services!service=medhub-audit"], "note": "audit benchmark"})
        r.raise_for_status()
        return r.json()["token"]


def wait_for_service(url: str, token: str, timeout: float = 60) -> None:
    """The hub starts its services after itself: wait until the audit service answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, params={"limit": 1}, headers={"Authorization": f"token {token}"}).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the audit service at {url} did not answer")


def client_process(url: str, token: str, seconds: float, batch: int, counter) -> None:
    """Post events over one kept-alive connection (http.client: the lightest client, so that the
    2 cores measure the service more than the clients)."""
    target = urlparse(url)
    body = json.dumps({"events": [{"action": "dataset-open", "object": {"dataset": "bench", "n": i}}
                                  for i in range(batch)]})
    headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
    sent, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        connection.request("POST", target.path, body, headers)
        response = connection.getresponse()
        response.read()
        if response.status != 201:
            raise RuntimeError(f"the service answered {response.status}")
        sent += batch
    connection.close()
    with counter.get_lock():
        counter.value += sent


def through_service(url: str, token: str, clients: int, seconds: float, batch: int) -> float:
    counter = multiprocessing.Value("l", 0)
    procs = [multiprocessing.Process(target=client_process, args=(url, token, seconds, batch, counter))
             for _ in range(clients)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return counter.value / (time.monotonic() - t0)


def direct(folder: Path, seconds: float) -> float:
    log = AuditLog(folder, secrets.token_bytes(32), fsync="always")
    event = make_event("dataset-open", {"user": "bench", "groups": [], "source": "notebook"}, {"dataset": "bench"})
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        log.append([event])
        n += 1
    log.close()
    return n / (time.monotonic() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--quick", action="store_true", help="4 clients, 3 s")
    p.add_argument("--record", action="store_true", help="append the result to benchmarks/README.md")
    args = p.parse_args()
    clients, seconds = (4, 3.0) if args.quick else (args.clients, args.seconds)
    account = Account("auditbench", secrets.token_urlsafe(8), "Audit Bench", "a@h.example", ("radiology-research",))
    with tempfile.TemporaryDirectory(prefix="medhub-audit-bench-") as tmp, Stack() as stack:
        tmp = Path(tmp)
        ports = demo.DemoPorts(public=free_port(), hub=free_port(), proxy_api=free_port(), idp=free_port())
        settings, idp = demo.prepare(tmp / "medhub", ports, reset=True, accounts=(account,))
        stack.start(idp_process(idp, tmp / "logs"))
        stack.start(proxy_process(settings))
        stack.start(hub_process(settings), timeout=180)
        url = f"http://127.0.0.1:{settings.audit.port}/services/medhub-audit/events"
        token = user_token(settings.hub.public_url, account)
        wait_for_service(url, token)
        audit = AuditClient(url, token, tmp / "buffer.jsonl")
        for _ in range(20):  # warm up: the service's token cache, connections
            audit.record("dataset-open", {"dataset": "warm-up"})
        latencies = []
        for n in range(300):
            t0 = time.perf_counter()
            audit.record("dataset-open", {"dataset": "bench", "series": 1})
            latencies.append((time.perf_counter() - t0) * 1000)
        single = through_service(url, token, clients, seconds, 1)
        batched = through_service(url, token, clients, seconds, 50)
        on_disk = direct(tmp / "direct", seconds)
        state = StateDir(settings.hub.state_dir)
        time.sleep(0.5)
        chain = verify(state.audit_dir, state.audit_key())
        assert chain.ok, chain.problem
        assert not (tmp / "buffer.jsonl").exists(), "an event was buffered: the service did not answer"
    p50, p95 = statistics.median(latencies), statistics.quantiles(latencies, n=20)[18]
    text = "\n".join([
        "| measure | result |", "|---|---|",
        f"| through the service, {clients} client processes, 1 event per request | {single:,.0f} events/s |",
        f"| through the service, {clients} client processes, 50 events per request | {batched:,.0f} events/s |",
        f"| directly, `AuditLog.append` of 1 event, fsync each | {on_disk:,.0f} events/s |",
        f"| added to a dataset open: one `medlib.audit.record` (median / p95 of 300) | {p50:.2f} ms / {p95:.2f} ms |",
        f"| chain after the run | intact, {chain.checked:,} records |",
        "", "Durability: fsync of the segment before every acknowledgement (`[audit] fsync = \"always\"`).",
    ])
    print(text)
    if args.record:
        record("Audit log", "python benchmarks/audit.py" + (" --quick" if args.quick else f" --clients {clients}"),
               text)
    return 0


if __name__ == "__main__":
    multiprocessing.set_start_method("fork")
    sys.exit(main())
