"""The red team: what an ordinary user, with code execution in her own server and her persistent
home, tries in order to act as someone else. One test per attack (issue 15); each failed on the
main branch before its fix. eve is the attacker, victor the user she attacks; real IdP, hub,
proxy, services and servers on 127.0.0.1."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from conftest import once_answering
from medhub.batch.client import BatchClient
from test_batch import notebook
from test_spawn import server_environ

#: A server configuration eve plants in her home: it records the headers of every request her
#: servers receive (JupyterHub reads ~/.jupyter unless user configuration is disabled).
HEADER_RECORDER = """
import json, os
def _record(handler):
    with open(os.path.expanduser("~/captured.jsonl"), "a") as f:
        f.write(json.dumps({"path": handler.request.path,
                            "authorization": handler.request.headers.get("Authorization")}) + "\\n")
c.ServerApp.tornado_settings = {"log_function": _record}
"""


def as_(token: str, method: str, url: str, **kwargs) -> httpx.Response:
    return httpx.request(method, url, headers={"Authorization": f"token {token}"}, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def eve(platform):
    """eve logged in (victor too: he exists in the hub), with a token of her own."""
    for name in ("eve", "victor"):
        assert platform.login(platform.browser(), name).status_code == 200
    token = platform.api("POST", "/users/eve/tokens", json={"note": "red team"}).json()["token"]
    once_answering(BatchClient(platform.url, token).jobs)
    return token


def test_what_a_batch_job_sends_to_its_server_is_good_for_nothing_else(platform, eve, tmp_path: Path):
    home = Path(platform.settings.local.home_root) / "eve"
    (home / ".jupyter").mkdir(parents=True, exist_ok=True)
    (home / ".jupyter" / "jupyter_server_config.py").write_text(HEADER_RECORDER)
    client = BatchClient(platform.url, eve)
    job = client.submit(notebook(tmp_path / "quick.ipynb", "print(x)"), {"x": 3})
    assert client.wait(job["id"], timeout=180, every=0.5)["status"] == "succeeded"
    captured = [json.loads(line) for line in (home / "captured.jsonl").read_text().splitlines()]
    tokens = {c["authorization"].split()[-1] for c in captured
              if c["authorization"] and "/medlib/batch" in c["path"]}
    assert tokens, f"the batch service sent no token to the job's server: {captured}"
    api, audit = f"{platform.url}/hub/api", f"{platform.url}/services/medhub-audit/events"
    for token in tokens:
        assert as_(token, "POST", f"{api}/users/victor/server").status_code in (403, 404)
    assert platform.api("POST", "/users/victor/server").status_code in (201, 202)
    platform.wait_ready("victor")
    for token in tokens:
        assert as_(token, "GET", f"{api}/users/victor").status_code in (403, 404)
        assert as_(token, "GET", f"{platform.url}/user/victor/api/status").status_code == 403
        assert as_(token, "GET", audit, params={"user": "victor"}).status_code == 403
        forged = {"action": "dataset-open", "actor": {"user": "victor", "groups": []}, "object": {"dataset": "x"}}
        assert as_(token, "POST", audit, json=forged).status_code == 403
        assert as_(token, "GET", f"{api}/user").status_code == 403  # revoked when the job ended
    platform.api("DELETE", "/users/victor/server")


def test_a_servers_own_token_reaches_the_batch_service_as_its_user_only(platform, eve, tmp_path: Path):
    """Server tokens may reach the batch service (a notebook submits jobs, 5-batch-job.ipynb): eve's
    code, holding her server's token, neither sees, reads nor cancels victor's jobs, and what it
    submits runs as eve."""
    victor = BatchClient(platform.url, platform.api("POST", "/users/victor/tokens", json={"note": "victim"}).json()["token"])
    his = victor.submit(notebook(tmp_path / "his.ipynb", "print(x)"), {"x": 1})
    browser = platform.browser()
    assert platform.login(browser, "eve").status_code == 200
    platform.spawn(browser, "eve")
    try:
        token = server_environ(platform, "eve")["JUPYTERHUB_API_TOKEN"]
        jobs = f"{platform.url}/services/medhub-batch/jobs"
        assert his["id"] not in [j["id"] for j in BatchClient(platform.url, token).jobs()]
        assert as_(token, "GET", f"{jobs}/{his['id']}").status_code in (403, 404)
        assert as_(token, "GET", f"{jobs}/{his['id']}/output").status_code in (403, 404)
        assert as_(token, "DELETE", f"{jobs}/{his['id']}").status_code in (403, 404)
        mine = BatchClient(platform.url, token).submit(notebook(tmp_path / "mine.ipynb", "print(x)"), {"x": 2})
        assert mine["user"] == "eve" and his["id"] not in [j["id"] for j in BatchClient(platform.url, token).jobs()]
        assert victor.wait(his["id"], timeout=180, every=0.5)["status"] == "succeeded"  # untouched
        BatchClient(platform.url, token).cancel(mine["id"])
    finally:
        platform.api("DELETE", "/users/eve/server")


def test_a_teaching_servers_token_starts_no_job_and_no_run_as_its_student(platform):
    """A student's teaching server is opened by the course's instructors, who run code in it: its
    token must not reach the batch or federated service, where it would start work as the student
    with all the student's grants (uma may also read research data)."""
    assert platform.login(platform.browser(), "uma").status_code == 200
    assert platform.api("POST", "/users/uma/server", json={"profile": "teaching"}).status_code in (201, 202)
    platform.wait_ready("uma")
    try:
        token = server_environ(platform, "uma")["JUPYTERHUB_API_TOKEN"]
        assert as_(token, "GET", f"{platform.url}/services/medhub-batch/jobs").status_code == 403
        assert as_(token, "GET", f"{platform.url}/services/medhub-audit/events").status_code == 200  # its own events
    finally:
        platform.api("DELETE", "/users/uma/server")


