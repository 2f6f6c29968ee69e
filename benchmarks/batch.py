"""Batch jobs: from submit to a finished trivial notebook, and jobs per minute with 20 queued.

Starts the real platform on 127.0.0.1 the way the tests do (development IdP, proxy, hub, the
medhub-batch service; ``tests/conftest.py``), logs one user in, and submits through
``medhub.batch.client`` with that user's token. Each job starts a named server of the user,
runs the notebook with papermill in it and removes the server: the figures include a server
start and a kernel start per job.

    python benchmarks/batch.py [--jobs 20] [--limit 2] [--record]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import start_platform, stop_platform  # noqa: E402
from medhub.batch.client import BatchClient, BatchError  # noqa: E402
from results import append as record  # noqa: E402


def trivial(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(x + 1)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.write_text(nbformat.writes(nb))
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--limit", type=int, default=2, help="[batch] max_running_per_user (default: 2, the default)")
    p.add_argument("--record", action="store_true", help="append the result to benchmarks/README.md")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="medhub-batch-bench-") as tmp:
        tmp = Path(tmp)
        platform = start_platform(tmp / "platform", batch_limit=args.limit)
        try:
            assert platform.login(platform.browser(), "frank").status_code == 200
            token = platform.api("POST", "/users/frank/tokens", json={"note": "benchmark"}).json()["token"]
            client = BatchClient(platform.url, token)
            while True:  # the hub starts its services without waiting for them
                try:
                    client.jobs()
                    break
                except BatchError:
                    time.sleep(0.5)
            notebook = trivial(tmp / "trivial.ipynb")
            latencies = []
            for n in range(3):
                began = time.perf_counter()
                job = client.wait(client.submit(notebook, {"x": n})["id"], every=0.2)
                assert job["status"] == "succeeded", job
                latencies.append(time.perf_counter() - began)
            began = time.perf_counter()
            ids = [client.submit(notebook, {"x": n})["id"] for n in range(args.jobs)]
            jobs = [client.wait(i, every=0.5) for i in ids]
            elapsed = time.perf_counter() - began
            succeeded = sum(j["status"] == "succeeded" for j in jobs)
        finally:
            stop_platform(platform)
    text = (f"| measure | value |\n|---|---|\n"
            f"| submit → finished, trivial notebook (median of 3) | {statistics.median(latencies):.1f} s "
            f"({', '.join(f'{x:.1f}' for x in latencies)}) |\n"
            f"| {args.jobs} jobs queued at once, {args.limit} running per user | {elapsed:.1f} s, "
            f"{60 * args.jobs / elapsed:.1f} jobs/minute, {succeeded}/{args.jobs} succeeded |")
    print(text)
    if args.record:
        record("Batch jobs: submit to finished, and throughput",
               f"python benchmarks/batch.py --jobs {args.jobs} --limit {args.limit}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
