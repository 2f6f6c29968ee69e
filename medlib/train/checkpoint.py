"""Checkpoints: written atomically (a temporary file, then a rename), so a crash mid-write
leaves the previous checkpoint whole."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class TrainError(RuntimeError):
    """Training could not go on; the message says what to do (often: resume from a checkpoint)."""


def save(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)
    return path


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint written by :func:`save`."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"no checkpoint at {path}; give the path of a file that fit() wrote")
    return torch.load(path, map_location="cpu", weights_only=False)
