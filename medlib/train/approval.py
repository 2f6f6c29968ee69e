"""What a site lets run: its approval of federated recipes, decided at the site.

A site keeps a policy file of its own (TOML), which no job from the centre can change::

    site = "site-a"
    approved = ["sha256:3f1c…"]                 # recipes the site approved, by digest
    signers = ["MCowBQYDK2VwAyEA…"]             # or: any recipe one of these keys signed (Ed25519, base64 DER)
    max_epochs = 5                              # optional caps
    require_privacy = true                      # DP-SGD or nothing
    min_noise_multiplier = 0.8
    models = "/data/models"                     # where final and fine-tuned models are kept (optional)
    share_fine_tuned = false                    # transfer learning: only metrics leave (the default)
    [datasets]                                  # the dataset ids recipes may name → the site's folders
    lung-ct = "/data/lung-ct"

:meth:`SitePolicy.decide` takes a recipe exactly as it arrived (its bytes, and a signature if
one came) and either returns it with the folder it may read, or raises :class:`Refused`
naming what the site would have to approve. A recipe changed after its approval has another
digest and its signature no longer verifies: it is refused like any other.
"""

from __future__ import annotations

import base64
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import MedlibError
from .recipe import Recipe, RecipeError, parse


class Refused(MedlibError, PermissionError):
    """The site does not run this recipe; the message says why and what to approve."""


@dataclass(frozen=True)
class SitePolicy:
    site: str
    datasets: dict[str, Path]
    approved: frozenset[str] = frozenset()
    signers: tuple[Ed25519PublicKey, ...] = ()
    max_epochs: int | None = None
    require_privacy: bool = False
    min_noise_multiplier: float = 0.0
    models: Path | None = None
    share_fine_tuned: bool = False
    source: Path = field(default=Path("policy.toml"), compare=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SitePolicy:
        """Read a site's policy file.

        Raises:
            MedlibError: naming the file and the key that is wrong.
        """
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise MedlibError(f"cannot read the site's federated policy {path}: {e}") from None
        known = {"site", "datasets", "approved", "signers", "max_epochs", "require_privacy", "min_noise_multiplier",
                 "models", "share_fine_tuned"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MedlibError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            signers = tuple(serialization.load_der_public_key(base64.b64decode(k)) for k in data.get("signers", []))
        except ValueError as e:
            raise MedlibError(f"{path}: signers must be base64 DER Ed25519 public keys ({e})") from None
        if not all(isinstance(k, Ed25519PublicKey) for k in signers):
            raise MedlibError(f"{path}: signers must be Ed25519 public keys")
        return cls(site=str(data.get("site", "")), datasets={k: Path(v) for k, v in data.get("datasets", {}).items()},
                   approved=frozenset(data.get("approved", [])), signers=signers,
                   max_epochs=data.get("max_epochs"), require_privacy=bool(data.get("require_privacy", False)),
                   min_noise_multiplier=float(data.get("min_noise_multiplier", 0.0)),
                   models=Path(data["models"]) if data.get("models") else None,
                   share_fine_tuned=bool(data.get("share_fine_tuned", False)), source=path)

    def decide(self, document: bytes, signature: bytes | None = None) -> tuple[Recipe, Path]:
        """The recipe and the folder of its dataset, if this site runs it.

        Raises:
            Refused: not a recipe, not approved (by digest or by a trusted signer), beyond the
                site's caps, or naming a dataset the site does not hold.
        """
        try:
            recipe = parse(document)
        except RecipeError as e:
            raise Refused(f"site {self.site} refuses the job: {e}") from None
        if recipe.digest not in self.approved and not self._signed(recipe, signature):
            raise Refused(f"site {self.site} has not approved recipe {recipe.name!r} ({recipe.digest}): add that "
                          f"digest to approved in its policy ({self.source.name}), or have the recipe signed by a key it trusts")
        if self.max_epochs is not None and recipe.epochs > self.max_epochs:
            raise Refused(f"site {self.site} runs at most {self.max_epochs} local epochs, not {recipe.epochs}")
        if self.require_privacy and (recipe.privacy is None or
                                     recipe.privacy.noise_multiplier < self.min_noise_multiplier):
            raise Refused(f"site {self.site} requires differential privacy with a noise multiplier of at least "
                          f"{self.min_noise_multiplier}")
        if recipe.dataset not in self.datasets:
            raise Refused(f"site {self.site} holds no dataset {recipe.dataset!r} for federated training "
                          f"(it offers: {', '.join(sorted(self.datasets)) or 'none'})")
        return recipe, self.datasets[recipe.dataset]

    def _signed(self, recipe: Recipe, signature: bytes | None) -> bool:
        if not signature:
            return False
        for key in self.signers:
            try:
                key.verify(signature, recipe.canonical())
                return True
            except InvalidSignature:
                continue
        return False


def sign(recipe: Recipe, key: Ed25519PrivateKey) -> bytes:
    """An approver's signature of ``recipe`` (over its canonical JSON)."""
    return key.sign(recipe.canonical())


def public_key_text(key: Ed25519PrivateKey) -> str:
    """The public key as a policy file's ``signers`` lists it."""
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()
