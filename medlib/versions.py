"""Versioned datasets: immutable versions in one folder, the newest named by a link.

A dataset catalogued with ``versioned = true`` grows by deliveries from the hospitals' edges
(:mod:`medhub.ingest`). Its folder holds one sub-folder per version and a link to the newest::

    <location>/v000001/            the files, MANIFEST.sha256, provenance.json, qc.json
    <location>/v000002/
    <location>/current -> v000002
    <location>/v000001.deleted.json  a deleted version's tombstone: who, when, why, what it held

A version is made complete beside the others under a hidden name, made read-only, and renamed
into place; then ``current`` is replaced by a new link in one ``rename``. A reader therefore sees
the old version or the new one, never part of one, and a version never changes once published.
A deleted version (:func:`delete`, by one of the dataset's owners) leaves its tombstone, and
its name is never given again. The hub writes and deletes versions (:func:`publish`,
:func:`delete`); ``medlib.datasets`` reads them (:func:`resolve`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import MedlibError
from .manifest import MANIFEST, read_manifest, sha256

CURRENT = "current"
PROVENANCE = "provenance.json"
QC_REPORT = "qc.json"
#: Files of a version that are about it rather than its data.
RECORDS = (MANIFEST, PROVENANCE, QC_REPORT)
VERSION = re.compile(r"^v(\d{6})$")
TOMBSTONE = re.compile(r"^(v\d{6})\.deleted\.json$")
#: A delivered file's path inside a version: relative, plain names, no hidden parts.
SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class VersionNotFound(MedlibError, LookupError):
    """No such version of a dataset; the message lists those there are."""


def versions(root: str | os.PathLike[str]) -> list[str]:
    """The published versions under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if VERSION.match(p.name) and p.is_dir())


