"""The notebooks that teach medlib, copied into each user's home by the server extension.

``1-welcome.ipynb`` (a tour: who you are, your datasets, a series in the viewer),
``2-deidentify.ipynb`` (de-identify a folder at the site), ``3-radiomics.ipynb`` (features of a
ROI, as a table), ``4-train-unet.ipynb`` (a small UNet on a granted dataset, with Dask),
``5-batch-job.ipynb`` (run a notebook as a batch job), ``6-quality.ipynb`` (validate a model,
explain a prediction, watch for drift: medlib.qa) and ``7-drift-watch.ipynb`` (the drift check
a schedule submits: its job fails on drift). They are stored without outputs and
run end to end as batch jobs on `medhub demo` by tests/test_demo.py, so that they never rot.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..contract import NOTEBOOKS_FOLDER

HERE = Path(__file__).parent


def names() -> list[str]:
    """The notebooks' file names, in reading order."""
    return sorted(p.name for p in HERE.glob("*.ipynb"))


def path(name: str) -> Path:
    """The installed copy of notebook ``name`` (what a batch job submits, for example)."""
    if name not in names():
        raise FileNotFoundError(f"no medlib notebook {name!r}; there are {', '.join(names())}")
    return HERE / name


def seed(home: str | Path) -> list[Path]:
    """Copy the notebooks into ``home``/medhub-notebooks, leaving every file already there as it is
    (the user's own edits included); return the files copied."""
    folder = Path(home) / NOTEBOOKS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in names():
        target = folder / name
        if target.exists():
            continue
        partial = target.with_name(f".{name}.partial")
        shutil.copyfile(HERE / name, partial)
        partial.rename(target)
        copied.append(target)
    return copied
