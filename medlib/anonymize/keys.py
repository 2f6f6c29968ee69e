"""The site key: the one secret behind every pseudonym, UID and date shift of a site.

The same key gives the same outputs on every machine and in every run, so that files
anonymized at different times still link up; a different key gives unrelated outputs. The
key file is created with mode 0600 and refused if others can read it; the key never appears
in outputs, reports or logs (its ``repr`` hides it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from ..errors import MedlibError

KEY_BYTES = 32
#: Modified dates move each patient back by 1 to 11 years (whole days), never forwards.
SHIFT_MIN_DAYS, SHIFT_SPAN_DAYS = 365, 3650


class KeyFileError(MedlibError):
    """The key file is missing, malformed, or readable by others."""


class SiteKey:
    """HMAC-SHA-256 keyed derivations of pseudonyms, UIDs and date shifts."""

    def __init__(self, secret: bytes):
        if len(secret) < KEY_BYTES:
            raise KeyFileError(f"a site key needs at least {KEY_BYTES} bytes")
        self._secret = secret

    def __repr__(self) -> str:
        return f"SiteKey(fingerprint={self.fingerprint})"

    def __reduce__(self):  # picklable for worker processes; never printed
        return (SiteKey, (self._secret,))

    @property
    def fingerprint(self) -> str:
        """A short public identifier of the key (not secret), for reports."""
        return hashlib.sha256(b"medlib-key-fingerprint\0" + self._secret).hexdigest()[:16]

    @classmethod
    def generate(cls, path: str | os.PathLike[str]) -> SiteKey:
        """Create a new key file (mode 0600). Refuses to overwrite an existing one."""
        secret = secrets.token_bytes(KEY_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyFileError(f"{path} exists; a site key is never overwritten (its pseudonyms would be lost)") from None
        with os.fdopen(fd, "w") as f:
            f.write(secret.hex() + "\n")
        return cls(secret)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SiteKey:
        """Read a key file made by :meth:`generate`.

        Raises:
            KeyFileError: missing, malformed, or readable by group or others.
        """
        path = Path(path)
        try:
            mode = path.stat().st_mode
            text = path.read_text().strip()
        except OSError as e:
            raise KeyFileError(f"cannot read the site key {path}: {e.strerror}; create one with "
                               "`medlib anonymize keygen FILE`") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); run `chmod 600 {path}`")
        try:
            return cls(bytes.fromhex(text))
        except ValueError:
            raise KeyFileError(f"{path} is not a medlib site key (expected {KEY_BYTES * 2} hex digits)") from None

    def digest(self, purpose: str, value: str) -> bytes:
        """HMAC-SHA-256 of ``value`` for one ``purpose`` (purposes never collide)."""
        return hmac.new(self._secret, purpose.encode() + b"\0" + value.encode(), hashlib.sha256).digest()

    def uid(self, uid: str) -> str:
        """A ``2.25.`` UID (at most 44 characters) derived from ``uid``."""
        return "2.25." + str(int.from_bytes(self.digest("uid", uid.strip())[:16], "big"))

    def pseudonym(self, purpose: str, value: str, length: int = 16) -> str:
        """Upper-case letters and digits derived from ``value``."""
        return base64.b32encode(self.digest(purpose, value)).decode()[:length]

    def date_shift_days(self, patient: str) -> int:
        """Days to move one patient's dates (negative), the same for all their files."""
        n = int.from_bytes(self.digest("date-shift", patient)[:4], "big")
        return -(SHIFT_MIN_DAYS + n % SHIFT_SPAN_DAYS)