def tombstones(root: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The deleted versions under ``root``: name → its tombstone."""
    root = Path(root)
    if not root.is_dir():
        return {}
    return {m.group(1): json.loads(p.read_text()) for p in sorted(root.iterdir()) if (m := TOMBSTONE.match(p.name))}


def resolve(root: str | os.PathLike[str], version: str | None = None) -> Path:
    """The folder of ``version`` (default: the newest: ``current``, or where only some versions are
    mounted, the newest of those) of the dataset at ``root``.

    Raises:
        VersionNotFound: none published yet, or not that one.
    """
    root = Path(root)
    if version is None:
        current = root / CURRENT
        if not current.is_dir() and versions(root):  # a grant of some versions mounts those alone
            return root / versions(root)[-1]
        if not current.is_dir():
            deleted = tombstones(root)
            if deleted:
                last = deleted[max(deleted)]
                raise VersionNotFound(f"every version of {root.name} was deleted (the newest, {last['version']}, at "
                                      f"{last['deleted_at']} by {last['deleted_by']}: {last['reason']})")
            raise VersionNotFound(f"{root} has no version yet: nothing has been delivered to this dataset")
        return root / os.readlink(current)
    found = versions(root)
    if version not in found:
        deleted = tombstones(root).get(version)
        if deleted:
            raise VersionNotFound(f"version {version} was deleted at {deleted['deleted_at']} by {deleted['deleted_by']}: "
                                  f"{deleted['reason']}; there are: {', '.join(found) or 'none'}")
        raise VersionNotFound(f"no version {version!r}; there are: {', '.join(found) or 'none yet'}")
    return root / version


def check_path(path: str) -> str:
    """``path`` if it may name a file inside a version (``a/b/c.dcm``: plain parts, no ``..``,
    not one of the version's records); raises ValueError saying why not."""
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or not all(SAFE_PART.match(p) for p in parts):
        raise ValueError(f"{path!r} is not a file path inside a dataset (relative; letters, digits, '.', '_', '-')")
    if path in RECORDS:
        raise ValueError(f"{path!r} is a record of the version itself")
    return path


def publish(root: str | os.PathLike[str], files: Mapping[str, tuple[Path, str]], provenance: dict[str, Any],
            qc: dict[str, Any] | None = None, base: str | None = None) -> str:
    """Publish a new version of the dataset at ``root`` and make it the newest.

    Args:
        files: path inside the version → (the file holding it, its SHA-256), for what is new or
            changed; the files are linked (or copied across file systems), never moved.
        provenance: what made the version (site, policy, request, software); ``version`` and
            ``base`` are added.
        qc: the quality report delivered with it.
        base: the version whose files it carries forward (default: the newest); a file of
            ``files`` replaces the base's file at its path.

    Returns:
        the new version's name.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base_dir = resolve(root, base) if (base or (root / CURRENT).exists()) else None
    sources: dict[str, tuple[Path, str]] = {}
    if base_dir is not None:
        sources = {name: (base_dir / name, digest) for name, digest in read_manifest(base_dir).items()
                   if name not in RECORDS}
    sources.update({check_path(name): (Path(path), digest) for name, (path, digest) in files.items()})
    staging = root / f".incoming-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        for name, (source, _) in sources.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(source, target)
        (staging / QC_REPORT).write_text(json.dumps(qc or {}, indent=1, sort_keys=True))
        _fsync_files(staging)  # on disk before it is named: a version survives a power cut whole
        while True:
            name = _next_name(root)
            (staging / PROVENANCE).write_text(json.dumps({**provenance, "version": name,
                                                          "base": base_dir.name if base_dir else None},
                                                         indent=1, sort_keys=True))
            listed = {**{n: d for n, (_, d) in sources.items()},
                      **{n: sha256(staging / n) for n in (PROVENANCE, QC_REPORT)}}
            (staging / MANIFEST).write_text("".join(f"{d}  {n}\n" for n, d in sorted(listed.items())))
            _read_only(staging)
            try:
                os.rename(staging, root / name)  # fails if another publisher took the name: take the next
                break
            except OSError:
                if not (root / name).exists():
                    raise
                _writable(staging)
                (staging / PROVENANCE).unlink()
                (staging / MANIFEST).unlink()
        link = root / f".{CURRENT}-{name}"
        link.symlink_to(name, target_is_directory=True)
        os.replace(link, root / CURRENT)
        _fsync(root)
        return name
    finally:
        if staging.exists():
            _writable(staging)
            shutil.rmtree(staging, ignore_errors=True)


def _next_name(root: Path) -> str:
    """The name after every version there is and ever was (a deleted one's is never reused)."""
    taken = [int(VERSION.match(v).group(1)) for v in versions(root)] + [int(v[1:]) for v in tombstones(root)]
    return f"v{max(taken, default=0) + 1:06d}"


def tombstone(root: str | os.PathLike[str], version: str, deleted_by: str, reason: str,
              deleted_at: str) -> dict[str, Any]:
    """What a version's tombstone says of it: who deleted it, when and why, and what it held
    (its manifest's SHA-256 and how many files it listed)."""
    folder = resolve(root, version)
    return {"version": version, "deleted_by": deleted_by, "deleted_at": deleted_at, "reason": reason,
            "manifest_sha256": sha256(folder / MANIFEST), "files": len(read_manifest(folder))}


def delete(root: str | os.PathLike[str], version: str, record: dict[str, Any]) -> None:
    """Delete a published version: its tombstone ``record`` (:func:`tombstone`, plus what the
    caller adds) is on disk first, then the version disappears in one rename, ``current`` names
    the newest left (or goes), and the files are removed."""
    root = Path(root)
    folder = resolve(root, version)
    stone = root / f"{version}.deleted.json"
    partial = root / f".{stone.name}.partial"
    partial.write_text(json.dumps(record, indent=1, sort_keys=True))
    _fsync(partial)
    os.replace(partial, stone)
    doomed = root / f".deleting-{version}-{os.urandom(4).hex()}"
    os.rename(folder, doomed)
    left = versions(root)
    current = root / CURRENT
    if current.is_symlink() and os.readlink(current) == version:
        if left:
            link = root / f".{CURRENT}-{left[-1]}"
            link.symlink_to(left[-1], target_is_directory=True)
            os.replace(link, current)
        else:
            current.unlink()
    _fsync(root)
    _writable(doomed)
    shutil.rmtree(doomed)


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link of ``source`` (no copy of the bytes), or a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def provenance(root: str | os.PathLike[str], version: str | None = None) -> dict[str, Any]:
    """The provenance record of a version (default: the newest)."""
    return json.loads((resolve(root, version) / PROVENANCE).read_text())


def _read_only(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o444)
    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        path.chmod(0o555)
    folder.chmod(0o555)


def _writable(folder: Path) -> None:
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)


def _fsync_files(folder: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(_fsync, [p for p in folder.rglob("*") if p.is_file()]))


def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
