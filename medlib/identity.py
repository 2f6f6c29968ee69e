"""Who the notebook server belongs to, as the hub stated it at spawn.

The spawner puts the user's name, groups, profile and dataset folder in the server's
environment (``MEDHUB_*``); the hub's own ``JUPYTERHUB_*`` variables say where the hub is.
This module only reads them: identity is decided by the hub, never here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .contract import DATASETS_DIR_ENV, GROUPS_ENV, PROFILE_ENV, USER_ENV
from .errors import NotInMedhubServer


@dataclass(frozen=True)
class Identity:
    """The server owner's identity and what the hub granted at spawn."""

    user: str
    groups: tuple[str, ...]
    profile: str
    datasets_dir: str
    hub_api_url: str


def whoami(environ: Mapping[str, str] | None = None) -> Identity:
    """The identity of this server's owner.

    Raises:
        NotInMedhubServer: outside a server spawned by medhub.

    Example:
        >>> whoami({"MEDHUB_USER": "ada", "MEDHUB_GROUPS": "a,b", "MEDHUB_PROFILE": "cpu",
        ...         "MEDHUB_DATASETS_DIR": "/datasets"}).groups
        ('a', 'b')
    """
    env = os.environ if environ is None else environ
    if USER_ENV not in env:
        raise NotInMedhubServer(
            "no medhub identity in this environment: run this inside a notebook server started by medhub"
        )
    return Identity(
        user=env[USER_ENV],
        groups=tuple(g for g in env.get(GROUPS_ENV, "").split(",") if g),
        profile=env.get(PROFILE_ENV, ""),
        datasets_dir=env.get(DATASETS_DIR_ENV, ""),
        hub_api_url=env.get("JUPYTERHUB_API_URL", ""),
    )
