"""The datasets this server's user may read, opened in one line; every access accounted for.

A dataset that sites deliver to (catalogued ``versioned``) is read at its newest version unless
a call names another (``version="v000002"``): each is immutable (:mod:`medlib.versions`), so a
result can name exactly the data it came from.

Grants come from the hub's signed manifest (:mod:`.grants`). A local dataset is read where the
hub mounted it (read-only); one at a URL (any fsspec protocol: ``s3://``, ``gs://``, ...) is
copied once into ``~/.cache/medlib/datasets/<id>`` and checked against its manifest there. The
headers of a dataset's files are indexed in ``~/.cache/medlib/index/<id>.json`` and read again
only when a file's size or modification time changes.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .. import audit, versions as _versions
from ..contract import GRANTS_ENV, GRANTS_KEY_ENV, SLUG, parse_time
from ..manifest import MANIFEST, Verification, verify_manifest
from .grants import GrantsError, current_grants, read_grants
from .series import Series, find_series

CACHE_ENV = "MEDLIB_CACHE_DIR"
#: How a user asks for a dataset (the hub's access page offers the same form).
_REQUEST = "medhub access request {} --purpose '...' --approval REF --until YYYY-MM-DD"
#: What list() and info() show of a grant.
FIELDS = ("id", "title", "description", "modality", "licence", "identifier", "provenance", "contact",
          "sensitivity", "versioned", "path")


class DatasetNotFound(LookupError):
    """No dataset of that id in the catalog."""


def _grants() -> dict[str, Any]:
    document, key = os.environ.get(GRANTS_ENV), os.environ.get(GRANTS_KEY_ENV)
    return _verified(document, key) if document and key else current_grants()  # the latter says what is missing


@lru_cache(maxsize=4)
def _verified(document: str, key: str) -> dict[str, Any]:
    return read_grants(document, key)


def _cache_dir() -> Path:
    """This user's cache: copies of datasets at URLs, and the header index of each dataset."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "medlib")


def _entry(dataset_id: str) -> dict[str, Any]:
    """The grant of ``dataset_id``.

    Raises:
        ValueError: not a dataset id (path separators, ``..``).
        PermissionError: in the catalog, but not granted to this user.
        DatasetNotFound: not in the catalog.
    """
    if not isinstance(dataset_id, str) or not SLUG.match(dataset_id):
        raise ValueError(f"{dataset_id!r} is not a dataset id (lower-case letters, digits and '-'; "
                         "no paths): see medlib.datasets.list()")
    grants = _grants()
    for entry in grants["granted"]:
        if entry["id"] == dataset_id:
            grant = entry.get("grant")
            if grant and parse_time(grant["expires"]) <= dt.datetime.now(dt.timezone.utc):
                audit.record("dataset-open", {"dataset": dataset_id}, outcome="denied", grant=grant["id"],
                             expired=grant["expires"])
                raise PermissionError(f"your grant of {dataset_id!r} (for {grant['purpose']}, approved by "
                                      f"{grant['approver']}) ended at {grant['expires']} UTC; ask its owners again: "
                                      f"{_REQUEST.format(dataset_id)}")
            return entry
    for other in grants["others"]:
        if other["id"] == dataset_id:
            groups = ", ".join(other["groups"]) or "no group yet"
            audit.record("dataset-open", {"dataset": dataset_id}, outcome="denied")
            raise PermissionError(f"dataset {dataset_id!r} ({other['title']}) is not granted to {grants['user']}: "
                                  f"it is readable by members of {groups}. Ask its owners "
                                  f"({', '.join(other.get('owners', ())) or 'its data steward'}) for it: "
                                  f"{_REQUEST.format(dataset_id)}; once approved, restart your server")
    granted = ", ".join(e["id"] for e in grants["granted"]) or "none"
    raise DatasetNotFound(f"no dataset {dataset_id!r} in the catalog; yours: {granted}")


def list_datasets() -> list[dict[str, Any]]:
    """The datasets granted to this server's user, with their catalog metadata; ``expires`` is
    when a personal grant ends (None: a standing grant of the user's groups)."""
    return [{k: e.get(k, "") for k in FIELDS} | {"expires": e.get("grant", {}).get("expires")}
            for e in _grants()["granted"]]


def info(dataset_id: str) -> dict[str, Any]:
    """One granted dataset's metadata, with its schema.org JSON-LD under ``jsonld``."""
    entry = _entry(dataset_id)
    return {**{k: entry.get(k, "") for k in FIELDS}, "jsonld": entry.get("jsonld", {})}


def local_root(dataset_id: str, version: str | None = None) -> Path:
    """Where the dataset's files are read (a URL dataset: its local copy, made on first use; a
    versioned one: the folder of ``version``, default the newest)."""
    return _root(_entry(dataset_id), version)


def versions(dataset_id: str) -> list[dict[str, Any]]:
    """The versions of a versioned dataset, oldest first: each one's provenance (site, policy,
    harvest request, software, when), and for a deleted one its tombstone under ``deleted``."""
    entry = _entry(dataset_id)
    if not entry.get("versioned"):
        return []
    root = Path(entry["path"])
    found = {name: _versions.provenance(root, name) for name in _versions.versions(root)}
    found.update({name: {"version": name, "deleted": stone} for name, stone in _versions.tombstones(root).items()})
    return [found[name] for name in sorted(found)]


