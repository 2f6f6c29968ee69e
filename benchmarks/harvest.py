"""Harvest from a PACS: medhub's edge pipeline against the transfer floor and a hand-made chain.

N CT studies (default 20 × 100 slices of 512 × 512) are loaded into a real Orthanc, then taken
out three ways, one after the other, in the same run:

- **floor**: C-MOVE of every series to a pynetdicom storage SCP that writes each instance to a
  folder, nothing else: what moving the bytes costs.
- **edge**: a harvest request from the dataset's owner through the hub (real IdP, proxy, hub,
  ingest service); the edge node finds the studies (C-FIND), C-MOVEs them to itself, checks
  every series (QC, pixel data decoded), anonymizes with the site key into the mapping store,
  uploads with SHA-256 checks, and the hub publishes the version. The clock runs from the
  request to the version being published.
- **hand-made**: what a site scripts today: dcmtk's ``movescu`` per study into a folder (or
  pynetdicom's C-MOVE where dcmtk is missing), then ``dicognito`` on the folder, then a copy to
  the delivery folder.

    apt-get install orthanc orthanc-dicomweb dcmtk
    python3 -m venv PEERS/dicognito && PEERS/dicognito/bin/pip install dicognito
    python benchmarks/harvest.py --peers PEERS            # 20 studies × 100 slices
    python benchmarks/harvest.py --peers PEERS --quick    # 4 studies × 50 slices of 256²
    python benchmarks/harvest.py --peers PEERS --record   # append the table to README.md
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import tomli_w
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

from medhub import demo
from medhub.config import Deployment, site_token
from medhub.idp.browser import scripted_login
from medhub.ingest.client import HarvestClient
from medhub.processes import Stack, free_port, hub_process, idp_process, proxy_process
from medhub.settings import load
from medhub_edge.runner import Edge
from medhub_edge.settings import load as load_edge
from medlib.anonymize import SiteKey
from medlib.synthetic import write_ct_series
from results import append as record

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from pacs import Orthanc  # noqa: E402 - the tests' Orthanc, started the same way

DATE = "20240314"
BENCH_SERVICE = """
c.JupyterHub.services.append({{"name": "bench", "api_token": "{token}"}})
c.JupyterHub.load_roles.append({{"name": "bench", "scopes": ["admin:users", "tokens"], "services": ["bench"]}})
"""


def corpus(folder: Path, studies: int, slices: int, size: int) -> list[Path]:
    with ThreadPoolExecutor(8) as pool:
        parts = pool.map(lambda i: write_ct_series(folder / f"study-{i:03d}", patient_id=f"BENCH-{i:03d}",
                                                   patient_name=f"Bench^Patient{i}", shape=(slices, size, size),
                                                   seed=i), range(studies))
        return [p for part in parts for p in part]


def load_pacs(orthanc: Orthanc, files: list[Path]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda chunk: orthanc.load(chunk), [files[i::8] for i in range(8)]))


def series_of(orthanc: Orthanc) -> list[tuple[str, str]]:
    found = []
    for uid in httpx.get(f"{orthanc.url}/series", timeout=60).json():
        tags = httpx.get(f"{orthanc.url}/series/{uid}/shared-tags?simplify", timeout=60).json()
        found.append((tags["StudyInstanceUID"], tags["SeriesInstanceUID"]))
    return found


def move(orthanc: Orthanc, destination: str, series: list[tuple[str, str]]) -> None:
    ae = AE(ae_title=destination)  # Orthanc answers only the DICOM nodes it knows
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title=orthanc.aet)
    for study, uid in series:
        ds = Dataset()
        ds.QueryRetrieveLevel, ds.StudyInstanceUID, ds.SeriesInstanceUID = "SERIES", study, uid
        for _ in assoc.send_c_move(ds, destination, StudyRootQueryRetrieveInformationModelMove):
            pass
    assoc.release()


def plain_scp(ae_title: str, port: int, folder: Path):
    """A storage SCP that writes each instance it receives to ``folder``, and nothing else."""
    def store(event) -> int:
        (folder / f"{event.request.AffectedSOPInstanceUID}.dcm").write_bytes(event.encoded_dataset())
        return 0

    ae = AE(ae_title=ae_title)
    ae.supported_contexts = AllStoragePresentationContexts
    return ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])


def floor(orthanc: Orthanc, port: int, folder: Path, series: list[tuple[str, str]]) -> float:
    """C-MOVE into a plain storage SCP that writes each instance as it comes."""
    folder.mkdir()
    server = plain_scp("FLOOR", port, folder)
    try:
        start = time.perf_counter()
        move(orthanc, "FLOOR", series)
        return time.perf_counter() - start
    finally:
        server.shutdown()


def hand_made(orthanc: Orthanc, port: int, folder: Path, peers: Path | None, series: list[tuple[str, str]],
              studies: list[str]) -> tuple[float, str]:
    """movescu per study (or pynetdicom), dicognito in place, a copy to the delivery folder."""
    received = folder / "received"
    received.mkdir(parents=True)
    start = time.perf_counter()
    if shutil.which("movescu"):
        how = "movescu"
        for study in studies:
            subprocess.run(["movescu", "-S", "-aet", "HAND", "-aem", "HAND", "-aec", orthanc.aet, "+P", str(port),
                            "-od", str(received), "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                            "127.0.0.1", str(orthanc.dicom_port)], check=True, capture_output=True)
    else:
        how = "pynetdicom C-MOVE"
        server = plain_scp("HAND", port, received)
        move(orthanc, "HAND", series)
        server.shutdown()
    if peers is not None:
        subprocess.run([str(peers / "dicognito" / "bin" / "python"), "-m", "dicognito", str(received)], check=True,
                       capture_output=True)
        how += " + dicognito"
    shutil.copytree(received, folder / "delivered")
    return time.perf_counter() - start, how + " + copy"


def edge_pipeline(root: Path, orthanc: Orthanc, scp_port: int, expected: int) -> tuple[float, dict]:
    """A harvest through the real hub and the edge node; seconds from request to published version."""
    ports = demo.DemoPorts(public=free_port(), hub=free_port(), proxy_api=free_port(), idp=free_port())
    settings, idp = demo.prepare(root / "hub", ports, reset=True)
    path = settings.source
    data = tomllib.loads(path.read_text())
    delivered = root / "delivered"
    delivered.mkdir()
    catalog = Path(data["hub"]["catalog"])
    entries = tomllib.loads(catalog.read_text())
    entries["dataset"].append({"id": "bench-ct", "title": "Harvested CT", "location": str(delivered),
                               "groups": ["radiology-research"], "owners": ["radiology-research"],
                               "sensitivity": "anonymized", "licence": "CC-BY-4.0", "versioned": True})
    catalog.write_text(tomli_w.dumps(entries))
    token = "bench-" + secrets.token_hex(16)
    (root / "bench_config.py").write_text(BENCH_SERVICE.format(token=token))
    data["hub"]["extra_config"] = str(root / "bench_config.py")
    data["site"] = [{"name": "site-a", "datasets": ["bench-ct"]}]
    data["culler"] = {"enabled": False}
    path.write_text(tomli_w.dumps(data))
    settings = load(path)
    with Stack() as stack:
        stack.start(idp_process(idp, root / "logs"))
        stack.start(proxy_process(settings))
        stack.start(hub_process(settings), timeout=120)
        url = settings.hub.public_url
        ada = next(a for a in idp.accounts if a.username == "ada")
        with httpx.Client(follow_redirects=True, timeout=60) as browser:
            scripted_login(browser, url, ada.username, ada.password)
        owner_token = httpx.post(f"{url}/hub/api/users/ada/tokens", json={"note": "bench"}, timeout=60,
                                 headers={"Authorization": f"token {token}"}).json()["token"]
        owner = HarvestClient(url, owner_token)
        site = root / "edge"
        site.mkdir()
        (site / "token").write_text(site_token(Deployment.process(settings), "site-a"))
        SiteKey.generate(site / "site.key")
        (site / "edge.toml").write_text(tomli_w.dumps({
            "site": "site-a", "hub_url": url, "token_file": "token", "key_file": "site.key", "state_dir": "state",
            "quiet_seconds": 0.5, "poll_seconds": 1,
            "pacs": {"aet": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
            "scp": {"aet": "EDGE", "bind": "127.0.0.1", "port": scp_port}, "web": {"enabled": False}}))
        edge = Edge(load_edge(site / "edge.toml"))
        edge.scp.start()  # as `medlib edge run` does before any request: the SCP, the anonymizing processes
        edge.processor.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                owner.list()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        start = time.perf_counter()
        harvest = owner.create("bench-ct", "site-a", "anonymized", {"StudyDate": DATE})
        edge.poll_once()
        seconds = time.perf_counter() - start
        edge.scp.stop()
        edge.processor.close()
        harvest = owner.get(harvest["id"])
    if harvest["state"] != "delivered" or harvest["counts"]["delivered"] != expected:
        raise SystemExit(f"the edge did not deliver everything: {json.dumps(harvest)}")
    return seconds, harvest


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--studies", type=int, default=20)
    p.add_argument("--slices", type=int, default=100)
    p.add_argument("--size", type=int, default=512, help="rows and columns of each slice")
    p.add_argument("--quick", action="store_true", help="4 studies × 50 slices of 256 × 256")
    p.add_argument("--peers", type=Path, help="folder holding the peers' virtual environments (dicognito)")
    p.add_argument("--record", action="store_true", help="append the result to benchmarks/README.md")
    args = p.parse_args()
    if args.quick:
        args.studies, args.slices, args.size = 4, 50, 256
    n = args.studies * args.slices
    with tempfile.TemporaryDirectory(prefix="medhub-harvest-") as tmp:
        root = Path(tmp)
        files = corpus(root / "corpus", args.studies, args.slices, args.size)
        mb = sum(f.stat().st_size for f in files) / 1e6
        ports = {name: free_port() for name in ("FLOOR", "HAND", "EDGE")}
        orthanc = Orthanc(root / "pacs", modalities={name.lower(): (name, port) for name, port in ports.items()})
        try:
            load_pacs(orthanc, files)
            series = series_of(orthanc)
            studies = sorted({study for study, _ in series})
            print(f"{n} instances ({mb:.0f} MB) in {len(studies)} studies loaded into Orthanc", flush=True)
            t_floor = floor(orthanc, ports["FLOOR"], root / "floor", series)
            print(f"floor: {t_floor:.1f} s", flush=True)
            t_edge, harvest = edge_pipeline(root / "medhub", orthanc, ports["EDGE"], n)
            print(f"edge: {t_edge:.1f} s", flush=True)
            t_hand, how = hand_made(orthanc, ports["HAND"], root / "hand", args.peers, series, studies)
            print(f"hand-made: {t_hand:.1f} s", flush=True)
        finally:
            orthanc.stop()
    rows = [("C-MOVE into a folder (floor)", t_floor), ("medhub edge: C-MOVE, QC, anonymize, deliver", t_edge),
            (f"hand-made: {how}", t_hand)]
    table = "\n".join(["| pipeline | seconds | instances/s | × floor |", "|---|---:|---:|---:|"] +
                      [f"| {name} | {t:.1f} | {n / t:.0f} | {t / t_floor:.2f} |" for name, t in rows])
    text = (f"{args.studies} studies × {args.slices} slices of {args.size}² ({n} instances, {mb:.0f} MB), Orthanc "
            f"on loopback; edge counts: {json.dumps(harvest['counts'])}\n\n{table}")
    print(text)
    if args.record:
        command = "python benchmarks/harvest.py --peers PEERS" + (" --quick" if args.quick else "")
        record("Harvest from a PACS: the edge against the transfer floor and a hand-made chain", command, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