# -- instructors' powers stop at their course ---------------------------------------------

def test_an_instructor_shares_only_with_the_class_and_sees_only_the_course_in_a_students_server(platform):
    for name in ("tina", "uma", "victor"):
        assert platform.login(platform.browser(), name).status_code == 200
    tina = platform.api("POST", "/users/tina/tokens", json={"note": "red team"}).json()["token"]
    api = f"{platform.url}/hub/api"
    # sharing her server with someone outside the course is refused, saying why
    for target in ({"user": "victor"}, {"group": "radiology-research"}):
        refused = as_(tina, "POST", f"{api}/shares/tina/", json=target)
        assert refused.status_code == 403 and "share with" in refused.json()["message"], refused.text
    # uma, a student, may also read research data: a server tina starts for her is for teaching only
    started = as_(tina, "POST", f"{api}/users/uma/server", json={"profile": "cpu"})
    assert started.status_code == 403 and "only as a teaching server" in started.json()["message"], started.text
    assert as_(tina, "POST", f"{api}/users/uma/server", json={"profile": "teaching"}).status_code in (201, 202)
    platform.wait_ready("uma")
    browser = platform.browser()
    assert platform.login(browser, "tina").status_code == 200
    from test_teaching import status_in
    assert status_in(browser, platform, "uma") == 200
    seen = browser.get(f"{platform.url}/user/uma/medlib/datasets").json()
    assert [d["id"] for d in seen["datasets"]] == ["teaching-ct"]  # not research-ct, which uma may read
    view = Path(platform.settings.hub.state_dir) / "views" / "uma"
    assert sorted(p.name for p in view.iterdir()) == ["teaching-ct"]
    platform.api("DELETE", "/users/uma/server")
    # her own server, with everything she may read, is hers alone: tina cannot open it
    uma = platform.browser()
    assert platform.login(uma, "uma").status_code == 200
    platform.spawn(uma, "uma", "cpu")
    fresh = platform.browser()  # a browser without the teaching server's session
    assert platform.login(fresh, "tina").status_code == 200
    assert status_in(fresh, platform, "uma") == 403
    assert platform.api("GET", "/shares/uma").json()["items"] == []  # the teaching server's share is gone
    platform.api("DELETE", "/users/uma/server")


# -- the audit service trusts tokens, not account flags ------------------------------------

def events_url(platform) -> str:
    return f"{platform.url}/services/medhub-audit/events"


def test_reading_everyones_events_takes_a_scope_on_the_token_not_an_admin_account(platform, eve):
    assert platform.login(platform.browser(), "alice").status_code == 200  # alice is a hub admin
    server_like = platform.api("POST", "/users/alice/tokens", json={"note": "down-scoped", "scopes": [
        "users:activity!user", "access:servers!server=alice/", "access:services!service=medhub-audit"]}).json()["token"]
    refused = as_(server_like, "GET", events_url(platform), params={"user": "victor"})
    assert refused.status_code == 403 and "only your own" in refused.json()["message"]
    assert as_(server_like, "GET", events_url(platform).replace("events", "export")).status_code == 403
    auditor = as_(platform.observer_token, "GET", events_url(platform), params={"user": "victor"})
    assert auditor.status_code == 200 and auditor.json()["events"]  # the scope itself: custom:audit:read-all


def test_a_user_can_neither_back_date_an_event_nor_claim_another_source(platform, eve):
    posted = as_(eve, "POST", events_url(platform), json={"action": "export", "object": {"dataset": "teaching-ct"},
                                                          "time": "2020-01-01T00:00:00.000000Z"})
    assert posted.status_code == 201
    (seq,) = posted.json()["seqs"]
    (stored,) = [e for e in as_(eve, "GET", events_url(platform), params={"action": "export"}).json()["events"]
                 if e["seq"] == seq]
    assert stored["time"] > "2026" and stored["details"]["reported_time"] == "2020-01-01T00:00:00.000000Z"
    for source in ("batch", "hub"):
        claimed = as_(eve, "POST", events_url(platform), json={"action": "job-end", "source": source})
        assert claimed.status_code == 400 and "come from those services" in claimed.json()["message"]


