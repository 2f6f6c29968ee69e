"""What a spawn takes from the access service's store: the published derivatives (catalog
entries beside the settings' catalog), the user's personal grants in force, and a note of which
server mounts which dataset (so that an ended grant or a deleted version stops exactly those)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..catalog import Dataset
from .store import AccessStore, iso


def _open(store: str | Path) -> AccessStore | None:
    """The store, if there is one yet (none before the access service first ran)."""
    return AccessStore(store) if store and Path(store).is_file() else None


def catalog(store: str | Path, datasets: Iterable[Dataset]) -> list[Dataset]:
    """The settings' catalog ``datasets`` and, after them, the published derivatives."""
    datasets = list(datasets)
    access = _open(store)
    if access is None:
        return datasets
    try:
        return datasets + [Dataset.from_dict(entry) for entry in access.published()]
    finally:
        access.close()


def personal_grants(store: str | Path, user: str, catalog: Iterable[Dataset],
                    standing: Iterable[Dataset]) -> dict[str, dict[str, Any]]:
    """Dataset id → the grant (as the manifest carries it) of each catalogued dataset that
    ``user`` may read by a personal grant in force now and not already by a group (``standing``)."""
    access = _open(store)
    if access is None:
        return {}
    known, standing_ids = {d.id for d in catalog}, {d.id for d in standing}
    try:
        found = access.active(user, time.time())
    finally:
        access.close()
    grants: dict[str, dict[str, Any]] = {}
    for g in found:  # soonest end first: a dataset granted twice counts with the grant that ends last
        if g["dataset"] in known and g["dataset"] not in standing_ids:
            grants[g["dataset"]] = {"id": g["id"], "expires": iso(g["expires"]), "purpose": g["purpose"],
                                    "approval": g["approval"], "approver": g["approver"], "versions": g["versions"]}
    return grants


def only_versions(personal: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Dataset id → the versions its personal grant is limited to (those that are)."""
    return {dataset: g["versions"] for dataset, g in personal.items() if g.get("versions")}


def downloads(mounted: Iterable[Dataset], allowed: Iterable[str]) -> str:
    """``MEDHUB_DOWNLOADS`` of a server that mounts ``mounted``: "off" if one of them has a
    sensitivity not in ``allowed`` (``access.direct_download``)."""
    allowed = set(allowed)
    return "on" if all(d.sensitivity in allowed for d in mounted) else "off"


def note_mounts(store: str | Path, user: str, server: str, datasets: Iterable[Dataset],
                personal: dict[str, dict[str, Any]]) -> None:
    """``user``'s ``server`` starts with exactly ``datasets``, those in ``personal`` by a grant."""
    if not store:
        return
    access = AccessStore(store)
    try:
        access.mounted(user, server, {d.id: personal.get(d.id, {}).get("id") for d in datasets})
    finally:
        access.close()


def forget_mounts(store: str | Path, user: str, server: str) -> None:
    """``user``'s ``server`` stopped."""
    access = _open(store)
    if access is None:
        return
    try:
        access.unmounted(user, server)
    finally:
        access.close()
