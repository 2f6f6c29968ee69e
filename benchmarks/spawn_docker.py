"""Container spawn latency: login → server ready with DockerSpawner against the local spawner.

Both run in the same invocation, one after the other, on the real platform of the tests
(development IdP, proxy, hub on 127.0.0.1; ``tests/conftest.py``): a user logs in through the
IdP's pages, submits the spawn form with the CPU profile, and the clock stops when the hub
reports the server ready; then the server is stopped. DockerSpawner uses the image
``images/test-engine.sh`` builds (a Debian base with the notebook image's software).

    python benchmarks/spawn_docker.py [--rounds 3] [--record]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import start_platform, stop_platform  # noqa: E402
from results import append as record  # noqa: E402

IMAGE = "medhub/notebook:test"


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
    with tempfile.TemporaryDirectory(prefix="medhub-spawn-bench-") as tmp:
        local = measure(Path(tmp) / "local", args.rounds)
        docker = measure(Path(tmp) / "docker", args.rounds, spawner="docker",
                         sections={"docker": {"image": IMAGE, "network": "host",
                                              "home_volume": "medhub-bench-home-{username}"}})
    rows = ["| spawner | login → ready, median s | all rounds s |", "|---|---|---|"]
    for name, times in (("local process (MedhubLocalSpawner)", local), ("container (MedhubDockerSpawner)", docker)):
        rows.append(f"| {name} | {statistics.median(times):.2f} | {', '.join(f'{t:.2f}' for t in times)} |")
    rows.append(f"| ratio container / local | {statistics.median(docker) / statistics.median(local):.2f} | |")
    text = "\n".join(rows)
    print(text)
    if args.record:
        record("Spawn latency: container against local process",
               f"python benchmarks/spawn_docker.py --rounds {args.rounds}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
