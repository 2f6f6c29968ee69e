"""The hub's state folder: database, secrets and per-user views, in one place.

Secrets are created on first use with mode 0600 and reused afterwards, so a restarted
hub keeps its users' sessions (cookie secret), their encrypted auth_state (crypt key) and
its proxy's routes (proxy token).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


class StateDir:
    """Paths and persistent secrets under ``hub.state_dir``."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def database(self) -> Path:
        return self.path / "jupyterhub.sqlite"

    @property
    def cookie_secret(self) -> Path:
        return self.path / "jupyterhub_cookie_secret"

    @property
    def views_dir(self) -> Path:
        return self.path / "views"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    @property
    def grants_key(self) -> Path:
        """The Ed25519 key that signs grants manifests (made by :class:`medhub.grants.GrantSigner`)."""
        return self.path / "grants_signing_key.pem"

    @property
    def audit_dir(self) -> Path:
        """The audit log's segments and checkpoints (written by the audit service only)."""
        return self.path / "audit"

    @property
    def audit_key_file(self) -> Path:
        """The audit log's HMAC key (0600; read by the hub and its audit service, never by users)."""
        self.secret("audit_hmac_key")
        return self.path / "audit_hmac_key"

    def audit_key(self) -> bytes:
        return bytes.fromhex(self.secret("audit_hmac_key"))

    def audit_writer_token(self) -> str:
        """The API token with which the hub writes its own events to the audit service."""
        return self.secret("audit_hub_writer_token")

    @property
    def idp_dir(self) -> Path:
        return self.path / "idp"

    def secret(self, name: str, nbytes: int = 32) -> str:
        """A hex secret stored in ``<state>/<name>`` (0600), created on first use."""
        self.ensure()
        file = self.path / name
        try:
            return file.read_text().strip()
        except FileNotFoundError:
            value = secrets.token_hex(nbytes)
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(value + "\n")
            return value

    def proxy_token(self) -> str:
        return self.secret("proxy_auth_token")

    def crypt_key(self) -> str:
        return self.secret("jupyterhub_crypt_key")
