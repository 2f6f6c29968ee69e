"""The hospital edge node, end to end with real parts: Orthanc as the PACS (C-FIND, C-MOVE,
C-GET, DICOMweb), pynetdicom associations, the real hub with its ingest service and IdP, and
deliveries opened with medlib.datasets."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
import tomli_w
from pacs import Orthanc
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from segmentations import sphere, write_rtstruct, write_seg

import medlib.datasets as mds
from medhub.catalog import granted
from medhub.config import Deployment, site_token
from medhub.grants import GrantSigner, local_view
from medhub.ingest.client import HarvestClient
from medhub.processes import free_port
from medhub_edge.runner import Edge
from medhub_edge.settings import load as load_edge
from medlib.anonymize import SiteKey
from medlib.anonymize.mapping import MappingStore
from medlib.radiomics import extract
from medlib.synthetic import write_ct_series

from conftest import once_answering, start_platform, stop_platform

OWNERS = "radiology-research"  # alice and erin; bob (a student) owns nothing
SQUARE = np.array([[6, 6], [6, 15], [15, 15], [15, 6]], dtype=float)  # an RTSTRUCT contour, rows and columns


def versioned(root: Path, dataset_id: str, sensitivity: str = "anonymized") -> dict:
    folder = root / "delivered" / dataset_id
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"id": dataset_id, "title": dataset_id, "location": str(folder), "groups": [OWNERS], "owners": [OWNERS],
             "sensitivity": sensitivity, "licence": "CC-BY-4.0", "modality": "CT", "versioned": True}
    return entry | ({"identifiable_groups": [OWNERS]} if sensitivity == "identifiable" else {})


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The platform, with three versioned datasets, site-a (may deliver to two) and site-b (one)."""
    root = tmp_path_factory.mktemp("harvest-hub")
    datasets = (versioned(root, "harvest-ct"), versioned(root, "harvest-features"),
                versioned(root, "harvest-raw", "identifiable"))
    sites = [{"name": "site-a", "datasets": ["harvest-ct", "harvest-features"]},
             {"name": "site-b", "datasets": ["harvest-raw"]}]
    platform = start_platform(root, sections={"site": sites}, datasets=datasets)
    try:
        for user in ("alice", "bob"):
            assert platform.login(platform.browser(), user).status_code == 200
        yield platform
    finally:
        stop_platform(platform)


def token(hub, user: str) -> str:
    return hub.api("POST", f"/users/{user}/tokens", json={"note": "harvest test"}).json()["token"]


@pytest.fixture(scope="module")
def owner(hub) -> HarvestClient:
    client = HarvestClient(hub.url, token(hub, "alice"))
    once_answering(client.list)
    return client


def patient_study(folder: Path, patient: str, slices: int = 10, **kwargs) -> list[Path]:
    return write_ct_series(folder / patient, patient_id=patient, patient_name=f"{patient}^Test", shape=(slices, 24, 24),
                           **kwargs)


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, list[Path]]:
    """The hospital's studies: P-A (a slice with burned-in text), P-B (with a SEG), P-C (a slice
    missing), P-D (for DICOMweb), P-K (many slices, for the killed edge)."""
    root = tmp_path_factory.mktemp("hospital")
    found = {"P-A": patient_study(root, "P-A", 12), "P-B": patient_study(root, "P-B", 10, seed=1),
             "P-C": patient_study(root, "P-C", 10), "P-D": patient_study(root, "P-D", 6),
             "P-K": patient_study(root, "P-K", 40, seed=2)}
    burned = pydicom.dcmread(found["P-A"][3])
    burned.BurnedInAnnotation = "YES"
    burned.save_as(found["P-A"][3])
    found["P-C"].pop(4).unlink()  # a slice lost on the way to the PACS
    found["P-B-SEG"] = [write_seg(found["P-B"], sphere((10, 24, 24), 3.5), root / "P-B-seg.dcm")]
    found["P-B-RS"] = [write_rtstruct(found["P-B"], {k: SQUARE for k in range(3, 7)}, root / "P-B-rs.dcm")]
    return found


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, studies):
    scp_port = free_port()
    orthanc = Orthanc(tmp_path_factory.mktemp("pacs"), modalities={"edge": ("EDGE", scp_port)})
    orthanc.scp_port = scp_port
    orthanc.load(f for files in studies.values() for f in files)
    yield orthanc
    orthanc.stop()


