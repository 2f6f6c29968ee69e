"""JupyterHub configuration for medhub: everything comes from the settings file.

Run through ``medhub run`` (which sets MEDHUB_SETTINGS), or directly:
``MEDHUB_SETTINGS=medhub.toml jupyterhub -f hub/jupyterhub_config.py``.
``hub.extra_config`` names an optional JupyterHub config file loaded last, for what the
settings file does not cover.
"""

from medhub import settings as _settings
from medhub.config import configure

_loaded = _settings.load()
if _loaded.users_network:  # users' servers on a network of their own: made before the hub binds its gateway
    from medhub import docker_network

    docker_network.ensure(_loaded.docker.network, _loaded.docker.subnet)
configure(c, _loaded)  # noqa: F821 - `c` is provided by JupyterHub
if _loaded.hub.extra_config is not None:
    load_subconfig(str(_loaded.hub.extra_config))  # noqa: F821 - provided by JupyterHub
