"""medhub's Jupyter server extension: what the notebook UI asks the server about medhub.

``GET <base_url>medlib/datasets``: the datasets granted to this server's user (from the hub's
signed grants manifest), with their catalog metadata, schema.org JSON-LD and, for a personal
grant, its end and the time it has left. ``GET <base_url>medlib/hub/<what>``: the user's access
requests, grants, exports and batch jobs, asked of the hub's services (:mod:`.hub`); JupyterLab's
medhub panel (``extensions/medhub-lab``, shipped built in ``labextension/``) shows them.
``<base_url>medlib/batch``: notebooks run here by the ``medhub-batch`` service (:mod:`.batch`).
Authenticated
like every Jupyter server API: only the server's own user (through the hub) reaches it.

At start it offers one kernel, the medlib one (the interpreter's own kernelspec hidden), copies
medlib's teaching notebooks (:mod:`medlib.notebooks`) into the home, never over a file that is
there, and on a user's first start has JupyterLab open on the welcome notebook; on a server the
hub started with downloads off, the raw files URL and JupyterLab's downloads are off
(:mod:`.downloads`). Enabled by
``jupyter_server_config.d/medhub_jupyter.json``, which installing medhub puts in
``<prefix>/etc/jupyter``.
"""

from __future__ import annotations

import json
import os

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web


class DatasetsHandler(APIHandler):
    """The user's grants, for the UI."""

    @web.authenticated
    def get(self) -> None:
        import medlib.datasets as mds

        from medlib.contract import time_left

        try:
            grants = [{**mds.info(d["id"]), "expires": d["expires"],
                       "left": time_left(d["expires"]) if d["expires"] else None} for d in mds.list()]
        except mds.GrantsError as e:
            self.set_status(503)
            self.finish(json.dumps({"datasets": [], "message": str(e)}))
            return
        self.finish(json.dumps({"datasets": grants}))


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "medhub_jupyter"}]


KERNEL = "medlib"  # the kernelspec installed with medhub (kernels/medlib)


def _link_jupyter_server_extension(serverapp) -> None:
    """Before the kernel managers and the web application are made: one kernel, the teaching
    notebooks, and where a first start opens."""
    from pathlib import Path

    from jupyter_client.kernelspec import KernelSpecManager

    from medlib import notebooks
    from medlib.contract import DOWNLOADS_ENV, NOTEBOOKS_FOLDER, WELCOME_NOTEBOOK

    from .downloads import refuse_files

    if os.environ.get(DOWNLOADS_ENV) == "off":
        refuse_files(serverapp)

    if KERNEL in KernelSpecManager(parent=serverapp).find_kernel_specs():  # never hide the only kernel
        serverapp.config.KernelSpecManager.allowed_kernelspecs = {KERNEL}
        serverapp.config.KernelSpecManager.ensure_native_kernel = False
        serverapp.config.MappingKernelManager.default_kernel_name = KERNEL
    home = Path(serverapp.root_dir)
    first_time = not (home / NOTEBOOKS_FOLDER).exists()
    try:
        copied = notebooks.seed(home)
    except OSError as e:  # a full or read-only home: the server still starts
        serverapp.log.warning("medhub_jupyter: could not copy the teaching notebooks into %s: %s", home, e)
        return
    if copied:
        serverapp.log.info("medhub_jupyter: copied %d teaching notebook(s) into %s", len(copied), home / NOTEBOOKS_FOLDER)
    if first_time:
        _open_first_on(serverapp, f"/lab/tree/{NOTEBOOKS_FOLDER}/{WELCOME_NOTEBOOK}")


def _open_first_on(serverapp, url: str) -> None:
    """Make ``url`` the server's default URL. The extension app that started the server
    (jupyterhub-singleuser, with the spawner's ``default_url``) applies its own default URL again
    after every extension is linked: it gets ``url`` too."""
    current = serverapp.default_url
    serverapp.default_url = url
    for point in serverapp.extension_manager.extension_points.values():
        if point.app is not None and getattr(point.app, "default_url", None) == current:
            point.app.default_url = url


def _load_jupyter_server_extension(serverapp) -> None:
    from medlib.contract import DOWNLOADS_ENV

    from .batch import BatchHandler
    from .downloads import hide_downloads
    from .hub import ROUTES, HubServiceHandler

    if os.environ.get(DOWNLOADS_ENV) == "off":
        hide_downloads(serverapp)

    base = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(".*$", [
        (url_path_join(base, "medlib", "datasets"), DatasetsHandler),
        (url_path_join(base, "medlib", "batch"), BatchHandler),
        (url_path_join(base, "medlib", "batch", r"([a-z0-9-]+)"), BatchHandler),
        (url_path_join(base, "medlib", "batch", r"([a-z0-9-]+)", r"(output|log)"), BatchHandler),
        (url_path_join(base, "medlib", "hub", f"({'|'.join(ROUTES)})"), HubServiceHandler),
    ])
    serverapp.log.info("medhub_jupyter: serving %smedlib/datasets and %smedlib/batch", base, base)
