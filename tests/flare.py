"""A real NVIDIA FLARE federation for the tests: provisioned in POC mode (startup kits with mutual
TLS), the server bound to loopback on a free port, each site's kit hardened the way a hospital
does it (:func:`medlib.train.kits.harden_site`) with its own policy. Sites can be killed and
started again one by one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from medhub.processes import free_port
from medlib.train.kits import harden_site, prepare_centre

NVFLARE = str(Path(sys.executable).with_name("nvflare"))
ADMIN = "admin@nvidia.com"
PROJECT = "example_project"


class Federation:
    """A server and ``sites`` in ``folder``; ``policies`` maps a site to its policy file's text."""

    def __init__(self, folder: Path, sites: list[str], policies: dict[str, str]):
        self.folder, self.sites = folder, list(sites)
        self.port = free_port()
        self.workspace = folder / "ws"
        project = {
            "api_version": 3, "name": PROJECT, "description": "medhub tests",
            "participants": [{"name": "server", "type": "server", "org": "medhub", "fed_learn_port": self.port,
                              "default_host": "localhost"},
                             {"name": ADMIN, "type": "admin", "org": "medhub", "role": "project_admin"},
                             *({"name": s, "type": "client", "org": "medhub"} for s in sites)],
            "builders": [{"path": "nvflare.lighter.impl.workspace.WorkspaceBuilder",
                          "args": {"template_file": ["master_template.yml"]}},
                         {"path": "nvflare.lighter.impl.static_file.StaticFileBuilder", "args": {"config_folder": "config"}},
                         {"path": "nvflare.lighter.impl.cert.CertBuilder"},
                         {"path": "nvflare.lighter.impl.signature.SignatureBuilder"}]}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "project.yml").write_text(yaml.safe_dump(project))
        self._nvflare("poc", "prepare", "-i", str(folder / "project.yml"), "--force")
        server = self.kit("server") / "startup" / "fed_server.json"
        config = json.loads(server.read_text())
        config["servers"][0]["service"]["target"] = f"localhost:{self.port}"  # listen on loopback only
        server.write_text(json.dumps(config))
        prepare_centre(self.kit("server"))
        for site in sites:  # each hospital hardens its kit and installs its policy (medlib federated site)
            policy = folder / f"{site}-policy.toml"
            policy.write_text(policies[site])
            harden_site(self.kit(site), policy)

    def kit(self, participant: str) -> Path:
        return self.workspace / PROJECT / "prod_00" / participant

    def _nvflare(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run([NVFLARE, *args], env={**os.environ, "NVFLARE_POC_WORKSPACE": str(self.workspace)},
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"nvflare {' '.join(args)} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done.stdout

    def start(self, participant: str | None = None) -> None:
        """Start everything (but the admin console), or one participant."""
        args = ["-p", participant] if participant else ["-ex", ADMIN]
        self._nvflare("poc", "start", *args, "--timeout", "60")

    def kill(self, site: str) -> None:
        """SIGKILL every process of ``site`` (its client and its job processes)."""
        kit = str(self.kit(site))
        for pid in _pids():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if kit in cmdline and pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def stop(self) -> None:
        try:
            self._nvflare("poc", "stop", timeout=60)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        for participant in ["server", *self.sites]:
            self.kill(participant)

    def session(self):
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        return new_secure_session(ADMIN, str(self.kit(ADMIN)), timeout=30)

    def wait_for_sites(self, sites: list[str], timeout: float = 60) -> None:
        session = self.session()
        try:
            deadline = time.monotonic() + timeout
            while True:
                connected = {c.name for c in session.get_system_info().client_info}
                if set(sites) <= connected:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"sites {sorted(set(sites) - connected)} did not connect")
                time.sleep(0.5)
        finally:
            session.close()


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]
