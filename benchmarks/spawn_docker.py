"""Container spawn latency: login → server ready with DockerSpawner against the local spawner.

Three setups run in the same invocation, one after the other, on the real platform of the
tests (development IdP, proxy, hub on 127.0.0.1; ``tests/conftest.py``): the local spawner;
DockerSpawner with the hub as a process; DockerSpawner with the hub in its own container
(``medhub up``, the single-node production path). Containers live on a users' network of
their own (``docker.network``, traffic between containers off; the proxy serves on its
gateway), as in production, removed afterwards. A user logs in through the IdP's pages,
submits the spawn form with the CPU profile, and the clock stops when the hub reports the
server ready; then the server is stopped. The images are those ``images/test-engine.sh``
builds (a Debian base with the notebook and hub images' software).

    python benchmarks/spawn_docker.py [--rounds 3] [--record]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import start_platform, stop_platform  # noqa: E402
from results import append as record  # noqa: E402

from medhub import docker_network  # noqa: E402

IMAGE = "medhub/notebook:test"
HUB_IMAGE = "medhub/hub:test"


def measure(root: Path, rounds: int, **options) -> list[float]:
    platform = start_platform(root, **options)
    times = []
    try:
        for _ in range(rounds):
            browser = platform.browser()
            began = time.perf_counter()
            platform.login(browser, "alice")
            platform.spawn(browser, "alice", "cpu", timeout=300)
            times.append(time.perf_counter() - began)
            platform.api("DELETE", "/users/alice/server")
            while platform.api("GET", "/users/alice").json()["servers"]:
                time.sleep(0.3)
    finally:
        stop_platform(platform)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--record", action="store_true", help="append the result to benchmarks/README.md")
    args = p.parse_args()
    network, subnet = "medhub-bench-users", "172.29.236.0/24"
    docker = {"spawner": "docker", "insecure_http": True, "public_host": docker_network.gateway(subnet),
              "sections": {"docker": {"image": IMAGE, "network": network, "subnet": subnet,
                                      "home_volume": "medhub-bench-home-{username}"}}}
    with tempfile.TemporaryDirectory(prefix="medhub-spawn-bench-") as tmp:
        Path(tmp).chmod(0o755)  # the containerised hub runs as uid 999 and reads the settings here
        runs = {
            "local process (MedhubLocalSpawner)": measure(Path(tmp) / "local", args.rounds),
            "container (MedhubDockerSpawner)": measure(Path(tmp) / "docker", args.rounds, **docker),
            "container, hub in its container (medhub up)": measure(Path(tmp) / "up", args.rounds,
                                                                   hub_image=HUB_IMAGE, **docker),
        }
    subprocess.run(["docker", "network", "rm", network], capture_output=True)
    local = runs["local process (MedhubLocalSpawner)"]
    rows = ["| spawner | login → ready, median s | all rounds s |", "|---|---|---|"]
    for name, times in runs.items():
        rows.append(f"| {name} | {statistics.median(times):.2f} | {', '.join(f'{t:.2f}' for t in times)} |")
    docker = runs["container (MedhubDockerSpawner)"]
    rows.append(f"| ratio container / local | {statistics.median(docker) / statistics.median(local):.2f} | |")
    text = "\n".join(rows)
    print(text)
    if args.record:
        record("Spawn latency: container against local process",
               f"python benchmarks/spawn_docker.py --rounds {args.rounds}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
