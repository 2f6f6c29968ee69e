"""Batch runs inside the user's own server: the ``medhub-batch`` hub service hands a notebook to
the server it started for the job, and the notebook runs here, as the user, with the user's
grants, through papermill.

``POST <base_url>medlib/batch`` with ``{"id", "notebook", "parameters"}`` starts a run;
``GET <base_url>medlib/batch/<id>`` tells its state; ``GET .../<id>/output`` gives the executed
notebook; ``DELETE .../<id>`` stops the run. Each run lives in ``~/.medlib-batch/<id>/``: the input, the output, the log and a
``status.json`` that the run writes itself (atomically), so the state outlives a restart of
the server process, the service or the hub.

    python -m medhub_jupyter.batch FOLDER      # what the handler starts, detached
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from jupyter_server.base.handlers import APIHandler
from tornado import web

from medlib.contract import JobState

RUNS = Path.home() / ".medlib-batch"
JOB_ID = re.compile(r"^[a-z0-9-]{1,64}$")


def write_status(folder: Path, **status) -> None:
    """``status.json`` in ``folder``, replaced atomically."""
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as f:
        json.dump(status, f)
    os.replace(f.name, folder / "status.json")


def read_status(folder: Path) -> dict:
    try:
        return json.loads((folder / "status.json").read_text())
    except (OSError, ValueError):
        return {"status": "unknown"}


def run(folder: Path) -> int:
    """Execute ``input.ipynb`` with ``parameters.json`` into ``output.ipynb``; record the outcome."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    parameters = json.loads((folder / "parameters.json").read_text())
    write_status(folder, status=JobState.RUNNING, pid=os.getpid())  # the run leads its own process group
    try:
        # widgets are not live in a kept notebook: their state (a viewer's whole script and data) is left out
        papermill.execute_notebook(str(folder / "input.ipynb"), str(folder / "output.ipynb"), parameters=parameters,
                                   cwd=str(Path.home()), log_output=True, progress_bar=False, store_widget_state=False)
    except PapermillExecutionError as e:
        write_status(folder, status=JobState.FAILED, error=f"cell {e.exec_count}: {e.ename}: {e.evalue}")
        return 1
    except Exception as e:  # a notebook that cannot start (bad JSON, no kernel, ...)
        write_status(folder, status=JobState.FAILED, error=f"{type(e).__name__}: {e}")
        return 1
    write_status(folder, status=JobState.SUCCEEDED)
    return 0


class BatchHandler(APIHandler):
    """Start a run (POST) or tell its state (GET)."""

    def _folder(self, job: str) -> Path:
        if not JOB_ID.match(job):
            raise web.HTTPError(400, f"bad job id {job!r}")
        return RUNS / job

    @web.authenticated
    def post(self, job: str = "") -> None:
        body = self.get_json_body() or {}
        folder = self._folder(str(body.get("id", "")))
        if (folder / "status.json").exists():
            self.finish(read_status(folder))  # already started: starting twice is a no-op
            return
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "input.ipynb").write_text(json.dumps(body.get("notebook")))
        (folder / "parameters.json").write_text(json.dumps(body.get("parameters") or {}))
        write_status(folder, status=JobState.STARTING)
        with open(folder / "log.txt", "ab") as log:
            subprocess.Popen([sys.executable, "-m", "medhub_jupyter.batch", str(folder)], stdout=log,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.set_status(202)
        self.finish(read_status(folder))

    @web.authenticated
    def get(self, job: str = "", what: str = "") -> None:
        folder = self._folder(job)
        if not folder.is_dir():
            raise web.HTTPError(404, f"no batch run {job}")
        if what == "output":
            if not (folder / "output.ipynb").is_file():
                raise web.HTTPError(404, f"run {job} has no output yet")
            self.finish((folder / "output.ipynb").read_text())
        elif what == "log":
            self.set_header("Content-Type", "text/plain")
            self.finish((folder / "log.txt").read_bytes()[-200_000:])
        else:
            self.finish(read_status(folder))

    @web.authenticated
    def delete(self, job: str = "", what: str = "") -> None:
        folder = self._folder(job)
        status = read_status(folder)
        if status.get("status") in (JobState.STARTING, JobState.RUNNING) and status.get("pid"):
            try:
                os.killpg(status["pid"], signal.SIGTERM)  # the run and what it started in its group
            except ProcessLookupError:
                pass
            write_status(folder, status=JobState.CANCELLED)
        self.finish(read_status(folder))


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
