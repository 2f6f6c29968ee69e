"""The site-local mapping store: pseudonym → original, encrypted, for authorised re-identification.

Optional and kept at the site (never beside the outputs): an SQLite file whose originals are
encrypted with AES-256-GCM under a key derived from the site key (HKDF-SHA-256), each bound
to its kind and pseudonym, so that neither the file alone nor the key alone reveals anything,
and a row moved to another pseudonym does not decrypt. Whoever holds both may re-identify:
``medlib anonymize reidentify``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import MedlibError
from .keys import SiteKey

SCHEMA = """
CREATE TABLE IF NOT EXISTS mapping (
    kind TEXT NOT NULL,        -- uid | patient-id | patient-name
    pseudonym TEXT NOT NULL,
    sealed BLOB NOT NULL,      -- 12-byte nonce + AES-GCM ciphertext of the original
    PRIMARY KEY (kind, pseudonym)
);
CREATE TABLE IF NOT EXISTS store (key_fingerprint TEXT NOT NULL);
"""


class MappingStoreError(MedlibError):
    """The store cannot be opened with this key, or a value cannot be decrypted."""


class MappingStore:
    """An encrypted pseudonym → original table in one SQLite file (mode 0600)."""

    def __init__(self, path: str | os.PathLike[str], key: SiteKey):
        self.path = Path(path)
        fresh = not self.path.exists()
        if fresh:
            self.path.touch(mode=0o600)
        self._db = sqlite3.connect(self.path)
        self._db.executescript(SCHEMA)
        row = self._db.execute("SELECT key_fingerprint FROM store").fetchone()
        if row is None:
            self._db.execute("INSERT INTO store VALUES (?)", (key.fingerprint,))
            self._db.commit()
        elif row[0] != key.fingerprint:
            raise MappingStoreError(f"{self.path} belongs to another site key (fingerprint {row[0]}, "
                                    f"this key {key.fingerprint})")
        secret = key.digest("mapping-store", "aes-256-gcm")
        self._aead = AESGCM(HKDF(hashes.SHA256(), 32, salt=None, info=b"medlib mapping store").derive(secret))

    def add(self, rows: Iterable[tuple[str, str, str]]) -> None:
        """Store (kind, pseudonym, original) rows; existing pseudonyms are left as they are."""
        sealed = []
        for kind, pseudonym, original in rows:
            nonce = os.urandom(12)
            sealed.append((kind, pseudonym, nonce + self._aead.encrypt(nonce, original.encode(), _aad(kind, pseudonym))))
        self._db.executemany("INSERT OR IGNORE INTO mapping VALUES (?, ?, ?)", sealed)
        self._db.commit()

    def lookup(self, pseudonym: str) -> list[tuple[str, str]]:
        """Every (kind, original) behind ``pseudonym``."""
        out = []
        for kind, sealed in self._db.execute("SELECT kind, sealed FROM mapping WHERE pseudonym = ?", (pseudonym,)):
            try:
                original = self._aead.decrypt(sealed[:12], sealed[12:], _aad(kind, pseudonym)).decode()
            except InvalidTag:
                raise MappingStoreError(f"the entry for {pseudonym!r} in {self.path} was altered") from None
            out.append((kind, original))
        return out

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM mapping").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def _aad(kind: str, pseudonym: str) -> bytes:
    return kind.encode() + b"\0" + pseudonym.encode()
