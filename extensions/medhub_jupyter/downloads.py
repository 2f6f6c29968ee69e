"""Direct downloads off on a server that mounts data whose sensitivity keeps them off.

The hub's spawner sets ``MEDHUB_DOWNLOADS=off`` on a server that mounts a dataset of a
sensitivity not in ``[access] direct_download``. Such a server answers the raw files URL
(``/files/...``: what JupyterLab's "Download" fetches) with 403 and a sentence saying how
outputs leave (an export request, reviewed by the data's owners), and JupyterLab's download
commands are disabled. The server is the user's to change, so this keeps honest people from
carrying data out by a click; it is no barrier to their code, and the platform does not rely on
it as one (the users' network reaches only the hub).
"""

from __future__ import annotations

from typing import Any

from jupyter_server.base.handlers import JupyterHandler
from tornado import web

#: JupyterLab's plugins that download a file through the browser.
DOWNLOAD_PLUGINS = ("@jupyterlab/docmanager-extension:download", "@jupyterlab/filebrowser-extension:download")
MESSAGE = ("Downloads are off on this server: it mounts data whose owners review what leaves. Ask for an export "
           "(medhub export request FILE --justification ...); once its owners approve, download it from the "
           "hub's Data access page.")


class NoDownloadHandler(JupyterHandler):
    """``/files/...`` on a server whose downloads are off."""

    def initialize(self, **files_handler_params: Any) -> None:
        """Takes the files handler's parameters (its root folder) and serves nothing from them."""

    @web.authenticated
    def get(self, path: str = "", include_body: bool = True) -> None:
        raise web.HTTPError(403, MESSAGE)

    head = get


def disable_download_plugins(handler: Any, page_config: dict[str, Any]) -> dict[str, Any]:
    """JupyterLab's page config with its download plugins disabled."""
    disabled = page_config.get("disabledExtensions") or []
    page_config["disabledExtensions"] = [*disabled, *(p for p in DOWNLOAD_PLUGINS if p not in disabled)]
    return page_config


def refuse_files(serverapp) -> None:
    """When the extension is linked, before the web application is made: the files URL refuses."""
    serverapp.config.ContentsManager.files_handler_class = NoDownloadHandler
    serverapp.log.info("medhub_jupyter: downloads are off (this server mounts data whose owners review exports)")


def hide_downloads(serverapp) -> None:
    """When the extension is loaded: JupyterLab's page config loses its download plugins. Under
    jupyterhub-singleuser the page config hook is its identity provider's, installed after the
    extensions load: that one is wrapped too."""
    provider = serverapp.identity_provider
    before = getattr(provider, "page_config_hook", None) or serverapp.web_app.settings.get("page_config_hook")

    def hook(handler: Any, page_config: dict[str, Any]) -> dict[str, Any]:
        return disable_download_plugins(handler, before(handler, page_config) if before else page_config)

    if hasattr(provider, "page_config_hook"):
        provider.page_config_hook = hook
    serverapp.web_app.settings["page_config_hook"] = hook