def edge_settings(hub, orthanc, folder: Path, site: str = "site-a", **changes) -> Path:
    """An edge's settings file (its token from `medhub site-token`), in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    printed = subprocess.run([sys.executable, "-m", "medhub.cli", "site-token", site, "-s", str(hub.settings.source)],
                             capture_output=True, text=True, check=True).stdout.strip()
    (folder / "token").write_text(printed + "\n")
    if not (folder / "site.key").exists():
        SiteKey.generate(folder / "site.key")
    settings = {
        "site": site, "hub_url": hub.url, "token_file": "token", "key_file": "site.key", "state_dir": "state",
        "poll_seconds": 1, "quiet_seconds": 0.5,
        "pacs": {"aet": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port,
                 "dicomweb_url": orthanc.dicomweb_url, "retries": 2, "timeout": 10},
        "scp": {"aet": "EDGE", "bind": "127.0.0.1", "port": orthanc.scp_port, "allowed_callers": ["CT01"]},
        "rules": {"policies": ["anonymized", "features", "identifiable"]},
        "pixels": {"ocr": False},  # the slice marked as having burned-in text stays at the site
        "web": {"enabled": False},
    }
    for key, value in changes.items():
        settings[key] = {**settings[key], **value} if isinstance(value, dict) else value
    path = folder / "edge.toml"
    path.write_text(tomli_w.dumps(settings))
    return path


@pytest.fixture
def edge(hub, pacs, tmp_path):
    """site-a's edge, in this process: its SCP listens; each test drives its polls."""
    node = Edge(load_edge(edge_settings(hub, pacs, tmp_path / "edge")))
    node.scp.start()
    yield node
    node.scp.stop()
    node.hub.close()


def open_as(hub, user: str, groups: list[str], tmp_path: Path, monkeypatch) -> None:
    """Become ``user``'s server as the local spawner makes it: the hub's signed grants, its view."""
    signer = GrantSigner(Deployment.process(hub.settings).grants_key)
    mine = granted(hub.settings.datasets, groups)
    view = local_view(tmp_path / "view", mine)
    monkeypatch.setenv("MEDHUB_GRANTS", signer.manifest(user, groups, hub.settings.datasets, mine, str(view)))
    monkeypatch.setenv("MEDHUB_GRANTS_KEY", signer.public_key)
    monkeypatch.setenv("MEDHUB_AUDIT_BUFFER", str(tmp_path / "audit-buffer.jsonl"))
    monkeypatch.delenv("MEDHUB_AUDIT_URL", raising=False)
    monkeypatch.setenv("MEDLIB_CACHE_DIR", str(tmp_path / "cache"))


def audit_events(hub, harvest_id: str) -> list[tuple[str, str]]:
    response = httpx.get(f"{hub.url}/services/medhub-audit/events", params={"action": None},
                         headers={"Authorization": f"token {hub.observer_token}"}, timeout=30)
    return [(e["action"], e["outcome"]) for e in response.json()["events"] if e["object"].get("harvest") == harvest_id]


def adds_up(counts: dict[str, int]) -> bool:
    """Every instance found ended delivered, quarantined or failed."""
    return counts["found"] == counts["delivered"] + counts["quarantined"] + counts["failed"]


