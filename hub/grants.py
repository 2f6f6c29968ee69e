"""Dataset grants: how a server gets to see the datasets its user's groups may read.

The spawners call these at spawn. The Docker spawner turns grants into read-only bind mounts
at ``/datasets/<id>``; the local spawner (demo) into a per-user folder of links, a weaker
isolation documented in README.md. Every server also receives a grants manifest signed by the
hub (Ed25519): its user, its grants with where they are mounted, and which groups may read
the other datasets of the catalog (so that a refusal can say whom to ask). ``medlib.datasets``
reads it and checks the signature.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medlib.contract import DATASETS_ROOT, pack_manifest

from .catalog import Dataset



def docker_volumes(datasets: Iterable[Dataset], only: dict[str, list[str]] | None = None) -> dict[str, dict[str, str]]:
    """DockerSpawner ``volumes`` entries: each local dataset read-only at ``/datasets/<id>``; one
    of ``only`` (id → versions) as those versions alone, each at ``/datasets/<id>/<version>``."""
    only = only or {}
    volumes = {}
    for d in (d for d in datasets if d.is_local):
        for source, target in ([(d.path / v, f"{DATASETS_ROOT}/{d.id}/{v}") for v in only[d.id]] if d.id in only
                               else [(d.path, f"{DATASETS_ROOT}/{d.id}")]):
            volumes[str(source)] = {"bind": target, "mode": "ro"}
    return volumes


def local_view(view_dir: Path, datasets: Iterable[Dataset], only: dict[str, list[str]] | None = None) -> Path:
    """Make ``view_dir`` hold exactly one link per granted local dataset, ``<id> -> path``; one of
    ``only`` (id → versions) is a folder of links to those versions alone."""
    only = only or {}
    return link_folder(view_dir, {d.id: {v: d.path / v for v in only[d.id]} if d.id in only else d.path
                                  for d in datasets if d.is_local})


def link_folder(view_dir: Path, links: dict[str, Path | dict[str, Path]]) -> Path:
    """Make ``view_dir`` hold exactly the links ``name -> folder`` (a dict: a folder of such links).

    The folder is rebuilt beside the old one and swapped in, so a server never sees a
    half-made view and a revoked grant disappears at the next spawn.
    """
    view_dir = Path(view_dir)
    view_dir.parent.mkdir(parents=True, exist_ok=True)
    fresh = view_dir.with_name(view_dir.name + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(mode=0o755)
    for name, target in links.items():
        if isinstance(target, dict):
            (fresh / name).mkdir(mode=0o755)
            for part, folder in target.items():
                (fresh / name / part).symlink_to(folder, target_is_directory=True)
        else:
            (fresh / name).symlink_to(target, target_is_directory=True)
    old = view_dir.with_name(view_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if view_dir.exists():
        os.replace(view_dir, old)
    os.replace(fresh, view_dir)
    shutil.rmtree(old, ignore_errors=True)
    return view_dir


class GrantSigner:
    """The hub's Ed25519 key for grants manifests, kept in the state folder (mode 0600)."""

    def __init__(self, key_file: str | os.PathLike[str]):
        path = Path(key_file)
        if not path.exists():
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(pem)
            except FileExistsError:  # another process made it first: use that one
                pass
        self._key = serialization.load_pem_private_key(path.read_bytes(), password=None)

    @property
    def public_key(self) -> str:
        """The public key, base64 of its 32 raw bytes, for :data:`GRANTS_KEY_ENV`."""
        raw = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    def manifest(self, user: str, groups: Iterable[str], catalog: Iterable[Dataset], mine: Iterable[Dataset],
                 root: str, personal: dict[str, dict] | None = None) -> str:
        """The signed grants manifest of ``user`` (member of ``groups``) for a server that sees
        ``mine`` (local ones under ``root``, others at their URL), of which those in ``personal``
        by a personal grant (dataset id → its id, expiry, purpose, approval and approver):
        base64 of ``{"payload", "signature"}``."""
        catalog, mine, personal = list(catalog), list(mine), personal or {}
        payload = {
            "version": 1,
            "user": user,
            "groups": sorted(groups),
            "issued_at": int(time.time()),
            "granted": [{**_public(d), "path": f"{root}/{d.id}" if d.is_local else d.location,
                         **({"grant": personal[d.id]} if d.id in personal else {})} for d in mine],
            "others": [{"id": d.id, "title": d.title, "groups": list(d.readers()), "owners": list(d.owners)}
                       for d in catalog if d not in mine],
        }
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return pack_manifest(body, self._key.sign(body))  # base64, no braces: KubeSpawner formats env values


def _public(d: Dataset) -> dict[str, object]:
    """What a server may know of a granted dataset: everything but the host location."""
    hidden = ("location", "groups", "identifiable_groups", "max_grant_days")
    return {k: v for k, v in d.to_dict().items() if k not in hidden} | {
        "jsonld": d.jsonld()}