def _manifest(entry: dict[str, Any]) -> str:
    return MANIFEST if entry.get("versioned") else entry.get("manifest", MANIFEST)


def _root(entry: dict[str, Any], version: str | None = None) -> Path:
    location = entry["path"]
    if entry.get("versioned"):
        only = entry.get("grant", {}).get("versions")
        if version is not None and only and version not in only:
            raise PermissionError(f"your grant of {entry['id']!r} covers {', '.join(only)} only, not {version}; ask its "
                                  f"owners for it: {_REQUEST.format(entry['id'])}")
        return _versions.resolve(location, version)
    if version is not None:
        raise _versions.VersionNotFound(f"dataset {entry['id']!r} is not versioned: it has one fixed content; "
                                        "leave out version=")
    if "://" not in location:
        return Path(location)
    target = _cache_dir() / "datasets" / entry["id"]
    if not (target / _manifest(entry)).is_file():
        import fsspec

        fs, _, (root,) = fsspec.get_fs_token_paths(location)
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        fs.get(root.rstrip("/") + "/", str(tmp) + "/", recursive=True)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target


def series(dataset_id: str, version: str | None = None) -> list[Series]:
    """The image series of a granted dataset (headers only; no pixels read)."""
    return _series(_entry(dataset_id), version)


def _series(entry: dict[str, Any], version: str | None = None) -> list[Series]:
    root = _root(entry, version)
    name = f"{entry['id']}@{root.name}" if entry.get("versioned") else entry["id"]
    return find_series(root, skip=(_manifest(entry),), index=_cache_dir() / "index" / f"{name}.json")


def _opened(entry: dict[str, Any], version: str | None) -> dict[str, Any]:
    """The audit event's object for reading ``entry`` at ``version``."""
    if not entry.get("versioned"):
        return {"dataset": entry["id"]}
    return {"dataset": entry["id"], "version": _root(entry, version).name}


@dataclass(frozen=True)
class Located:
    """Where a granted dataset's version is read, and what names it in the audit log."""

    root: Path
    object: dict[str, Any]  # {"dataset": id} and, for a versioned dataset, "version"
    manifest: Path  # its manifest of SHA-256 digests


def locate(dataset_id: str, version: str | None = None) -> Located:
    """The folder, audit object and manifest of a granted dataset at ``version`` (default: the newest)."""
    entry = _entry(dataset_id)
    root = _root(entry, version)
    return Located(root, _opened(entry, version), root / _manifest(entry))


def open_dataset(dataset_id: str, version: str | None = None):
    """A granted dataset as an ``xarray.DataTree``: one node per series (named by its Series
    Instance UID), each a lazy dask-backed ``image`` (z, y, x) in mm with its DICOM metadata.
    A versioned dataset opens at ``version`` (default: the newest), named in ``attrs``."""
    import xarray as xr

    entry = _entry(dataset_id)
    found = _series(entry, version)
    tree = xr.DataTree.from_dict({s.uid: s.to_xarray() for s in found})
    opened = _opened(entry, version)
    tree.attrs.update({k: entry.get(k, "") for k in FIELDS if k != "path"} | opened)
    audit.record("dataset-open", {**opened, "series": len(found)})
    return tree


def table(dataset_id: str, name: str | None = None, version: str | None = None):
    """A table (CSV) of a granted dataset as a pandas ``DataFrame``: a features-only delivery's
    radiomic features, for one. ``name`` is its path in the dataset; it may be left out when
    there is one table."""
    import pandas as pd

    entry = _entry(dataset_id)
    root = _root(entry, version)
    found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.csv"))
    if name is None:
        if len(found) != 1:
            raise LookupError(f"dataset {dataset_id!r} holds {len(found)} tables ({', '.join(found) or 'none'}); "
                              "name one")
        name = found[0]
    if name not in found:
        raise LookupError(f"dataset {dataset_id!r} has no table {name!r}; it has: {', '.join(found) or 'none'}")
    audit.record("dataset-open", {**_opened(entry, version), "table": name})
    return pd.read_csv(root / name)


def as_monai(dataset_id: str, transforms=None, cache: bool = False, version: str | None = None):
    """A granted dataset as a MONAI ``Dataset`` (``CacheDataset`` with ``cache``) of dicts, one
    per series: ``image`` (a MetaTensor, x-y-z, RAS affine), ``series`` and ``dataset``; then
    ``transforms``."""
    from .monai import monai_dataset

    entry = _entry(dataset_id)
    found = _series(entry, version)
    audit.record("dataset-open", {**_opened(entry, version), "series": len(found)}, via="monai")
    return monai_dataset([{"image": s, "series": s.uid, "dataset": dataset_id} for s in found], transforms, cache)


def verify(dataset_id: str, version: str | None = None) -> Verification:
    """Check every file of a granted dataset against its manifest; the result names each file
    that changed, is missing or is not in the manifest."""
    entry = _entry(dataset_id)
    result = verify_manifest(_root(entry, version), _manifest(entry))
    audit.record("dataset-verify", {**_opened(entry, version), "files": result.checked},
                 "success" if result.ok else "failure", changed=result.changed, missing=result.missing,
                 unlisted=result.unlisted)
    return result


__all__ = ["DatasetNotFound", "GrantsError", "as_monai", "info", "list_datasets", "local_root", "open_dataset",
           "series", "table", "verify", "versions"]
