"""The grants manifest the hub gives each server: which datasets its user may read, and where.

The hub signs it with its Ed25519 key (``medhub.grants.GrantSigner``) and passes it with the
public key in the environment (``MEDHUB_GRANTS``, ``MEDHUB_GRANTS_KEY``). A manifest that does
not verify is refused, which catches a damaged or foreign manifest. It is not what keeps a
user from other datasets: the server's code, environment and this library are the user's to
change, so a verification done here proves nothing to the platform. What a server can read is
decided outside it: the read-only mounts of exactly its grants (Docker, Kubernetes), and
datasets at a URL only when they are open data (``open_access`` in the catalog).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..contract import GRANTS_ENV, GRANTS_KEY_ENV, unpack_manifest
from ..errors import MedlibError



class GrantsError(MedlibError):
    """No grants manifest, or one that does not verify."""


def read_grants(document: str, public_key: str) -> dict[str, Any]:
    """The payload of a signed grants manifest, after checking its signature.

    Raises:
        GrantsError: malformed, or not signed by ``public_key``.
    """
    try:
        body, signature = unpack_manifest(document)
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key, validate=True))
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise GrantsError(f"the grants manifest is malformed ({e}); restart your server from the hub") from None
    try:
        key.verify(signature, body)
    except InvalidSignature:
        raise GrantsError("the grants manifest does not carry the hub's signature; restart your server "
                          "from the hub (an edited manifest grants nothing)") from None
    return json.loads(body)


def current_grants() -> dict[str, Any]:
    """This server's grants, from the environment the hub started it with.

    Raises:
        GrantsError: not started by a medhub hub, or a manifest that does not verify.
    """
    document, key = os.environ.get(GRANTS_ENV), os.environ.get(GRANTS_KEY_ENV)
    if not document or not key:
        raise GrantsError(f"no dataset grants: {GRANTS_ENV} is not set (this server was not started by "
                          "a medhub hub, or the hub has no dataset catalog)")
    return read_grants(document, key)
