"""medhub: the hub side of the platform.

This package owns everything that runs in or beside the JupyterHub process: the settings
file, the OpenID Connect authenticator, the spawners and their profiles, dataset grants at
spawn, the development identity provider and the process supervisor behind ``medhub``.
It must never run inside a user's server; that is :mod:`medlib`'s side.
"""

__version__ = "0.1.0"
