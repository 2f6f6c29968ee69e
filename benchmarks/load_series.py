"""Loading a CT series into memory: medlib.datasets against a pydicom loop and MONAI's LoadImage.

A 512×512×300 CT series (generated, 16-bit, one file per slice) is loaded into one array by
each way, in the same run, from the page cache (every way reads the files once first):

- ``cat`` of the files to /dev/null: the floor (reading the bytes, nothing else);
- ``medlib.datasets.open(id)`` then ``.load()`` of the series' image (lazy dask volume,
  rescale), through a real signed grants manifest: once with the dataset's header index in
  the user's cache (every open after the first), once without (the first open reads every
  header);
- a naive pydicom loop: ``dcmread``, ``pixel_array``, rescale, sort by position, ``np.stack``;
- MONAI ``LoadImage(reader="PydicomReader")`` on the folder.

Throughput is the files' size over the best of ``--repeat`` wall times.

    python benchmarks/load_series.py            # 512×512×300
    python benchmarks/load_series.py --quick    # 512×512×60
    python benchmarks/load_series.py --record   # append the table to README.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from results import append as record



def naive_pydicom(folder: Path) -> np.ndarray:
    slices = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])


def best(fn: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--quick", action="store_true", help="60 slices")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--record", action="store_true", help="append the result to benchmarks/README.md")
    args = p.parse_args()
    slices = 60 if args.quick else args.slices
    warnings.simplefilter("ignore")

    from monai.transforms import LoadImage

    import medlib.datasets as mds
    from medhub.catalog import Dataset
    from medhub.grants import GrantSigner
    from medlib.synthetic import write_ct_series

    with tempfile.TemporaryDirectory(prefix="medlib-load-bench-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "ct" / "series"
        files = write_ct_series(folder, shape=(slices, 512, 512), spacing=(1.0, 0.7, 0.7))
        size = sum(f.stat().st_size for f in files)
        catalog = [Dataset(id="bench-ct", title="bench", location=str(tmp / "ct"), groups=("bench",),
                           sensitivity="anonymized", licence="CC0-1.0")]
        signer = GrantSigner(tmp / "grants.pem")
        os.environ.update(MEDHUB_GRANTS=signer.manifest("bench", ["bench"], catalog, str(tmp)),
                          MEDHUB_GRANTS_KEY=signer.public_key, MEDHUB_AUDIT_LOG=str(tmp / "audit.jsonl"),
                          MEDLIB_CACHE_DIR=str(tmp / "cache"))
        (tmp / "bench-ct").symlink_to(tmp / "ct")
        cat = ["cat", *map(str, files)]
        subprocess.run(cat, stdout=subprocess.DEVNULL, check=True)  # warm the page cache

        def medlib_open():
            (node,) = mds.open("bench-ct").children.values()
            return node["image"].load().values

        medlib_open()  # the first open makes the header index that later opens use

        def forget_index():
            shutil.rmtree(tmp / "cache" / "index", ignore_errors=True)

        runs = {
            "cat (floor)": (lambda: subprocess.run(cat, stdout=subprocess.DEVNULL, check=True), None),
            "medlib.datasets.open().load()": (medlib_open, None),
            "medlib, first open (headers read, no index yet)": (medlib_open, forget_index),
            "pydicom loop": (lambda: naive_pydicom(folder), None),
            "MONAI LoadImage (PydicomReader)": (lambda: np.asarray(LoadImage(reader="PydicomReader",
                                                                             image_only=True)(str(folder))), None),
        }
        results = {name: best(fn, args.repeat, setup) for name, (fn, setup) in runs.items()}
        reference = results["pydicom loop"][1]
        assert np.array_equal(results["medlib.datasets.open().load()"][1], reference), "medlib's volume differs"
        assert np.array_equal(results["MONAI LoadImage (PydicomReader)"][1], reference.transpose(2, 1, 0))

    floor = results["cat (floor)"][0]
    ours = results["medlib.datasets.open().load()"][0]
    rows = ["| way | seconds | MB/s | × cat time | × medlib time |", "|---|---|---|---|---|"]
    for name, (seconds, _) in results.items():
        rows.append(f"| {name} | {seconds:.3f} | {size / seconds / 1e6:.0f} | {seconds / floor:.2f} | "
                    f"{seconds / ours:.2f} |")
    text = (f"{slices} slices of 512×512, {size / 1e6:.0f} MB in {len(files)} files, best of {args.repeat}\n\n"
            + "\n".join(rows))
    print(text)
    if args.record:
        command = "python benchmarks/load_series.py" + (" --quick" if args.quick else f" --slices {slices}")
        record("Loading a CT series", command, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
