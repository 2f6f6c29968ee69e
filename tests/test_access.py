"""Data owners in charge: requests with a purpose, an approval reference and an end; owners'
decisions; grants that end on time, with the servers that mount them stopped. Real IdP, hub,
proxy, access service and servers on 127.0.0.1 (the platform's ``access.enforce_seconds`` is 1);
the rules and medlib's side also without them."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import once_answering
from medhub.access.client import AccessClient
from medhub.access.pages import days_left
from medhub.access.rules import AccessError, check_until, parse_until
from medhub.access.store import AccessStore
from medhub.batch.client import BatchError
from medhub.catalog import Dataset
from medhub.grants import GrantSigner

STOP_BOUND = 20.0  # seconds from a grant's end to its server gone: enforce_seconds (1) + the hub's stop


def utc(seconds_ahead: float) -> str:
    return dt.datetime.fromtimestamp(time.time() + seconds_ahead, dt.timezone.utc).isoformat()


def day(days_ahead: int) -> str:
    return (dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=days_ahead)).isoformat()


def service_up(platform) -> None:
    """Wait for the proxy's route to the access service (the hub adds it once the service runs)."""
    def answers() -> None:
        response = httpx.get(f"{platform.url}/services/medhub-access/requests", timeout=10)
        assert response.status_code == 403, response.status_code  # the service's own "send a token"
    once_answering(answers)


@pytest.fixture(scope="module")
def browsers(platform) -> dict[str, httpx.Client]:
    """The people of these tests, each logged in once in a browser of their own."""
    found = {}
    for name in ("rita", "rick", "olga", "adam", "tina"):
        found[name] = platform.browser()
        assert platform.login(found[name], name).status_code == 200
    return found


@pytest.fixture(scope="module")
def people(platform, browsers) -> dict[str, AccessClient]:
    """The same people's access clients, each with a token of their own."""
    clients = {}
    for name in browsers:
        token = platform.api("POST", f"/users/{name}/tokens", json={"note": "access test"}).json()["token"]
        clients[name] = AccessClient(platform.url, token)
    service_up(platform)
    return clients


def cli(platform, client: AccessClient, *args: str) -> subprocess.CompletedProcess:
    token = client.headers["Authorization"].split()[1]
    return subprocess.run([sys.executable, "-m", "medhub.cli", "access", *args, "--hub", platform.url, "--token", token],
                          capture_output=True, text=True, timeout=120)


def events(platform, user: str, dataset: str) -> list[dict]:
    response = httpx.get(f"{platform.url}/services/medhub-audit/events", params={"user": user, "dataset": dataset},
                         headers={"Authorization": f"token {platform.observer_token}"}, timeout=30)
    return response.json()["events"]


def view(platform, user: str) -> list[str]:
    """What the local spawner's view of ``user``'s datasets holds now."""
    return sorted(p.name for p in (platform.settings.hub.state_dir / "views" / user).iterdir())