def test_an_anonymized_harvest_from_the_pacs_becomes_a_version_its_owner_opens(hub, owner, edge, studies, tmp_path,
                                                                             monkeypatch):
    made = subprocess.run([sys.executable, "-m", "medhub.cli", "harvest", "create", "--dataset", "harvest-ct",
                           "--site", "site-a", "--policy", "anonymized", "-q", "PatientID", "P-A",
                           "--hub", hub.url, "--token", owner.headers["Authorization"].split()[1]],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    harvest_id = made.stdout.split()[1]
    assert edge.poll_once() == 1
    harvest = owner.get(harvest_id)
    assert harvest["state"] == "delivered" and harvest["version"] == "v000001", harvest
    assert harvest["counts"] == {"found": 12, "received": 12, "processed": 11, "quarantined": 1, "failed": 0,
                                 "delivered": 11}  # the slice with burned-in text stays at the site
    assert adds_up(harvest["counts"])

    open_as(hub, "alice", [OWNERS], tmp_path, monkeypatch)
    tree = mds.open("harvest-ct")
    (series,) = tree.children.values()
    assert series["image"].shape == (11, 24, 24) and tree.attrs["version"] == "v000001"
    assert series.attrs["PatientID"] != "P-A"  # anonymized at the site ...
    pseudonym = series.attrs["PatientID"]
    store = MappingStore(edge.settings.state_dir / "mapping.sqlite", edge.key)
    assert ("patient-id", "P-A") in store.lookup(pseudonym)  # ... and re-identifiable only there
    (version,) = mds.versions("harvest-ct")
    assert version["policy"] == "anonymized" and version["site"] == "site-a" and version["harvest"] == harvest_id
    assert version["edge"]["software"]["pydicom"] == pydicom.__version__ and version["requested_by"] == "alice"
    assert mds.verify("harvest-ct").ok
    root = mds.local_root("harvest-ct")
    delivered = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert {"MANIFEST.sha256", "provenance.json", "qc.json"} <= set(delivered) and len(delivered) == 14
    assert not any("mapping" in name or "P-A" in name for name in delivered)
    assert json.loads((root / "qc.json").read_text())["summary"] == {"series": 1, "passed": 1, "failed": 0,
                                                                      "held_back": 0}
    assert audit_events(hub, harvest_id) == [("harvest-request", "success"), ("harvest-run", "success"),
                                             ("quarantine", "success"), ("delivery", "success"),
                                             ("dataset-version", "success")]

    # a second harvest, over DICOMweb, is the next version; the first stays as it was
    second = owner.create("harvest-ct", "site-a", "anonymized", {"PatientID": "P-D"}, source="dicomweb")
    assert edge.poll_once() == 1
    assert owner.get(second["id"])["version"] == "v000002"
    assert len(mds.open("harvest-ct").children) == 2
    assert len(mds.open("harvest-ct", version="v000001").children) == 1
    with pytest.raises(mds.VersionNotFound, match="v000001, v000002"):
        mds.open("harvest-ct", version="v000009")


def test_a_features_harvest_delivers_only_the_table_computed_at_the_site(hub, owner, edge, studies, tmp_path,
                                                                         monkeypatch):
    harvest = owner.create("harvest-features", "site-a", "features", {"PatientID": "P-B"}, source="dicomweb")
    assert edge.poll_once() == 1
    harvest = owner.get(harvest["id"])
    assert harvest["state"] == "delivered", harvest
    assert harvest["counts"]["found"] == 12 and harvest["counts"]["delivered"] == 12 and adds_up(harvest["counts"])

    open_as(hub, "alice", [OWNERS], tmp_path, monkeypatch)
    root = mds.local_root("harvest-features")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == ["MANIFEST.sha256", f"features/{harvest['id']}.csv", "provenance.json", "qc.json"]  # no image
    table = mds.table("harvest-features").set_index("segment")
    assert sorted(table.index) == ["GTV", "lesion"] and set(table["source"]) == {"SEG", "RTSTRUCT"}
    assert "P-B" not in table.to_csv()

    # the same features, computed at the site from the PACS's own files: the SEG's sphere, and the
    # RTSTRUCT's squares on slices 3-6
    slices = sorted((pydicom.dcmread(p) for p in studies["P-B"]), key=lambda ds: float(ds.ImagePositionPatient[2]))
    volume = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])
    square = np.zeros((10, 24, 24), dtype=bool)
    square[3:7, 6:16, 6:16] = True
    for label, mask in (("lesion", sphere((10, 24, 24), 3.5)), ("GTV", square)):
        expected = extract(volume, mask, spacing=(2.5, 0.8, 0.8))
        for column in expected.columns:
            assert table.loc[label, column] == pytest.approx(expected[column].iloc[0], rel=1e-6, nan_ok=True), \
                (label, column)


def test_qc_holds_back_a_series_with_a_missing_slice_or_delivers_it_flagged(hub, owner, edge):
    held = owner.create("harvest-ct", "site-a", "anonymized", {"PatientID": "P-C"}, source="pacs")
    assert edge.poll_once() == 1
    held = owner.get(held["id"])
    assert held["state"] == "failed" and held["counts"]["quarantined"] == 9 and adds_up(held["counts"])
    assert "nothing to deliver" in held["message"]

    flagged = owner.create("harvest-ct", "site-a", "anonymized", {"PatientID": "P-C"}, source="pacs",
                           on_qc_failure="flag")
    assert edge.poll_once() == 1
    flagged = owner.get(flagged["id"])
    assert flagged["state"] == "delivered" and flagged["counts"]["delivered"] == 9
    folder = next(d.path for d in hub.settings.datasets if d.id == "harvest-ct") / flagged["version"]
    qc = json.loads((folder / "qc.json").read_text())
    assert qc["on_failure"] == "flag" and qc["summary"]["failed"] == 1
    assert any("1 missing slice" in problem for problem in qc["series"][0]["problems"])


