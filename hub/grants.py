"""Dataset grants: which datasets a user's groups may read, and how a server gets to see them.

Pure functions over the ``[[datasets]]`` settings: the spawners call them at spawn. The
Docker spawner turns grants into read-only bind mounts at ``/datasets/<id>``; the local
spawner (demo) into a per-user folder of links, a weaker isolation documented in README.md.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from .settings import Dataset

CONTAINER_ROOT = "/datasets"


def granted(datasets: Iterable[Dataset], groups: Iterable[str]) -> list[Dataset]:
    """The datasets readable by a member of ``groups``, in catalog order."""
    member = set(groups)
    return [d for d in datasets if member.intersection(d.groups)]


def docker_volumes(datasets: Iterable[Dataset]) -> dict[str, dict[str, str]]:
    """DockerSpawner ``volumes`` entries: each dataset read-only at ``/datasets/<id>``."""
    return {str(d.path): {"bind": f"{CONTAINER_ROOT}/{d.id}", "mode": "ro"} for d in datasets}


def local_view(view_dir: Path, datasets: Iterable[Dataset]) -> Path:
    """Make ``view_dir`` hold exactly one link per granted dataset, ``<id> -> path``.

    The folder is rebuilt beside the old one and swapped in, so a server never sees a
    half-made view and a revoked grant disappears at the next spawn.
    """
    view_dir = Path(view_dir)
    view_dir.parent.mkdir(parents=True, exist_ok=True)
    fresh = view_dir.with_name(view_dir.name + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(mode=0o755)
    for d in datasets:
        (fresh / d.id).symlink_to(d.path, target_is_directory=True)
    old = view_dir.with_name(view_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if view_dir.exists():
        os.replace(view_dir, old)
    os.replace(fresh, view_dir)
    shutil.rmtree(old, ignore_errors=True)
    return view_dir
