"""Checksum manifests of datasets: what a dataset held when it was catalogued.

A manifest is a ``sha256sum``-format file at the dataset's root (``MANIFEST.sha256``: one
``<hex digest>  <relative path>`` line per file, sorted), so that ``sha256sum -c`` checks it
too. :func:`write_manifest` makes one (the data steward, at cataloguing);
:func:`verify_manifest` names every file that changed, went missing or appeared since.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MedlibError

MANIFEST = "MANIFEST.sha256"
CHUNK = 1 << 20


class ManifestError(MedlibError):
    """A manifest is missing or malformed."""


@dataclass
class Verification:
    """What :func:`verify_manifest` found; ``ok`` when nothing differs."""

    checked: int = 0
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.unlisted)

    def __str__(self) -> str:
        if self.ok:
            return f"all {self.checked} files match the manifest"
        parts = [f"{len(v)} {k}: {', '.join(v)}" for k, v in
                 (("changed", self.changed), ("missing", self.missing), ("not in the manifest", self.unlisted)) if v]
        return f"{self.checked} files checked; " + "; ".join(parts)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(root: Path, manifest: str) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.relative_to(root).as_posix() != manifest)


def _digests(root: Path, names: list[str], workers: int) -> dict[str, str]:
    with ThreadPoolExecutor(workers) as pool:  # hashlib releases the GIL on large buffers
        return dict(zip(names, pool.map(lambda n: sha256(root / n), names)))


def write_manifest(root: str | os.PathLike[str], manifest: str = MANIFEST, workers: int = 4) -> Path:
    """Write the manifest of every file below ``root`` (atomically) and return its path."""
    root = Path(root)
    digests = _digests(root, _files(root, manifest), workers)
    target = root / manifest
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text("".join(f"{digest}  {name}\n" for name, digest in digests.items()))
    tmp.replace(target)
    return target


def read_manifest(root: str | os.PathLike[str], manifest: str = MANIFEST) -> dict[str, str]:
    """Relative path → SHA-256 hex digest, as the manifest lists them.

    Raises:
        ManifestError: missing, or a line that is not ``<64 hex digits>  <path>``.
    """
    path = Path(root) / manifest
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ManifestError(f"cannot read the manifest {path}: {e.strerror}") from None
    entries = {}
    for n, line in enumerate(lines, 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not name:
            raise ManifestError(f"{path} line {n} is not '<sha256>  <path>': {line!r}")
        entries[name] = digest
    return entries


def verify_manifest(root: str | os.PathLike[str], manifest: str = MANIFEST, workers: int = 4) -> Verification:
    """Hash every file below ``root`` and compare with the manifest."""
    root = Path(root)
    listed = read_manifest(root, manifest)
    present = _files(root, manifest)
    result = Verification(missing=sorted(set(listed) - set(present)), unlisted=sorted(set(present) - set(listed)))
    both = [n for n in present if n in listed]
    for name, digest in _digests(root, both, workers).items():
        if digest != listed[name]:
            result.changed.append(name)
    result.checked = len(both)
    return result
