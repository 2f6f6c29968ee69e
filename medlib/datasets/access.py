"""The datasets this server's user may read, opened in one line; every access accounted for.

Grants come from the hub's signed manifest (:mod:`.grants`). A local dataset is read where the
hub mounted it (read-only); one at a URL (any fsspec protocol: ``s3://``, ``gs://``, ...) is
copied once into ``~/.cache/medlib/datasets/<id>`` and checked against its manifest there. The
headers of a dataset's files are indexed in ``~/.cache/medlib/index/<id>.json`` and read again
only when a file's size or modification time changes.
"""

from __future__ import annotations

import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

from .. import audit
from ..contract import GRANTS_ENV, GRANTS_KEY_ENV, SLUG
from ..manifest import MANIFEST, Verification, verify_manifest
from .grants import GrantsError, current_grants, read_grants
from .series import Series, find_series

CACHE_ENV = "MEDLIB_CACHE_DIR"
#: What list() and info() show of a grant.
FIELDS = ("id", "title", "description", "modality", "licence", "identifier", "provenance", "contact",
          "sensitivity", "path")


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
            return entry
    for other in grants["others"]:
        if other["id"] == dataset_id:
            groups = ", ".join(other["groups"]) or "no group yet"
            audit.record("dataset-open", {"dataset": dataset_id}, outcome="denied")
            raise PermissionError(f"dataset {dataset_id!r} ({other['title']}) is not granted to {grants['user']}: "
                                  f"it is readable by members of {groups}; ask its data steward to add you "
                                  "to one of them, then restart your server")
    granted = ", ".join(e["id"] for e in grants["granted"]) or "none"
    raise DatasetNotFound(f"no dataset {dataset_id!r} in the catalog; yours: {granted}")


def list_datasets() -> list[dict[str, Any]]:
    """The datasets granted to this server's user, with their catalog metadata."""
    return [{k: e.get(k, "") for k in FIELDS} for e in _grants()["granted"]]


def info(dataset_id: str) -> dict[str, Any]:
    """One granted dataset's metadata, with its schema.org JSON-LD under ``jsonld``."""
    entry = _entry(dataset_id)
    return {**{k: entry.get(k, "") for k in FIELDS}, "jsonld": entry.get("jsonld", {})}


def local_root(dataset_id: str) -> Path:
    """Where the dataset's files are read (a URL dataset: its local copy, made on first use)."""
    return _root(_entry(dataset_id))


def _manifest(entry: dict[str, Any]) -> str:
    return entry.get("manifest", MANIFEST)


def _root(entry: dict[str, Any]) -> Path:
    location = entry["path"]
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


def series(dataset_id: str) -> list[Series]:
    """The image series of a granted dataset (headers only; no pixels read)."""
    return _series(_entry(dataset_id))


def _series(entry: dict[str, Any]) -> list[Series]:
    return find_series(_root(entry), skip=(_manifest(entry),), index=_cache_dir() / "index" / f"{entry['id']}.json")


def open_dataset(dataset_id: str):
    """A granted dataset as an ``xarray.DataTree``: one node per series (named by its Series
    Instance UID), each a lazy dask-backed ``image`` (z, y, x) in mm with its DICOM metadata."""
    import xarray as xr

    entry = _entry(dataset_id)
    found = _series(entry)
    tree = xr.DataTree.from_dict({s.uid: s.to_xarray() for s in found})
    tree.attrs.update({k: entry.get(k, "") for k in FIELDS if k != "path"})
    audit.record("dataset-open", {"dataset": dataset_id, "series": len(found)})
    return tree


def as_monai(dataset_id: str, transforms=None, cache: bool = False):
    """A granted dataset as a MONAI ``Dataset`` (``CacheDataset`` with ``cache``) of dicts, one
    per series: ``image`` (a MetaTensor, x-y-z, RAS affine), ``series`` and ``dataset``; then
    ``transforms``."""
    from .monai import monai_dataset

    found = series(dataset_id)
    audit.record("dataset-open", {"dataset": dataset_id, "series": len(found)}, via="monai")
    return monai_dataset([{"image": s, "series": s.uid, "dataset": dataset_id} for s in found], transforms, cache)


def verify(dataset_id: str) -> Verification:
    """Check every file of a granted dataset against its manifest; the result names each file
    that changed, is missing or is not in the manifest."""
    entry = _entry(dataset_id)
    result = verify_manifest(_root(entry), _manifest(entry))
    audit.record("dataset-verify", {"dataset": dataset_id, "files": result.checked},
                 "success" if result.ok else "failure", changed=result.changed, missing=result.missing,
                 unlisted=result.unlisted)
    return result


__all__ = ["DatasetNotFound", "GrantsError", "as_monai", "info", "list_datasets", "local_root", "open_dataset",
           "series", "verify"]