def test_the_site_refuses_what_its_rules_forbid(hub, pacs, owner, tmp_path):
    path = edge_settings(hub, pacs, tmp_path / "strict", rules={"policies": ["features"], "modalities": ["MR"]})
    strict = Edge(load_edge(path))
    harvest = owner.create("harvest-ct", "site-a", "anonymized", {"PatientID": "P-A"})
    assert strict.poll_once() == 1
    harvest = owner.get(harvest["id"])
    assert harvest["state"] == "refused" and "does not deliver anonymized data" in harvest["message"]
    assert audit_events(hub, harvest["id"])[-1] == ("harvest-run", "denied")


def test_a_pacs_that_does_not_answer_is_retried_and_the_harvest_says_so(hub, pacs, owner, edge, tmp_path):
    path = edge_settings(hub, pacs, tmp_path / "down", pacs={"port": free_port(), "retries": 2})
    down = Edge(load_edge(path))
    harvest = owner.create("harvest-ct", "site-a", "anonymized", {"PatientID": "P-A"})
    assert down.poll_once() == 0  # not ended: tried again at the next poll
    harvest = owner.get(harvest["id"])
    assert harvest["state"] == "running" and "waiting for the PACS" in harvest["message"]
    assert "no answer" in harvest["message"]
    wrong_ae = Edge(load_edge(edge_settings(hub, pacs, tmp_path / "wrong", pacs={"aet": "NOTPACS"})))
    assert wrong_ae.poll_once() == 0
    assert "association was rejected" in owner.get(harvest["id"])["message"]
    assert edge.poll_once() == 1  # the PACS answers again: the same request is delivered
    assert owner.get(harvest["id"])["state"] == "delivered"


def test_pushes_reach_the_inbox_only_from_allowed_callers_and_harvest_from_there(hub, owner, edge, tmp_path):
    files = patient_study(tmp_path, "P-PUSH", 5)

    def push(calling: str) -> list[int]:
        ae = AE(ae_title=calling)
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", edge.settings.scp.port, ae_title="EDGE")
        if not assoc.is_established:
            return []
        statuses = [assoc.send_c_store(pydicom.dcmread(f)).Status for f in files]
        assoc.release()
        return statuses

    assert push("EVIL") == []  # not an allowed caller: the association is rejected
    assert push("CT01") == [0] * 5
    harvest = owner.create("harvest-ct", "site-a", "anonymized", {"PatientID": "P-PUSH"}, source="inbox")
    assert edge.poll_once() == 1
    harvest = owner.get(harvest["id"])
    assert harvest["state"] == "delivered" and harvest["counts"]["delivered"] == 5