def wait_stopped(platform, user: str, timeout: float = 60) -> float:
    """Seconds until ``user``'s default server is gone."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if "" not in platform.api("GET", f"/users/{user}").json()["servers"]:
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"{user}'s server still runs after {timeout} s:\n{platform.hub.log_tail()}")


def test_a_request_approved_by_an_owner_is_mounted_until_it_ends_then_its_server_stops(platform, people, browsers):
    rita, olga, tina = people["rita"], people["olga"], people["tina"]
    asked = cli(platform, rita, "request", "research-ct", "--purpose", "nodule volumetry", "--approval", "EC-2026-017",
                "--until", day(30))
    assert asked.returncode == 0, asked.stderr
    (request,) = [r for r in rita.requests() if r["dataset"] == "research-ct"]
    assert request["state"] == "pending" and request["purpose"] == "nodule volumetry"
    assert request in olga.requests(owner=True, states=("pending",))

    with pytest.raises(BatchError, match="you do not own 'research-ct': its owners are the members of "
                                         "radiology-research"):
        tina.decide(request["id"], "approve")  # an owner of teaching-ct only
    assert request not in tina.requests(owner=True)
    with pytest.raises(BatchError, match="may shorten a request, never extend it"):
        olga.decide(request["id"], "approve", until=day(60))
    grant = olga.decide(request["id"], "approve", until=utc(40), reason="for the pilot only")
    assert (grant["user"], grant["dataset"], grant["approver"], grant["approval"]) == \
        ("rita", "research-ct", "olga", "EC-2026-017")
    assert rita.requests()[-1]["state"] == "approved" and rita.requests()[-1]["reason"] == "for the pilot only"
    listed = cli(platform, rita, "grants")
    assert listed.returncode == 0 and f"{grant['id']}\tunder 1 h\trita\tresearch-ct" in listed.stdout

    platform.spawn(browsers["rita"], "rita")
    assert view(platform, "rita") == ["research-ct", "teaching-ct"]  # her group's, and the grant's

    ends = parse_until(grant["expires"])
    assert ends > time.time(), "the spawn took longer than the grant; give it more time"
    time.sleep(max(0.0, ends - time.time()))
    taken = wait_stopped(platform, "rita")
    print(f"\nrita's server stopped {taken:.1f} s after her grant expired")
    assert taken < STOP_BOUND

    platform.spawn(browsers["rita"], "rita")  # the next spawn: her group's only
    assert view(platform, "rita") == ["teaching-ct"]
    actions = [(e["action"], e["actor"]["user"]) for e in events(platform, "rita", "research-ct")]
    for expected in [("access-request", "rita"), ("access-approve", "olga"), ("dataset-mount", "rita"),
                     ("grant-expire", "medhub-access"), ("grant-enforce", "medhub-access")]:
        assert expected in actions, (expected, actions)
    mount = next(e for e in events(platform, "rita", "research-ct") if e["action"] == "dataset-mount")
    assert mount["details"]["grant"] == grant["id"]
    platform.api("DELETE", "/users/rita/server")


def test_an_admin_approves_any_request_but_not_their_own_and_a_revoked_grant_stops_its_server(platform, people,
                                                                                              browsers):
    rick, olga, adam, tina = people["rick"], people["olga"], people["adam"], people["tina"]
    mine = adam.request("research-ct", "teaching material", "none needed: synthetic", day(5))
    with pytest.raises(BatchError, match="you asked for 'research-ct' yourself: another of its owners"):
        adam.decide(mine["id"], "approve")
    assert adam.decide(mine["id"], "withdraw")["state"] == "withdrawn"

    request = rick.request("research-ct", "segmentation study", "EC-2026-020", day(10))
    grant = adam.decide(request["id"], "approve")  # a platform admin, no owner of it
    approval = next(e for e in events(platform, "rick", "research-ct") if e["action"] == "access-approve")
    assert approval["actor"]["user"] == "adam" and approval["details"]["authority"] == "platform-admin"

    platform.spawn(browsers["rick"], "rick")
    assert "research-ct" in view(platform, "rick")
    with pytest.raises(BatchError, match="you do not own 'research-ct'"):
        tina.revoke(grant["id"], "not yours to end")
    with pytest.raises(BatchError, match="reason: say why"):
        olga.revoke(grant["id"], "")
    revoked = olga.revoke(grant["id"], "the study's approval was withdrawn")
    assert revoked["state"] == "revoked"
    taken = wait_stopped(platform, "rick")
    print(f"\nrick's server stopped {taken:.1f} s after his grant was revoked")
    assert taken < STOP_BOUND
    (listed,) = [g for g in rick.grants() if g["id"] == grant["id"]]
    assert listed["revoke_reason"] == "the study's approval was withdrawn" and listed["revoked_by"] == "olga"
    actions = [e["action"] for e in events(platform, "rick", "research-ct")]
    assert {"access-request", "access-approve", "dataset-mount", "grant-revoke", "grant-enforce"} <= set(actions)


def test_bad_requests_and_decisions_are_refused_saying_what_to_do(platform, people):
    rita, olga = people["rita"], people["olga"]
    cases = [
        (("no-such-ct", "p", "EC-1", day(3)), r"HTTP 404: no dataset 'no-such-ct' in the catalog \(there are: "
                                             r"research-ct, teaching-ct\)"),
        (("teaching-ct", "p", "EC-1", day(3)), "you may read 'teaching-ct' already, as a member of course-students"),
        (("research-ct", "p", "EC-1", "2020-01-01"), "until: the end lies in the past"),
        (("research-ct", "p", "EC-1", day(400)), "at most 365 days at a time .* ask until "),
        (("research-ct", "p", "EC-1", "next spring"), "is not a date"),
        (("research-ct", "", "EC-1", day(3)), "purpose: say what the data is for"),
        (("research-ct", "p", " ", day(3)), "approval: name the ethics approval"),
    ]
    for args, message in cases:
        with pytest.raises(BatchError, match=message):
            rita.request(*args)
    with pytest.raises(BatchError, match="you may read 'research-ct' already"):
        olga.request("research-ct", "p", "EC-1", day(3))
    request = rita.request("research-ct", "radiomics", "EC-2026-031", day(3))
    with pytest.raises(BatchError, match="pending request for 'research-ct'"):
        rita.request("research-ct", "radiomics", "EC-2026-031", day(3))
    with pytest.raises(BatchError, match="reason: say why"):
        olga.decide(request["id"], "refuse")
    refused = olga.decide(request["id"], "refuse", reason="use the anonymized cohort instead")
    assert refused["state"] == "refused"
    with pytest.raises(BatchError, match="is refused already"):
        olga.decide(request["id"], "approve")
    with pytest.raises(BatchError, match="HTTP 404: user: no hub user 'nobody'"):
        olga.grant("nobody", "research-ct", "p", "EC-1", day(3))
    with pytest.raises(BatchError, match="you may not grant yourself"):
        people["adam"].grant("adam", "research-ct", "p", "EC-1", day(3))
    assert any(e["action"] == "access-refuse" and e["outcome"] == "denied" for e in events(platform, "rita", "research-ct"))


@pytest.mark.browser
def test_a_user_asks_on_the_access_page_and_an_owner_approves_there(platform):
    from playwright.sync_api import expect, sync_playwright

    from test_browser import CHROMIUM, CHROMIUM_ARGS, sign_in

    page_url = f"{platform.url}/services/medhub-access/"
    service_up(platform)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pia = browser.new_context().new_page()
            pia.goto(page_url)
            sign_in(pia, platform, "pia")
            pia.wait_for_url(page_url + "**")
            expect(pia.locator("#user")).to_have_text("pia")
            pia.select_option("select[name=dataset]", "research-ct")
            pia.fill("#purpose", "reader study")
            pia.fill("#approval", "EC-2026-044")
            pia.fill("#until", day(400))  # beyond the owners' maximum: refused, and said why
            pia.click("#ask button")
            expect(pia.get_by_role("alert")).to_contain_text("at most 365 days")
            pia.fill("#purpose", "reader study")
            pia.fill("#approval", "EC-2026-044")
            pia.fill("#until", day(14))
            pia.click("#ask button")
            expect(pia.locator("#my-requests")).to_contain_text("pending")

            olga = browser.new_context().new_page()
            olga.goto(page_url)
            sign_in(olga, platform, "olga")
            olga.wait_for_url(page_url + "**")
            row = olga.locator("#to-decide tr", has_text="pia")
            expect(row).to_contain_text("EC-2026-044")
            row.locator("button[data-action=approve]").click()
            expect(olga.locator("#owned-grants")).to_contain_text("pia")

            pia.reload()
            expect(pia.locator("#my-requests")).to_contain_text("approved")
            expect(pia.locator("#my-grants")).to_contain_text("14 days")
            expect(pia.locator("#my-grants")).to_contain_text("active")
        finally:
            browser.close()


# --- the rules, the store and medlib's side, without a hub ----------------------------------------------

def test_an_end_is_a_date_to_its_end_or_a_moment_and_within_the_datasets_maximum(tmp_path: Path):
    now = dt.datetime(2027, 3, 1, 9, tzinfo=dt.timezone.utc).timestamp()
    assert [days_left(end, now) for end in ("2027-03-01T09:30:00.000000Z", "2027-03-01T20:10:00.000000Z",
                                             "2027-03-02T09:00:00.000000Z", "2027-03-16T00:00:00.000000Z",
                                             "2027-03-01T08:59:00.000000Z")] == [
        "under 1 h", "12 h", "1 day", "14 days", "ended"]
    assert parse_until("2027-03-31") == dt.datetime(2027, 4, 1, tzinfo=dt.timezone.utc).timestamp()
    assert parse_until("2027-03-31T12:00Z") == parse_until("2027-03-31T14:00+02:00") == \
        parse_until("2027-03-31T12:00") == dt.datetime(2027, 3, 31, 12, tzinfo=dt.timezone.utc).timestamp()
    dataset = Dataset(id="lung-ct", title="L", location=str(tmp_path), groups=("g",), sensitivity="anonymized",
                      licence="CC0-1.0", owners=("stewards",), max_grant_days=30)
    now = time.time()
    assert check_until(now + 29 * 86400, dataset, now) == now + 29 * 86400
    with pytest.raises(AccessError, match="at most 30 days at a time"):
        check_until(now + 31 * 86400, dataset, now)
    with pytest.raises(AccessError, match="lies in the past"):
        check_until(now - 1, dataset, now)


def test_a_grant_ends_by_expiry_or_revocation_and_its_servers_are_found(tmp_path: Path):
    store = AccessStore(tmp_path / "access.sqlite")
    soon = store.add_grant("rita", "lung-ct", "p", "EC-1", "olga", time.time() + 60)
    later = store.add_grant("rita", "head-ct", "p", "EC-2", "olga", time.time() + 3600)
    store.mounted("rita", "", [soon["id"], later["id"]])
    assert [g["id"] for g in store.active("rita")] == [soon["id"], later["id"]]
    assert store.ended_mounts() == [] and store.newly_expired() == []
    later_on = time.time() + 120
    assert [g["id"] for g in store.active("rita", later_on)] == [later["id"]]
    assert [m["grant"]["id"] for m in store.ended_mounts(later_on)] == [soon["id"]]
    assert [g["id"] for g in store.newly_expired(later_on)] == [soon["id"]]
    assert store.newly_expired(later_on) == []  # recorded once
    store.revoke(later["id"], "olga", "withdrawn")
    assert {m["grant"]["id"] for m in store.ended_mounts()} == {later["id"]}
    assert store.grant(later["id"])["state"] == "revoked"
    store.unmounted("rita", "")
    assert store.ended_mounts(later_on) == []


def test_medlib_refuses_an_expired_grant_at_once_naming_its_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import medlib.datasets as mds

    (tmp_path / "lung-ct").mkdir()
    catalog = [Dataset(id="lung-ct", title="Lung CT", location=str(tmp_path / "lung-ct"), groups=("g",),
                       sensitivity="pseudonymized", licence="CC0-1.0", owners=("stewards",))]
    signer = GrantSigner(tmp_path / "key.pem")
    monkeypatch.setenv("MEDHUB_GRANTS_KEY", signer.public_key)
    monkeypatch.setenv("MEDHUB_AUDIT_BUFFER", str(tmp_path / "audit.jsonl"))  # no service here
    monkeypatch.delenv("MEDHUB_AUDIT_URL", raising=False)
    grant = {"id": "0123456789ab", "purpose": "nodule volumetry", "approval": "EC-1", "approver": "olga"}
    for expires, readable in ((time.time() + 60, True), (time.time() - 1, False)):
        ends = dt.datetime.fromtimestamp(expires, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        monkeypatch.setenv("MEDHUB_GRANTS", signer.manifest("rita", ["g2"], catalog, catalog, str(tmp_path),
                                                            {"lung-ct": {**grant, "expires": ends}}))
        assert mds.list()[0]["expires"] == ends
        if readable:
            assert mds.local_root("lung-ct") == tmp_path / "lung-ct"
        else:
            with pytest.raises(PermissionError, match=f"your grant of 'lung-ct' \\(for nodule volumetry, approved by "
                                                      f"olga\\) ended at {ends} UTC; ask its owners again: medhub "
                                                      "access request lung-ct"):
                mds.local_root("lung-ct")
    denied = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])
    assert (denied["action"], denied["outcome"], denied["details"]["grant"]) == ("dataset-open", "denied", grant["id"])
