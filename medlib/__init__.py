"""medlib: the library inside each user's notebook server.

It owns what a researcher calls from a notebook: who am I and what may I use
(:mod:`medlib.identity`), and synthetic test data (:mod:`medlib.synthetic`). It talks to
the hub only with the server's own short-lived hub token and never holds the identity
provider's tokens or secrets.
"""

from .errors import MedlibError
from .identity import Identity, whoami

__all__ = ["Identity", "MedlibError", "whoami"]
__version__ = "0.1.0"
