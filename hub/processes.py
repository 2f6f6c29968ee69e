"""Starting, watching and stopping the processes behind ``medhub run`` and ``medhub demo``.

Each process (development IdP, configurable-http-proxy, JupyterHub) is a
:class:`ManagedProcess`: started in its own session with its output in a log file under
``<state>/logs`` (and, for ``medhub run``, on its own output too: ``docker logs medhub``),
ready when its URL answers, stopped with SIGTERM (then SIGKILL). The test fixtures use the
same functions, so the tests start the platform exactly as users do.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse
from dataclasses import dataclass, field
from pathlib import Path

from . import docker_network
from .errors import ProcessStartError
from .idp import DevIdentityProvider, node_tool
from .settings import Settings
from .state import StateDir

JUPYTERHUB_CONFIG = Path(__file__).with_name("jupyterhub_config.py")


@dataclass
class ManagedProcess:
    """One supervised child process."""

    name: str
    argv: list[str]
    log_file: Path
    ready_url: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    stop_timeout: float = 15.0
    echo: bool = False  # copy its output to ours too, line by line
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> ManagedProcess:
        """Start the process and wait until ``ready_url`` answers.

        Raises:
            ProcessStartError: it exited or did not answer in time; the message holds the end
                of its log.
        """
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE if self.echo else log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
            cwd=self.cwd,
            start_new_session=True,
        )
        if self.echo:
            threading.Thread(target=self._copy_output, args=(log,), name=f"{self.name} output", daemon=True).start()
        else:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ProcessStartError(f"{self.name} exited with code {self.proc.returncode}:\n{self.log_tail()}")
            if url_answers(self.ready_url):
                return self
            time.sleep(0.2)
        self.stop()
        raise ProcessStartError(f"{self.name} did not answer at {self.ready_url} within {timeout:.0f} s:\n{self.log_tail()}")

    def _copy_output(self, log) -> None:
        """Each line of the process's output to its log file and to ours, until it closes."""
        with log:
            for line in iter(self.proc.stdout.readline, b""):
                log.write(line)
                log.flush()
                sys.stdout.buffer.write(line)
                sys.stdout.flush()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, wait up to ``stop_timeout`` seconds, then SIGKILL."""
        if not self.running():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for tests, benchmarks and ad-hoc stacks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def url_answers(url: str, timeout: float = 2.0) -> bool:
    """True if an HTTP GET of ``url`` gets any HTTP response below 500."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError as e:
        return e.code < 500
    except (OSError, ValueError):
        return False


def idp_process(idp: DevIdentityProvider, logs: Path) -> ManagedProcess:
    idp.write_config()
    return ManagedProcess("identity provider", idp.command(), logs / "idp.log", idp.ready_url)


def proxy_process(settings: Settings, echo: bool = False) -> ManagedProcess:
    """configurable-http-proxy on ``hub.public_url``, its API on loopback. With users' servers
    on medhub's Docker network, the network is made first: the proxy and the hub may listen on
    its gateway. ``echo``: its log on our output too."""
    if settings.users_network:
        docker_network.ensure(settings.docker.network, settings.docker.subnet)
    state = StateDir(settings.hub.state_dir)
    host, port = _host_port(settings.hub.public_url)
    hub_url = settings.hub_url
    argv = [
        node_tool("configurable-http-proxy"),
        "--ip", host,
        "--port", str(port),
        "--api-ip", "127.0.0.1",
        "--api-port", str(settings.hub.proxy_api_port),
        "--default-target", hub_url,
        "--error-target", hub_url + "/hub/error",
        "--log-level", "warn",
    ]
    if settings.hub.tls_cert is not None:  # TLS at the proxy; otherwise in front of it (see README)
        argv += ["--ssl-cert", str(settings.hub.tls_cert), "--ssl-key", str(settings.hub.tls_key)]
    return ManagedProcess(
        "configurable-http-proxy",
        argv,
        state.logs_dir / "proxy.log",
        f"http://127.0.0.1:{settings.hub.proxy_api_port}/api/routes",
        env={"CONFIGPROXY_AUTH_TOKEN": state.proxy_token()},
        echo=echo,
    )


def hub_process(settings: Settings, echo: bool = False) -> ManagedProcess:
    """JupyterHub with medhub's configuration, its state folder as working directory.
    ``echo``: its log on our output too."""
    state = StateDir(settings.hub.state_dir)
    state.ensure()
    return ManagedProcess(
        "jupyterhub",
        [sys.executable, "-m", "jupyterhub", "-f", str(JUPYTERHUB_CONFIG)],
        state.logs_dir / "jupyterhub.log",
        settings.hub_url + "/hub/health",
        env={
            "MEDHUB_SETTINGS": str(settings.source),
            "JUPYTERHUB_CRYPT_KEY": os.environ.get("JUPYTERHUB_CRYPT_KEY") or state.crypt_key(),
            "CONFIGPROXY_AUTH_TOKEN": state.proxy_token(),
        },
        cwd=state.path,
        # with hub.cleanup_servers the hub stops every server before it exits
        stop_timeout=max(15.0, float(settings.hub.start_timeout)),
        echo=echo,
    )


def _host_port(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or (443 if parsed.scheme == "https" else 80)


class Stack:
    """Processes started in order and stopped in reverse; a context manager."""

    def __init__(self) -> None:
        self.processes: list[ManagedProcess] = []

    def start(self, process: ManagedProcess, timeout: float = 60.0) -> ManagedProcess:
        process.start(timeout)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def wait(self) -> str:
        """Block until one process exits (returns its name) or SIGINT/SIGTERM arrives."""
        received: list[int] = []
        previous = {s: signal.signal(s, lambda signum, _frame: received.append(signum))
                    for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not received:
                for process in self.processes:
                    if not process.running():
                        return process.name
                time.sleep(0.5)
            return signal.Signals(received[0]).name
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def __enter__(self) -> Stack:
        # Ctrl-C (SIGINT) stops the stack at any moment, even before wait() takes the signal over:
        # a process started in the background (`medhub demo &`, nohup, a CI job) inherits SIGINT
        # ignored, and a SIGINT that came before wait() would otherwise be lost.
        self._previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            signal.signal(signal.SIGINT, self._previous_sigint)
