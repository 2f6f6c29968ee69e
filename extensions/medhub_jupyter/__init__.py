"""medhub's Jupyter server extension: what the notebook UI asks the server about medhub.

``GET <base_url>medlib/datasets``: the datasets granted to this server's user (from the hub's
signed grants manifest), with their catalog metadata and schema.org JSON-LD.
``<base_url>medlib/batch``: notebooks run here by the ``medhub-batch`` service (:mod:`.batch`).
Authenticated
like every Jupyter server API: only the server's own user (through the hub) reaches it.

At start it copies medlib's teaching notebooks (:mod:`medlib.notebooks`) into the home, never
over a file that is there, and on a user's first start JupyterLab opens on the welcome notebook.
Enabled by ``jupyter_server_config.d/medhub_jupyter.json``, which installing medhub puts in
``<prefix>/etc/jupyter`` with the kernel settings (the medlib kernel only).
"""

from __future__ import annotations

import json

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web


class DatasetsHandler(APIHandler):
    """The user's grants, for the UI."""

    @web.authenticated
    def get(self) -> None:
        import medlib.datasets as mds

        try:
            grants = [{**mds.info(d["id"])} for d in mds.list()]
        except mds.GrantsError as e:
            self.set_status(503)
            self.finish(json.dumps({"datasets": [], "message": str(e)}))
            return
        self.finish(json.dumps({"datasets": grants}))


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "medhub_jupyter"}]


def _link_jupyter_server_extension(serverapp) -> None:
    """Before the web application is made: the teaching notebooks, and where a first start opens."""
    from pathlib import Path

    from medlib import notebooks
    from medlib.contract import NOTEBOOKS_FOLDER, WELCOME_NOTEBOOK

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
        serverapp.default_url = f"/lab/tree/{NOTEBOOKS_FOLDER}/{WELCOME_NOTEBOOK}"


def _load_jupyter_server_extension(serverapp) -> None:
    from .batch import BatchHandler

    base = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(".*$", [
        (url_path_join(base, "medlib", "datasets"), DatasetsHandler),
        (url_path_join(base, "medlib", "batch"), BatchHandler),
        (url_path_join(base, "medlib", "batch", r"([a-z0-9-]+)"), BatchHandler),
        (url_path_join(base, "medlib", "batch", r"([a-z0-9-]+)", r"(output|log)"), BatchHandler),
    ])
    serverapp.log.info("medhub_jupyter: serving %smedlib/datasets and %smedlib/batch", base, base)
