"""The audit log: tampering is found and named; identity comes from tokens; nothing is lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest

from medhub.audit import export
from medhub.audit.log import AuditLog, query, verify
from medhub.audit.schema import EventError, from_client, make_event
from medhub.state import StateDir
from medlib.audit import AuditClient

from conftest import Platform
from test_spawn import server_environ

KEY = bytes(range(32))


def sample(n: int) -> dict:
    return make_event("dataset-open", {"user": f"user{n % 3}", "groups": ["g"], "source": "notebook"},
                      {"dataset": f"ds{n % 2}", "series": n})


@pytest.fixture
def log_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "audit"
    log = AuditLog(folder, KEY, fsync="never", segment_bytes=4000, checkpoint_every=7)
    for n in range(40):
        log.append([sample(n)])
    log.close()
    return folder


def lines(folder: Path) -> list[tuple[Path, int]]:
    return [(p, i) for p in sorted(folder.glob("segment-*.jsonl")) for i in range(len(p.read_text().splitlines()))]


def rewrite(path: Path, change) -> None:
    text = path.read_text().splitlines()
    change(text)
    path.write_text("".join(line + "\n" for line in text))


def test_an_untouched_log_verifies_across_segments(log_folder: Path):
    assert len(list(log_folder.glob("segment-*.jsonl"))) > 2  # the chain runs across segments
    result = verify(log_folder, KEY)
    assert result.ok and result.checked == 40
    assert not verify(log_folder, bytes(32)).ok  # another key verifies nothing


def test_an_edited_record_is_named(log_folder: Path):
    segment = sorted(log_folder.glob("segment-*.jsonl"))[1]
    def edit(text):
        record = json.loads(text[2])
        record["event"]["actor"]["user"] = "someone-else"
        text[2] = json.dumps(record)
    rewrite(segment, edit)
    result = verify(log_folder, KEY)
    assert not result.ok and f"{segment.name} line 3" in result.problem and "edited" in result.problem


def test_a_deleted_record_is_named(log_folder: Path):
    segment = sorted(log_folder.glob("segment-*.jsonl"))[0]
    rewrite(segment, lambda text: text.pop(4))
    assert "record seq 5 removed before seq 6" in verify(log_folder, KEY).problem


def test_an_inserted_record_is_named(log_folder: Path):
    segment = sorted(log_folder.glob("segment-*.jsonl"))[0]
    def insert(text):
        forged = json.loads(text[3])
        forged["event"]["action"] = "export"
        text.insert(4, json.dumps(forged))  # a copy of seq 4, edited, after seq 4
    rewrite(segment, insert)
    problem = verify(log_folder, KEY).problem
    assert "line 5" in problem and "inserted or reordered" in problem


def test_swapped_records_are_named(log_folder: Path):
    segment = sorted(log_folder.glob("segment-*.jsonl"))[0]
    def swap(text):
        text[2], text[3] = text[3], text[2]
    rewrite(segment, swap)
    problem = verify(log_folder, KEY).problem
    assert "line 3" in problem and "removed before seq 4" in problem  # seq 4 where 3 belongs


def test_records_cut_from_the_end_are_caught_by_checkpoints(log_folder: Path):
    last = sorted(log_folder.glob("segment-*.jsonl"))[-1]
    rewrite(last, lambda text: text.pop())
    assert "1 record(s) missing after seq 39: checkpoint" in verify(log_folder, KEY).problem


def test_a_tail_cut_with_its_checkpoints_is_caught_by_the_anchor(tmp_path: Path):
    folder, anchor, sent = tmp_path / "state" / "audit", tmp_path / "anchor", []
    log = AuditLog(folder, KEY, fsync="never", checkpoint_every=1000, checkpoint_seconds=0, anchor=anchor,
                   on_checkpoint=sent.append)
    for n in range(40):
        log.append([sample(n)])
        assert log.tick()  # every 0 s: each record is anchored as it comes
    log.close()
    assert verify(folder, KEY, anchor).ok and [cp["seq"] for cp in sent] == list(range(1, 41))
    segment = sorted(folder.glob("segment-*.jsonl"))[-1]
    rewrite(segment, lambda text: text.__delitem__(slice(-10, None)))  # the last 10 records ...
    (folder / "checkpoints.jsonl").unlink()  # ... and the checkpoints that named them
    assert verify(folder, KEY).ok  # the folder alone cannot tell
    problem = verify(folder, KEY, anchor).problem
    assert "10 record(s) missing after seq 30" in problem and str(anchor) in problem
    with pytest.raises(ValueError, match="must lie outside"):
        AuditLog(folder, KEY, fsync="never", anchor=folder / "anchor")


def test_a_quiet_log_is_anchored_within_checkpoint_seconds(tmp_path: Path):
    log = AuditLog(tmp_path / "audit", KEY, fsync="never", checkpoint_seconds=0.3, anchor=tmp_path / "anchor")
    log.append([sample(1), sample(2)])
    assert not log.tick()  # not yet
    time.sleep(0.35)
    assert log.tick() and not log.tick()  # once, then nothing new to anchor
    anchored = [json.loads(line) for line in (tmp_path / "anchor" / "checkpoints.jsonl").read_text().splitlines()]
    assert [cp["seq"] for cp in anchored] == [2]
    log.close()


def test_an_edited_checkpoint_is_named(log_folder: Path):
    def edit(text):
        cp = json.loads(text[0])
        cp["seq"] += 1
        text[0] = json.dumps(cp)
    rewrite(log_folder / "checkpoints.jsonl", edit)
    assert verify(log_folder, KEY).problem == "checkpoints.jsonl line 1: checkpoint edited"


def test_the_chain_continues_after_a_restart_and_a_torn_line(log_folder: Path):
    last = sorted(log_folder.glob("segment-*.jsonl"))[-1]
    with open(last, "ab") as f:
        f.write(b'{"seq": 41, "prev": "torn')  # a crash in mid-write, never acknowledged
    log = AuditLog(log_folder, KEY, fsync="never", segment_bytes=4000, checkpoint_every=7)
    assert log.append([sample(41)]) == [41]
    log.close()
    assert verify(log_folder, KEY).ok
    assert last.with_suffix(".torn").read_bytes() == b'{"seq": 41, "prev": "torn'
    assert [e["seq"] for e in query(log_folder, user="user2", dataset="ds1")] == [6, 12, 18, 24, 30, 36, 41]


def test_clients_cannot_choose_their_identity():
    event = from_client({"action": "export", "object": {"dataset": "x"}, "actor": {"user": "mallory"}},
                        "frank", ["course-students"])
    assert event["actor"] == {"user": "frank", "groups": ["course-students"], "source": "notebook"}
    for claimed in ("hub", "batch"):
        with pytest.raises(EventError, match=f"not '{claimed}'; 'hub' and 'batch' events come from those services"):
            from_client({"action": "login", "source": claimed}, "frank", [])
    with pytest.raises(EventError, match="action 'format-disk' is not one of"):
        from_client({"action": "format-disk"}, "frank", [])
    with pytest.raises(EventError, match="unknown field"):
        from_client({"action": "export", "who": "x"}, "frank", [])


def test_every_action_has_its_dicom_event_id():
    from medhub.audit.schema import ACTIONS
    assert set(export.EVENT_IDS) == ACTIONS


def test_exports_are_fhir_dicom_and_syslog(tmp_path: Path):
    event = {"seq": 7, **make_event("dataset-open", {"user": "frank", "groups": ["g"], "source": "notebook"},
                                    {"dataset": "lung-ct"}, outcome="denied")}
    bundle = export.fhir_bundle([event])
    resource = bundle["entry"][0]["resource"]
    assert bundle["resourceType"] == "Bundle" and resource["resourceType"] == "AuditEvent"
    assert resource["type"]["code"] == "110103" and resource["action"] == "R" and resource["outcome"] == "4"
    assert resource["agent"][0]["who"]["identifier"]["value"] == "frank"
    assert resource["entity"][0]["what"]["identifier"] == {"system": "urn:medhub:dataset", "value": "lung-ct"}
    message = ET.fromstring(export.dicom_messages([event])).find("AuditMessage")
    assert message.find("EventIdentification").get("EventOutcomeIndicator") == "4"
    assert message.find("EventIdentification/EventID").get("csd-code") == "110103"
    assert message.find("ActiveParticipant").get("UserID") == "frank"
    assert message.find("ParticipantObjectIdentification").get("ParticipantObjectID") == "lung-ct"
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(5)
    export.SyslogForwarder(f"udp://127.0.0.1:{collector.getsockname()[1]}")(event)
    datagram = collector.recv(65536).decode()
    assert datagram.startswith(f"<84>1 {event['time']} ") and " medhub - dataset-open - " in datagram
    assert "<AuditMessage>" in datagram
    log = AuditLog(tmp_path / "audit", KEY, fsync="never", checkpoint_every=3, anchor=tmp_path / "anchor",
                   on_checkpoint=export.SyslogForwarder(f"udp://127.0.0.1:{collector.getsockname()[1]}").checkpoint)
    log.append([sample(n) for n in range(3)])  # a checkpoint: anchored at the collector too
    datagram = collector.recv(65536).decode()
    assert " medhub - audit-checkpoint - " in datagram
    anchored = json.loads(datagram.split("\ufeff", 1)[1])
    assert anchored["seq"] == 3 and anchored["mac"] == log.mac and "cmac" in anchored
    log.close()
    collector.close()


def test_the_writer_commits_before_it_answers_and_then_forwards_to_syslog(tmp_path: Path):
    import asyncio

    from medhub.audit.service import Writer

    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(5)
    log = AuditLog(tmp_path / "audit", KEY)
    writer = Writer(log, export.SyslogForwarder(f"udp://127.0.0.1:{collector.getsockname()[1]}"))

    async def together():  # submitted together: one write, each caller its own sequence numbers
        return await asyncio.gather(*(writer.submit([sample(n)]) for n in range(5)))

    assert sorted(asyncio.run(together())) == [[1], [2], [3], [4], [5]]
    assert verify(tmp_path / "audit", KEY).checked == 5  # on disk before the answers
    assert all(b"dataset-open" in collector.recv(65536) for _ in range(5))
    log.close()
    collector.close()


# -- through the real hub and its audit service -------------------------------------------

def audit_url(platform: Platform) -> str:
    return f"http://127.0.0.1:{platform.settings.audit.port}/services/medhub-audit/events"


def admin_query(platform: Platform, **params) -> list[dict]:
    r = httpx.get(audit_url(platform), params=params, headers={"Authorization": f"token {platform.observer_token}"})
    assert r.status_code == 200, r.text
    return r.json()["events"]


@pytest.fixture(scope="module")
def frank(platform: Platform) -> dict[str, str]:
    client = platform.browser()
    platform.login(client, "frank")
    platform.spawn(client, "frank")
    return server_environ(platform, "frank")


def test_hub_events_and_a_forged_actor(platform: Platform, frank: dict[str, str]):
    token = frank["JUPYTERHUB_API_TOKEN"]
    assert frank["MEDHUB_AUDIT_URL"] == f"{platform.url}/services/medhub-audit/events"  # through the proxy
    r = httpx.post(audit_url(platform), headers={"Authorization": f"token {token}"},
                   json={"action": "export", "object": {"dataset": "teaching-ct"},
                         "actor": {"user": "mallory", "groups": ["course-instructors"], "source": "hub"}})
    assert r.status_code == 201, r.text
    (stored,) = [e for e in admin_query(platform, user="frank", action="export")]
    assert stored["actor"] == {"user": "frank", "groups": ["course-students"], "source": "notebook"}
    assert not admin_query(platform, user="mallory", action="export")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not admin_query(platform, user="frank", action="spawn"):
        time.sleep(0.2)
    (spawn,) = admin_query(platform, user="frank", action="spawn")
    assert spawn["actor"]["source"] == "hub" and spawn["object"]["profile"] == "cpu"
    assert spawn["details"]["datasets"] == ["teaching-ct"]
    assert admin_query(platform, user="frank", action="login")
    assert httpx.post(audit_url(platform), json={"action": "export"}).status_code == 403  # no token


def test_a_user_reads_only_their_own_events(platform: Platform, frank: dict[str, str]):
    headers = {"Authorization": f"token {frank['JUPYTERHUB_API_TOKEN']}"}
    own = httpx.get(audit_url(platform), headers=headers)
    assert own.status_code == 200 and own.json()["events"]
    assert {e["actor"]["user"] for e in own.json()["events"]} == {"frank"}
    other = httpx.get(audit_url(platform), params={"user": "alice"}, headers=headers)
    assert other.status_code == 403 and "only your own" in other.json()["message"]
    assert httpx.get(audit_url(platform).replace("events", "export"), headers=headers).status_code == 403
    fhir = httpx.get(audit_url(platform).replace("events", "export"), params={"user": "frank", "format": "fhir"},
                     headers={"Authorization": f"token {platform.observer_token}"})
    assert fhir.status_code == 200 and fhir.json()["entry"]


def test_failed_logins_are_recorded(platform: Platform):
    client = platform.browser()
    assert platform.login(client, "mallory").status_code == 403
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not admin_query(platform, user="mallory", action="login-failed"):
        time.sleep(0.2)
    (failed,) = admin_query(platform, user="mallory", action="login-failed")
    assert failed["outcome"] == "denied" and failed["actor"]["groups"] == ["visitors"]


def test_events_wait_while_the_service_is_down_and_arrive_after(platform: Platform, frank: dict[str, str],
                                                                tmp_path: Path):
    client = AuditClient(audit_url(platform), frank["JUPYTERHUB_API_TOKEN"], tmp_path / "buffer.jsonl")
    pid = platform.api("GET", "/services").json()["medhub-audit"]["pid"]
    os.kill(pid, signal.SIGKILL)  # the service dies; the hub starts it again
    sent = [client.record("dataset-verify", {"dataset": "teaching-ct", "n": n}) for n in range(5)]
    assert len((tmp_path / "buffer.jsonl").read_text().splitlines()) >= 1
    deadline = time.monotonic() + 60
    while client.flush() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not (tmp_path / "buffer.jsonl").exists()
    stored = [e for e in admin_query(platform, user="frank", action="dataset-verify") if "n" in e["object"]]
    assert [e["object"]["n"] for e in stored] == [0, 1, 2, 3, 4]  # each once, in order
    assert [e["details"]["reported_time"] for e in stored] == [e["time"] for e in sent]
    assert all(e["time"] >= e["details"]["reported_time"] for e in stored)  # the service's clock, on arrival


def test_concurrent_writers_store_every_event_once(platform: Platform, frank: dict[str, str]):
    headers = {"Authorization": f"token {frank['JUPYTERHUB_API_TOKEN']}"}
    errors: list[str] = []

    def writer(w: int) -> None:
        with httpx.Client(headers=headers, timeout=30) as http:
            for n in range(1000):
                r = http.post(audit_url(platform), json={"action": "train-start", "object": {"job": f"w{w}", "n": n}})
                if r.status_code != 201:
                    errors.append(r.text)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stored = [(e["object"]["job"], e["object"]["n"]) for e in admin_query(platform, action="train-start")]
    assert sorted(stored) == sorted((f"w{w}", n) for w in range(20) for n in range(1000))
    state = StateDir(platform.settings.hub.state_dir)
    result = subprocess.run([sys.executable, "-m", "medhub.cli", "audit", "verify", "--settings",
                             str(platform.settings.source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "chain intact" in result.stdout
    copy = platform.root / "audit-copy"  # the CLI names a record edited in a copy
    shutil.copytree(state.audit_dir, copy)
    segment = sorted(copy.glob("segment-*.jsonl"))[0]
    rewrite(segment, lambda text: text.__setitem__(0, text[0].replace('"user":"', '"user":"x', 1)))  # a name edited
    tampered = subprocess.run([sys.executable, "-m", "medhub.cli", "audit", "verify", "--settings",
                               str(platform.settings.source), "--folder", str(copy)], capture_output=True, text=True)
    assert tampered.returncode == 1 and "line 1" in tampered.stdout


def test_hub_records_tokens_admin_changes_logouts_and_stops(platform: Platform, frank: dict[str, str]):
    assert platform.api("POST", "/users/frank/tokens", json={"note": "for a job", "scopes": ["read:users:activity!user=frank"]}).status_code == 201
    assert platform.api("POST", "/groups/audit-test-group").status_code == 201
    client = platform.browser()
    platform.login(client, "frank")
    client.get(f"{platform.url}/hub/logout")
    platform.api("DELETE", "/users/frank/server")
    wanted = {"token-created", "admin-change", "logout", "stop"}
    deadline, seen = time.monotonic() + 30, {}
    while time.monotonic() < deadline and set(seen) != wanted:
        seen = {e["action"]: e for e in admin_query(platform) if e["action"] in wanted
                and (e["actor"]["user"] == "frank" or e["object"].get("user") == "frank"
                     or e["object"].get("target") == "groups/audit-test-group")}
        time.sleep(0.3)
    assert set(seen) == wanted, sorted(seen)
    assert seen["token-created"]["object"] == {"user": "frank"}
    assert seen["token-created"]["actor"]["user"] == "test-observer"  # the service that made it
    assert seen["admin-change"]["details"]["method"] == "POST"
    assert seen["stop"]["actor"]["source"] == "hub"
