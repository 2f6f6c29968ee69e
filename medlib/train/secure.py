"""Secure aggregation by pairwise masking (after Bonawitz et al., CCS 2017).

Each site makes an X25519 key pair per round and sends only the public key. Every pair of sites
(i, j) then derives the same secret (Diffie-Hellman), stretches it by HKDF into a seed and
draws a mask vector from it; site i adds the mask where i < j and subtracts it where i > j.
Updates are fixed-point integers modulo 2^64, so the masks cancel exactly in the sum: the
server learns the sum of the updates and nothing about any one of them (as long as two or more
sites take part). A site that drops out before uploading is handled by the caller: the others
upload again, masked among themselves only.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: fixed-point scale: updates are rounded to multiples of 2^-24 (about 6e-8).
SCALE_BITS = 24


def new_keys() -> tuple[X25519PrivateKey, bytes]:
    """A private key (kept at the site) and its public key (sent through the server)."""
    private = X25519PrivateKey.generate()
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return private, public


def encode(vector: np.ndarray) -> np.ndarray:
    """Float64 → fixed point, as uint64 (two's complement, so sums wrap modulo 2^64)."""
    return np.round(np.asarray(vector, dtype=np.float64) * 2.0 ** SCALE_BITS).astype(np.int64).view(np.uint64)


def decode(total: np.ndarray) -> np.ndarray:
    """A sum of encoded vectors back to float64."""
    return total.view(np.int64).astype(np.float64) / 2.0 ** SCALE_BITS


def _mask(secret: bytes, context: bytes, size: int) -> np.ndarray:
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=context).derive(secret)
    return np.random.PCG64(int.from_bytes(seed, "big")).random_raw(size).astype(np.uint64)


def mask(encoded: np.ndarray, me: str, private: X25519PrivateKey, publics: dict[str, bytes],
         context: str) -> np.ndarray:
    """``encoded`` plus the pairwise masks shared with every other site in ``publics``
    (names → public keys, this site included or not); ``context`` names the run and round."""
    out = encoded.copy()
    for other, public in sorted(publics.items()):
        if other == me:
            continue
        secret = private.exchange(X25519PublicKey.from_public_bytes(public))
        pair = "|".join(sorted((me, other)))
        m = _mask(secret, f"{context}|{pair}".encode(), len(encoded))
        out = out + m if me < other else out - m  # uint64: wraps modulo 2^64
    return out
