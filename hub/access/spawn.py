"""What a spawn takes from the access service's store: the user's personal grants in force, and
a note of which server mounts which of them (so that an ended grant stops exactly those)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..catalog import Dataset
from .store import AccessStore, iso


def personal_grants(store: str | Path, user: str, catalog: Iterable[Dataset],
                    standing: Iterable[Dataset]) -> dict[str, dict[str, Any]]:
    """Dataset id → the grant (as the manifest carries it) of each catalogued dataset that
    ``user`` may read by a personal grant in force now and not already by a group (``standing``)."""
    if not store or not Path(store).is_file():
        return {}
    known, standing_ids = {d.id for d in catalog}, {d.id for d in standing}
    access = AccessStore(store)
    try:
        found = access.active(user, time.time())
    finally:
        access.close()
    grants: dict[str, dict[str, Any]] = {}
    for g in found:  # soonest end first: a dataset granted twice counts with the grant that ends last
        if g["dataset"] in known and g["dataset"] not in standing_ids:
            grants[g["dataset"]] = {"id": g["id"], "expires": iso(g["expires"]), "purpose": g["purpose"],
                                    "approval": g["approval"], "approver": g["approver"]}
    return grants


def note_mounts(store: str | Path, user: str, server: str, grants: Iterable[dict[str, Any]]) -> None:
    """``user``'s ``server`` starts with exactly ``grants`` (none: any note of it is dropped)."""
    if not store:
        return
    access = AccessStore(store)
    try:
        access.mounted(user, server, [g["id"] for g in grants])
    finally:
        access.close()


def forget_mounts(store: str | Path, user: str, server: str) -> None:
    """``user``'s ``server`` stopped."""
    if not store or not Path(store).is_file():
        return
    access = AccessStore(store)
    try:
        access.unmounted(user, server)
    finally:
        access.close()
