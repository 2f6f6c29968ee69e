"""The command line's side of the batch service: ``medhub submit``, ``medhub jobs``, ``medhub job``.

The hub's address comes from ``--hub`` or ``$MEDHUB_URL`` (set in every medhub server), the
token from ``--token``, ``$MEDHUB_TOKEN`` or ``$JUPYTERHUB_API_TOKEN`` (inside a server):
a user's own token, never the IdP's.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx

from medlib.contract import BATCH_SERVICE, TOKEN_ENV, URL_ENV, JobState


class BatchError(RuntimeError):
    """The batch service refused or could not be reached; the message says why."""


def hub_address(hub: str | None = None, token: str | None = None) -> tuple[str, dict[str, str]]:
    """The hub's public URL and the request headers carrying the user's token, from the
    arguments or the environment."""
    hub = hub or os.environ.get(URL_ENV)
    token = token or os.environ.get(TOKEN_ENV) or os.environ.get("JUPYTERHUB_API_TOKEN")
    if not hub:
        raise BatchError("give the hub's address: --hub https://hub.example.org, or set MEDHUB_URL")
    if not token:
        raise BatchError("give a JupyterHub API token (hub → Token page): --token, or set MEDHUB_TOKEN")
    return hub.rstrip("/"), {"Authorization": f"token {token}"}


class ServiceClient:
    """A hub service's REST API under ``/services/<name>/<path>``, called with the user's token;
    an error is a :class:`BatchError` with the service's own message."""

    name = BATCH_SERVICE
    path = "jobs"

    def __init__(self, hub: str | None = None, token: str | None = None):
        hub, self.headers = hub_address(hub, token)
        self.base = f"{hub}/services/{self.name}/{self.path}"

    def _call(self, method: str, path: str = "", **kwargs) -> httpx.Response:
        try:
            response = httpx.request(method, self.base + path, headers=self.headers, timeout=60, **kwargs)
        except httpx.HTTPError as e:
            raise BatchError(f"cannot reach the {self.name} service at {self.base}: {e}") from None
        if response.status_code >= 300:  # a redirect means the hub answered: no route to the service yet
            try:
                message = response.json().get("message") or response.text
            except ValueError:  # the proxy or the hub answered, not the service
                message = f"{response.reason_phrase}: the {self.name} service is not answering (is the hub restarting?)"
            raise BatchError(f"HTTP {response.status_code}: {message}")
        return response


class BatchClient(ServiceClient):
    """The batch service's jobs."""

    def submit(self, notebook: Path, parameters: dict[str, Any], profile: str | None = None,
               datasets: list[str] | None = None) -> dict:
        try:
            content = json.loads(Path(notebook).read_text())
        except (OSError, ValueError) as e:
            raise BatchError(f"{notebook}: not a readable notebook ({e})") from None
        body = {"notebook": content, "name": Path(notebook).name, "parameters": parameters, "profile": profile,
                "datasets": datasets or []}
        return self._call("POST", json=body).json()

    def jobs(self) -> list[dict]:
        return self._call("GET").json()["jobs"]

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/{job_id}").json()

    def output(self, job_id: str) -> bytes:
        return self._call("GET", f"/{job_id}/output").content

    def log(self, job_id: str) -> str:
        """The job's log: papermill's, and why it failed."""
        return self._call("GET", f"/{job_id}/log").text

    def cancel(self, job_id: str) -> dict:
        return self._call("DELETE", f"/{job_id}").json()

    def wait(self, job_id: str, timeout: float = 3600, every: float = 1.0) -> dict:
        """The job once it is succeeded, failed or cancelled."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED) or time.monotonic() > deadline:
                return job
            time.sleep(every)


def parse_value(text: str) -> Any:
    """A ``-p name value`` value: JSON where it parses (numbers, true, lists...), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text
