"""A real PACS for the tests: Debian's Orthanc with its DICOMweb plugin, on loopback ports,
with a configuration the test writes (../shared/ORTHANC.md), loaded through its REST API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import httpx

from medhub.processes import free_port

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
#: Debian installs the server in /usr/sbin, which an ordinary user's PATH may lack.
ORTHANC = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")


class Orthanc:
    """One Orthanc process; ``modalities`` are the DICOM nodes it may send to: name → (AE, port)."""

    def __init__(self, folder: Path, aet: str = "TESTPACS", modalities: dict[str, tuple[str, int]] | None = None):
        if ORTHANC is None or not DICOMWEB_PLUGIN.is_file():
            raise RuntimeError("Orthanc is not installed: `make test` installs Debian's orthanc and orthanc-dicomweb")
        self.folder, self.aet = folder, aet
        self.http_port, self.dicom_port = free_port(), free_port()
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": aet, "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomAet": aet, "DicomPort": self.dicom_port, "DicomCheckCalledAet": True,
            "DicomModalities": {name: [ae, "127.0.0.1", port] for name, (ae, port) in (modalities or {}).items()},
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 1,
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "wb")
        self.proc = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/system", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-2000:]}")
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def load(self, files: Iterable[Path]) -> int:
        """Store DICOM files through the REST API; how many."""
        count = 0
        with httpx.Client(timeout=60) as client:
            for path in files:
                response = client.post(f"{self.url}/instances", content=Path(path).read_bytes())
                response.raise_for_status()
                count += 1
        return count

    def instances(self) -> int:
        return len(httpx.get(f"{self.url}/instances", timeout=30).json())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