def test_tokens_reach_only_what_their_holder_may_do(hub, owner, edge, pacs, tmp_path):
    """The attacker tests: another site, a user who owns nothing, an owner posing as a site."""
    mine = owner.create("harvest-ct", "site-a", "anonymized", {"PatientID": "P-A"})
    base = f"{hub.url}/services/medhub-ingest/harvests"
    site_b = {"Authorization": "token " + site_token(Deployment.process(hub.settings), "site-b")}
    site_a = {"Authorization": "token " + site_token(Deployment.process(hub.settings), "site-a")}
    alice = owner.headers
    bob = {"Authorization": "token " + token(hub, "bob")}
    digest = "0" * 64

    def call(method: str, path: str, headers: dict, **kwargs) -> int:
        return httpx.request(method, base + path, headers=headers, timeout=30, **kwargs).status_code

    # site-b sees nothing of site-a's request, and can neither report, upload nor deliver for it
    assert [h["id"] for h in httpx.get(base, headers=site_b, timeout=30).json()["harvests"]] == []
    assert call("POST", f"/{mine['id']}/progress", site_b, json={"state": "failed"}) == 404
    assert call("PUT", f"/{mine['id']}/files/{digest}?offset=0&size=1", site_b, content=b"x") == 404
    assert call("POST", f"/{mine['id']}/delivery", site_b, json={"delivery": "x", "files": []}) == 404
    # a site asks for nothing, and only delivers where its [[site]] entry says
    assert call("POST", "", site_a, json={"dataset": "harvest-ct", "site": "site-a", "policy": "anonymized",
                                          "query": {"PatientID": "P-A"}}) == 403
    # an owner is no site: no uploads, no reports, no deliveries
    assert call("PUT", f"/{mine['id']}/files/{digest}?offset=0&size=1", alice, content=b"x") == 404
    assert call("POST", f"/{mine['id']}/delivery", alice, json={"delivery": "x", "files": []}) == 404
    # bob owns nothing; alice cannot send site-a's data where site-a may not deliver, or with the wrong policy
    assert call("POST", "", bob, json={"dataset": "harvest-ct", "site": "site-a", "policy": "anonymized",
                                       "query": {"PatientID": "P-A"}}) == 403
    assert call("POST", "", alice, json={"dataset": "harvest-raw", "site": "site-a", "policy": "identifiable",
                                         "query": {"PatientID": "P-A"}}) == 403
    assert call("POST", "", alice, json={"dataset": "harvest-ct", "site": "site-a", "policy": "identifiable",
                                         "query": {"PatientID": "P-A"}}) == 400
    assert call("POST", "", alice, json={"dataset": "harvest-ct", "site": "site-a", "policy": "anonymized",
                                         "query": {}}) == 400  # never a whole PACS
    # site-a's own delivery cannot name a path outside the version, nor bytes that are not the file's
    assert call("POST", f"/{mine['id']}/delivery", site_a, json={
        "delivery": "x", "files": [{"path": "../../escape.dcm", "sha256": digest}]}) == 400
    assert call("PUT", f"/{mine['id']}/files/{digest}?offset=0&size=3", site_a, content=b"abc") == 422
    assert call("GET", "", {"Authorization": "token not-a-token"}) == 403
    edge.poll_once()  # the request ends: later tests see no leftover


def test_a_killed_edge_resumes_without_duplicates_or_gaps(hub, owner, pacs, tmp_path):
    path = edge_settings(hub, pacs, tmp_path / "killed", chunk_mb=0.0005)  # small chunks: a wide window to kill in
    harvest = owner.create("harvest-ct", "site-a", "anonymized", {"PatientID": "P-K"})
    journal = tmp_path / "killed" / "state" / "journal.sqlite"

    def run() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "medlib.cli", "edge", "run", "-s", str(path)],
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "edge.log", "ab"))

    def uploaded() -> int:
        try:
            with sqlite3.connect(journal) as db:
                return db.execute("SELECT count(*) FROM instances WHERE state = 'uploaded'").fetchone()[0]
        except sqlite3.Error:
            return 0

    first = run()
    deadline = time.monotonic() + 120
    while uploaded() < 5 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)  # mid-upload: some files at the hub, one perhaps in part
    first.wait()
    assert 5 <= uploaded() < 40, (tmp_path / "edge.log").read_text()[-3000:]
    second = run()
    try:
        done = owner.wait(harvest["id"], timeout=120, every=0.5)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    assert done["state"] == "delivered", (tmp_path / "edge.log").read_text()[-3000:]
    assert done["counts"]["delivered"] == 40 and adds_up(done["counts"])
    folder = next(d.path for d in hub.settings.datasets if d.id == "harvest-ct") / done["version"]
    listed = [line.split("  ", 1)[1] for line in (folder / "MANIFEST.sha256").read_text().splitlines()]
    ours = [name for name in listed if name.endswith(".dcm")]
    uids = [str(pydicom.dcmread(folder / name, stop_before_pixels=True).SOPInstanceUID) for name in ours]
    assert len(uids) == len(set(uids))  # nothing twice
    base = json.loads((folder / "provenance.json").read_text())["base"]  # what earlier tests delivered, if any
    before = [line for line in (folder.parent / base / "MANIFEST.sha256").read_text().splitlines()
              if line.endswith(".dcm")] if base else []
    assert len(ours) - len(before) == 40  # nothing lost


