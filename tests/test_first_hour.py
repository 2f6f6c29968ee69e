"""A new user's first hour, on a real platform (IdP, proxy, hub, services, servers on 127.0.0.1):
the spawn form tells the truth about this machine's GPUs (it has none), a refused or failed spawn
reaches the user as a sentence and the audit log as a failure, a server's activity is no admin
change. The browser's view of the same hour is tests/test_browser.py; the teaching notebooks run
end to end on the demo in tests/test_demo.py."""

from __future__ import annotations

import time

import httpx
import pytest

from medhub.gpus import node_devices

def audit_events(platform, user: str) -> list[dict]:
    """``user``'s audit events (the observer reads everyone's), once the audit service answers."""
    deadline = time.monotonic() + 60
    while True:
        response = httpx.get(f"{platform.url}/services/medhub-audit/events", params={"user": user},
                             headers={"Authorization": f"token {platform.observer_token}"}, timeout=30)
        if response.status_code == 200 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            return response.json()["events"]
        time.sleep(0.5)


def spawn_events(platform, user: str) -> list[dict]:
    """``user``'s spawn and stop events, once there are any (the hub sends them from a thread)."""
    deadline = time.monotonic() + 30
    while not (found := [e for e in audit_events(platform, user) if e["action"] in ("spawn", "stop")]):
        assert time.monotonic() < deadline, f"no spawn or stop event of {user}"
        time.sleep(0.3)
    return found


@pytest.mark.skipif(bool(node_devices()), reason="this machine has NVIDIA GPUs: the no-GPU path is not the one here")
def test_on_a_machine_without_gpus_gpu_profiles_are_unavailable_and_refused_with_a_sentence(platform):
    audit_events(platform, "uma")  # the audit service is up (the hub's events wait for it otherwise)
    client = platform.browser()
    assert platform.login(client, "uma").status_code == 200
    form = client.get(f"{platform.url}/hub/spawn/uma")
    assert form.status_code == 200
    for slug in ("gpu1", "gpu-all"):
        assert f'value="{slug}" disabled' in form.text
    assert form.text.count("(unavailable: this node has no GPU)") == 2
    xsrf = client.cookies.get("_xsrf", path="/hub/")
    refused = client.post(f"{platform.url}/hub/spawn/uma", data={"profile": "gpu1", "_xsrf": xsrf})
    assert refused.status_code == 409
    assert "needs 1 GPU and this node has no GPU. Choose" in refused.text  # the form again, with the sentence
    assert platform.api("GET", "/users/uma").json()["servers"] == {}
    (event,) = spawn_events(platform, "uma")  # one failed spawn, no "stop" of a server that never ran
    assert event["action"] == "spawn" and event["outcome"] == "failure"
    assert event["object"]["profile"] == "gpu1" and "no GPU" in event["details"]["reason"]


def test_a_server_that_cannot_start_is_a_sentence_to_its_user_and_a_failed_spawn_in_the_audit_log(platform):
    audit_events(platform, "oscar")  # the audit service is up
    home = platform.settings.local.home_root / "oscar"
    home.parent.mkdir(parents=True, exist_ok=True)
    home.write_text("a file where oscar's home folder should be\n")  # the spawner cannot make his server
    try:
        client = platform.browser()
        assert platform.login(client, "oscar").status_code == 200
        client.get(f"{platform.url}/hub/spawn/oscar")
        failed = client.post(f"{platform.url}/hub/spawn/oscar",
                             data={"profile": "cpu", "_xsrf": client.cookies.get("_xsrf", path="/hub/")})
        assert failed.status_code == 503
        assert "Your server could not start. Try again in a minute" in failed.text
        assert "Internal Server Error" not in failed.text
        (event,) = spawn_events(platform, "oscar")
        assert (event["action"], event["outcome"], event["object"]["profile"]) == ("spawn", "failure", "cpu")
        assert "Error" in event["details"]["reason"]
    finally:
        home.unlink()


def test_a_servers_activity_reports_are_not_admin_changes(platform):
    client = platform.browser()
    assert platform.login(client, "nina").status_code == 200
    platform.spawn(client, "nina")
    assert platform.server_status(client, "nina").status_code == 200
    token = platform.api("POST", "/users/nina/tokens", json={"scopes": ["users:activity!user=nina"]}).json()["token"]
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    report = httpx.post(f"{platform.url}/hub/api/users/nina/activity", headers={"Authorization": f"token {token}"},
                        json={"last_activity": now, "servers": {"": {"last_activity": now}}}, timeout=30)
    assert report.status_code == 200
    time.sleep(1.5)
    changes = [e for e in audit_events(platform, "nina") if e["action"] == "admin-change"]
    assert not [e for e in changes if "activity" in e["object"].get("target", "")], changes
    platform.api("DELETE", "/users/nina/server")