def test_the_hub_itself_records_each_dataset_a_server_is_given(platform):
    assert platform.login(platform.browser(), "victor").status_code == 200
    assert platform.api("POST", "/users/victor/servers/mounts").status_code in (201, 202)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        mounts = [e for e in as_(platform.observer_token, "GET", events_url(platform),
                                 params={"user": "victor", "action": "dataset-mount"}).json()["events"]
                  if e["object"].get("server") == "mounts"]
        if mounts:
            break
        time.sleep(0.3)
    assert [(e["object"]["dataset"], e["actor"]["source"]) for e in mounts] == [("research-ct", "hub")]
    assert mounts[0]["details"]["read_only"] is False  # the local spawner's links: said as it is
    platform.api("DELETE", "/users/victor/servers/mounts", json={"remove": True})


# -- stable identities ------------------------------------------------------------------------

def test_two_accounts_that_differ_only_by_case_are_two_users(platform):
    for name in ("zoe", "Zoe"):
        assert platform.login(platform.browser(), name).status_code == 200
    assert platform.api("GET", "/users/zoe").json()["groups"] == ["course-students"]
    assert platform.api("GET", "/users/Zoe").json()["groups"] == ["radiology-research"]  # not zoe's account


def test_a_user_removed_from_every_allowed_group_loses_access_and_servers_at_the_next_refresh(platform):
    browser = platform.browser()
    assert platform.login(browser, "wendy").status_code == 200
    token = platform.api("POST", "/users/wendy/tokens", json={"note": "red team"}).json()["token"]
    assert platform.api("POST", "/users/wendy/server").status_code in (201, 202)
    platform.wait_ready("wendy")
    platform.change_idp_groups("wendy", "visitors")
    try:
        time.sleep(platform.settings.oidc.refresh_age + 1)  # the hub refreshes her auth after refresh_age
        assert as_(token, "GET", f"{platform.url}/hub/api/user").status_code == 403
        deadline = time.monotonic() + 30
        while platform.api("GET", "/users/wendy").json()["servers"] and time.monotonic() < deadline:
            time.sleep(0.3)
        assert platform.api("GET", "/users/wendy").json()["servers"] == {}
        assert platform.login(platform.browser(), "wendy").status_code == 403  # and she cannot log in again
    finally:
        platform.change_idp_groups("wendy", "radiology-research")


# -- limits against exhaustion ----------------------------------------------------------------

def test_a_job_whose_output_is_over_the_cap_fails_saying_so_and_nothing_is_stored(platform, eve, tmp_path: Path):
    client = BatchClient(platform.url, eve)
    flood = notebook(tmp_path / "flood.ipynb", "print('x' * (3 << 20))")  # 3 MB of output; the cap is 2 MB here
    job = client.wait(client.submit(flood, {})["id"], timeout=180, every=0.5)
    assert job["status"] == "failed" and "larger than [batch] max_output_mb (2 MB)" in job["error"]
    assert not (Path(platform.settings.hub.state_dir) / "batch" / job["id"] / "output.ipynb").exists()
    assert platform.api("GET", "/users/eve").json()["servers"].get(job["server"]) is None


def test_jobs_results_never_fill_the_disk_the_audit_log_needs(tmp_path: Path):
    from medhub.batch.service import OutputRefused, Runner
    from medhub.batch.store import JobStore

    runner = Runner(JobStore(tmp_path / "batch"), "http://127.0.0.1:1/hub/api", "http://127.0.0.1:1", "t", 1, None,
                    min_free_mb=1 << 40)  # more than any disk here has
    with pytest.raises(OutputRefused, match=r"MB free, and storing 1 MB would leave less than \[batch\] min_free_mb"):
        runner.check_room(1000)
    Runner(JobStore(tmp_path / "batch2"), "", "", "t", 1, None, min_free_mb=0).check_room(1000)  # room enough


def test_a_teaching_share_ends_with_the_server_even_when_the_instructor_left_the_course(platform):
    for name in ("tina", "uma"):
        assert platform.login(platform.browser(), name).status_code == 200
    tina = platform.api("POST", "/users/tina/tokens", json={"note": "red team"}).json()["token"]
    assert as_(tina, "POST", f"{platform.url}/hub/api/users/uma/server",
               json={"profile": "teaching"}).status_code in (201, 202)
    platform.wait_ready("uma")
    assert [s["user"]["name"] for s in platform.api("GET", "/shares/uma").json()["items"]] == ["tina"]
    platform.change_idp_groups("tina", "course-students")  # she leaves the course's instructors ...
    try:
        time.sleep(platform.settings.oidc.refresh_age + 1)
        assert as_(tina, "GET", f"{platform.url}/hub/api/user").json()["groups"] == ["course-students"]
        platform.api("DELETE", "/users/uma/server")  # ... before the teaching server stops
        deadline = time.monotonic() + 30
        while platform.api("GET", "/users/uma").json()["servers"] and time.monotonic() < deadline:
            time.sleep(0.3)
        assert platform.api("GET", "/shares/uma").json()["items"] == []  # nothing left to open uma's next server
    finally:
        platform.change_idp_groups("tina", "course-tutors")