@pytest.mark.browser
def test_a_person_at_the_hospital_uploads_a_zip_through_the_page_behind_a_login(hub, owner, pacs, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from medhub_edge.web import Users, WebServer
    from test_browser import CHROMIUM, CHROMIUM_ARGS

    port = free_port()
    node = Edge(load_edge(edge_settings(hub, pacs, tmp_path / "web", web={"enabled": True, "port": port})))
    Users(node.settings.state_dir).set("nurse", "correct horse")
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in patient_study(tmp_path, "P-WEB", 4):
            z.write(path, f"P-WEB/{path.name}")
        z.writestr("P-WEB/notes.txt", "not DICOM")
    web = WebServer(node.settings, node.inbox).start()
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/", follow_redirects=False).status_code == 302  # login first
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/")
                page.fill("input[name=username]", "nurse")
                page.fill("input[name=password]", "wrong")
                page.click("button")
                expect(page.get_by_role("alert")).to_contain_text("Wrong user name or password")
                page.fill("input[name=username]", "nurse")
                page.fill("input[name=password]", "correct horse")
                page.click("button")
                page.set_input_files("input[name=files]", str(archive))
                page.click("#drop button")
                expect(page.locator("#result")).to_contain_text("4 DICOM instance(s) stored in the inbox; 1 quarantined")
                expect(page.locator("table")).to_contain_text("not a DICOM instance")
            finally:
                browser.close()
    finally:
        web.stop()
    reasons = [p.read_text() for p in (node.settings.state_dir / "quarantine" / "received").glob("*.reason.txt")]
    assert len(reasons) == 1 and "not a DICOM instance" in reasons[0]
    harvest = owner.create("harvest-ct", "site-a", "anonymized", {"PatientID": "P-WEB"}, source="inbox")
    assert node.poll_once() == 1
    assert owner.get(harvest["id"])["counts"]["delivered"] == 4


def test_a_study_still_arriving_is_delivered_whole_once_quiet(hub, owner, pacs, tmp_path):
    node = Edge(load_edge(edge_settings(hub, pacs, tmp_path / "quiet", quiet_seconds=1.5)))
    node.scp.start()
    files = patient_study(tmp_path, "P-SLOW", 8)
    ae = AE(ae_title="CT01")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", node.settings.scp.port, ae_title="EDGE")
    try:
        for path in files[:3]:
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0
        harvest = owner.create("harvest-ct", "site-a", "anonymized", {"PatientID": "P-SLOW"}, source="inbox")

        def trickle() -> None:  # the modality sends the rest while the edge already works on the study
            for path in files[3:]:
                time.sleep(0.4)
                assoc.send_c_store(pydicom.dcmread(path))

        sender = threading.Thread(target=trickle)
        sender.start()
        assert node.poll_once() == 1
        sender.join()
    finally:
        assoc.release()
        node.scp.stop()
    done = owner.get(harvest["id"])
    assert done["counts"]["found"] == done["counts"]["delivered"] == 8  # never half a study


@pytest.mark.browser
def test_an_owner_asks_for_a_harvest_on_the_hubs_page_and_watches_it_arrive(hub, edge):
    from playwright.sync_api import expect, sync_playwright

    from test_browser import CHROMIUM, CHROMIUM_ARGS, sign_in

    page_url = f"{hub.url}/services/medhub-ingest/"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(page_url)  # the hub's login first, through the IdP's page
            sign_in(page, hub, "erin")
            page.wait_for_url(page_url + "**")
            expect(page.locator("body")).to_contain_text("harvest-ct, harvest-features, harvest-raw")
            page.select_option("select[name=dataset]", "harvest-ct")
            page.select_option("select[name=site]", "site-a")
            page.select_option("select[name=policy]", "identifiable")  # into an anonymized dataset: refused
            page.fill("input[name=q-PatientID]", "P-D")
            page.click("button")
            expect(page.get_by_role("alert")).to_contain_text("may only go into a dataset catalogued identifiable")
            page.select_option("select[name=dataset]", "harvest-ct")
            page.select_option("select[name=site]", "site-a")
            page.select_option("select[name=policy]", "anonymized")
            page.fill("input[name=q-PatientID]", "P-D")
            page.click("button")
            row = page.locator("#harvests tr").nth(1)
            expect(row).to_contain_text("pending")
            assert edge.poll_once() == 1
            page.reload()
            expect(row).to_contain_text("delivered")
            expect(row).to_contain_text("v0000")
        finally:
            browser.close()


def test_the_edge_image_harvests_and_delivers_as_an_unprivileged_container(hub, owner, pacs, tmp_path):
    """images/edge: `medlib edge run` in the image (uid 998, its own state volume) takes a harvest
    from the PACS and delivers it; the container shares only the host's loopback with them."""
    from test_containers import docker, engine_problem

    image = "medhub/edge:test"
    problem = engine_problem(image)
    if problem:
        pytest.skip(problem)
    config = tmp_path / "etc"
    path = edge_settings(hub, pacs, config, state_dir="/var/lib/medhub-edge", token_file="/etc/medhub-edge/token",
                         key_file="/etc/medhub-edge/site.key")
    assert path.name == "edge.toml"
    for item in config.iterdir():
        os.chown(item, 998, 100)
    os.chown(config, 998, 100)
    volume, name = f"medhub-test-edge-{tmp_path.name}", f"medhub-test-edge-{os.getpid()}"
    assert docker("run", "--rm", "--entrypoint", "medlib", "-v", f"{config}:/etc/medhub-edge:ro", image,
                  "edge", "check", "-s", "/etc/medhub-edge/edge.toml", check=False).stdout.startswith("site site-a")
    docker("run", "-d", "--name", name, "--network", "host", "-v", f"{config}:/etc/medhub-edge:ro",
           "-v", f"{volume}:/var/lib/medhub-edge", image)
    try:
        assert docker("exec", name, "id", "-u").stdout.strip() == "998"
        harvest = owner.create("harvest-ct", "site-a", "anonymized", {"PatientID": "P-D"})
        done = owner.wait(harvest["id"], timeout=120, every=0.5)
        assert done["state"] == "delivered" and done["counts"]["delivered"] == 6, docker("logs", name).stderr[-3000:]
        # the mapping store stayed in the container's volume, at the site
        assert docker("exec", name, "test", "-s", "/var/lib/medhub-edge/mapping.sqlite", check=False).returncode == 0
    finally:
        docker("rm", "-f", name, check=False)
        docker("volume", "rm", volume, check=False)


def test_identifiable_data_goes_only_into_an_identifiable_dataset_here_by_c_get(hub, owner, pacs, tmp_path,
                                                                               monkeypatch):
    """Solution 1: site-b sends the files as the PACS holds them (C-GET: on the edge's own
    association, nothing to configure at the PACS), into the dataset catalogued identifiable."""
    node = Edge(load_edge(edge_settings(hub, pacs, tmp_path / "site-b", site="site-b", pacs={"retrieve": "get"})))
    harvest = owner.create("harvest-raw", "site-b", "identifiable", {"PatientID": "P-D"})
    assert node.poll_once() == 1  # its SCP is not even listening: C-GET needs none
    harvest = owner.get(harvest["id"])
    assert harvest["state"] == "delivered" and harvest["counts"]["delivered"] == 6 and adds_up(harvest["counts"])
    open_as(hub, "alice", [OWNERS], tmp_path / "alice", monkeypatch)
    (series,) = mds.open("harvest-raw").children.values()
    assert series.attrs["PatientID"] == "P-D"  # as the PACS holds it
    (version,) = mds.versions("harvest-raw")
    assert version["policy"] == "identifiable" and version["edge"]["key_fingerprint"] is None
    open_as(hub, "bob", ["course-students"], tmp_path / "bob", monkeypatch)
    with pytest.raises(PermissionError, match="radiology-research"):
        mds.open("harvest-raw")


def test_a_users_server_token_does_not_reach_the_ingest_service(hub, owner):
    """What a user's code holds in its server is the server's token: its scopes, as the hub gives
    them to alice's server, reach the audit service, not the ingest service (her own API token,
    made on the hub's token page, would)."""
    from traitlets.config import Config

    from medhub.config import configure

    c = Config()
    configure(c, hub.settings)
    scopes = [s.replace("!user", "!user=alice").replace("!server", "!server=alice/") if s.endswith(("!user", "!server"))
              else s for s in c.MedhubLocalSpawner.server_token_scopes]
    server_token = hub.api("POST", "/users/alice/tokens", json={"scopes": scopes, "note": "as a server's"}).json()
    headers = {"Authorization": f"token {server_token['token']}"}
    assert httpx.get(f"{hub.url}/services/medhub-ingest/harvests", headers=headers, timeout=30).status_code == 403
    assert httpx.get(f"{hub.url}/services/medhub-audit/events", headers=headers, timeout=30).status_code == 200
    assert httpx.get(f"{hub.url}/services/medhub-ingest/harvests", headers=owner.headers, timeout=30).status_code == 200
