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
from medhub.access.rules import AccessError, check_until, parse_until
from medhub.access.store import AccessStore
from medhub.batch.client import BatchError
from medhub.catalog import Dataset
from medhub.grants import GrantSigner
from medlib.contract import time_left

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
                                             r"cohort-ct, research-ct, teaching-ct, trial-ct"),
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


def deliver(root: Path, work: Path, patient: str, *, anonymize: bool) -> str:
    """A version of ``root`` as the ingest service publishes an anonymized delivery from site-a:
    a synthetic CT series, de-identified with a site key (or, a mis-delivery, not)."""
    from medlib import versions
    from medlib.manifest import sha256
    from medlib.synthetic import write_ct_series

    raw, out = work / f"raw-{patient}", work / f"out-{patient}"
    write_ct_series(raw, shape=(3, 8, 8), patient_id=patient)
    if anonymize:
        key = work / "site.key"
        if not key.exists():
            subprocess.run([sys.executable, "-m", "medlib.cli", "anonymize", "keygen", str(key)], check=True)
        done = subprocess.run([sys.executable, "-m", "medlib.cli", "anonymize", "run", str(raw), str(out),
                               "--key-file", str(key)], capture_output=True, text=True, cwd=work)  # its report there
        assert done.returncode == 0, done.stderr
    else:
        out = raw
    files = {f"series/{p.name}": (p, sha256(p)) for p in sorted(out.rglob("*.dcm"))}
    return versions.publish(root, files, {"site": "site-a", "policy": "anonymized", "harvest": patient})


def test_an_owner_deletes_a_version_leaving_a_tombstone_and_publishes_a_de_identified_one(platform, people, browsers,
                                                                                        tmp_path: Path):
    from medlib import versions

    root = platform.root / "datasets" / "trial-ct"
    good, bad = deliver(root, tmp_path, "TRIAL-1", anonymize=True), deliver(root, tmp_path, "TRIAL-2", anonymize=False)
    assert platform.login(browsers.setdefault("tara", platform.browser()), "tara").status_code == 200
    token = platform.api("POST", "/users/tara/tokens", json={"note": "access test"}).json()["token"]
    tara, rita = AccessClient(platform.url, token), people["rita"]
    platform.spawn(browsers["tara"], "tara")
    assert view(platform, "tara") == ["cohort-ct", "trial-ct"]

    with pytest.raises(BatchError, match="you do not own 'trial-ct'"):
        rita.delete("trial-ct", bad, "not hers")
    with pytest.raises(BatchError, match=r"finding\(s\) in \d+ DICOM file\(s\) of trial-ct v000002 \(medlib anonymize "
                                         r"check\): series/.*; nothing was published"):
        tara.publish("trial-ct", bad, "trial-ct-open", "Trial CT, de-identified", ["trial-readers"])
    with pytest.raises(BatchError, match="reason: say why"):
        tara.delete("trial-ct", bad, "")

    stone = tara.delete("trial-ct", bad, "delivered without de-identification")
    taken = wait_stopped(platform, "tara")  # her server mounted trial-ct
    print(f"\ntara's server stopped {taken:.1f} s after the deletion")
    assert taken < STOP_BOUND
    assert versions.versions(root) == [good] and not list(root.glob(f"*{bad}*/**/*.dcm"))
    with pytest.raises(versions.VersionNotFound, match=f"version {bad} was deleted at .* by tara: delivered without "
                                                       "de-identification"):
        versions.resolve(root, bad)
    # the tombstone verifies in the audit chain: the chained record at its seq says the same
    on_disk = json.loads((root / f"{bad}.deleted.json").read_text())
    assert on_disk == stone
    record = next(e for e in events(platform, "tara", "trial-ct") if e["seq"] == stone["audit_seq"])
    assert record["action"] == "dataset-delete" and record["object"] == {"dataset": "trial-ct", "version": bad}
    assert {k: v for k, v in record["details"].items() if k != "authority"} == \
        {k: v for k, v in stone.items() if k != "audit_seq"}
    verify = subprocess.run([sys.executable, "-m", "medhub.cli", "audit", "verify", "-s", str(platform.settings.source)],
                            capture_output=True, text=True)
    assert verify.returncode == 0 and "chain intact" in verify.stdout, verify.stdout + verify.stderr

    with pytest.raises(BatchError, match="owners: no such group: nobody-here"):
        tara.publish("trial-ct", good, "trial-ct-open", "Trial CT, de-identified", ["trial-readers"],
                     owners=["nobody-here"])
    published = tara.publish("trial-ct", good, "trial-ct-open", "Trial CT, de-identified", ["trial-readers"])
    assert (published["sensitivity"], published["groups"], published["derived_from"]["version"]) == \
        ("anonymized", ["trial-readers"], good)
    assert published["owners"] == ["trial-stewards"]  # the source's, unless the publisher names others
    with pytest.raises(BatchError, match="must be a new dataset id"):
        tara.publish("trial-ct", good, "trial-ct-open", "again", everyone=True)
    platform.api("DELETE", "/users/rita/server")
    wait_stopped(platform, "rita")
    platform.spawn(browsers["rita"], "rita")  # one of its readers: the derivative is hers at her next start
    assert "trial-ct-open" in view(platform, "rita") and "trial-ct" not in view(platform, "rita")
    copy = platform.settings.hub.state_dir / "published" / "trial-ct-open"
    assert json.loads((copy / "current" / "provenance.json").read_text())["derived_from"] == published["derived_from"]
    assert any(e["action"] == "dataset-publish" and e["object"]["published_as"] == "trial-ct-open"
               for e in events(platform, "tara", "trial-ct"))
    platform.api("DELETE", "/users/rita/server")


def test_a_grant_of_one_version_mounts_that_version_alone(platform, people, browsers, tmp_path: Path):
    from medlib import versions

    root = platform.root / "datasets" / "trial-ct"
    newer = deliver(root, tmp_path, "TRIAL-3", anonymize=True)
    first = versions.versions(root)[0]
    tara = AccessClient(platform.url, platform.api("POST", "/users/tara/tokens", json={"note": "versions"})
                        .json()["token"])
    with pytest.raises(BatchError, match=f"versions: trial-ct has no v000009; it has {first}, {newer}"):
        tara.grant("rick", "trial-ct", "reader study", "EC-2026-050", day(5), versions=["v000009"])
    grant = tara.grant("rick", "trial-ct", "reader study", "EC-2026-050", day(5), versions=[first])
    assert grant["versions"] == [first]
    platform.spawn(browsers["rick"], "rick")
    mounted = platform.settings.hub.state_dir / "views" / "rick" / "trial-ct"
    assert sorted(p.name for p in mounted.iterdir()) == [first]  # not the newer one, nor `current`
    assert versions.resolve(mounted) == mounted / first  # what medlib opens by default there
    tara.revoke(grant["id"], "the reader study is over")
    wait_stopped(platform, "rick")


def test_an_output_leaves_only_when_an_owner_of_every_dataset_behind_it_approves(platform, people, browsers):
    """kim's server mounts trial-ct (owned by tara's group) and cohort-ct (olga's): downloads are
    off there; his outputs are flagged, held until both approve, and then his to download."""
    olga, tina, rita = people["olga"], people["tina"], people["rita"]
    for name in ("kim", "tara"):
        if name not in browsers:
            browsers[name] = platform.browser()
            assert platform.login(browsers[name], name).status_code == 200
    kim, tara = (AccessClient(platform.url, platform.api("POST", f"/users/{name}/tokens", json={"note": "exports"})
                              .json()["token"]) for name in ("kim", "tara"))
    platform.spawn(browsers["kim"], "kim")
    assert view(platform, "kim") == ["cohort-ct", "trial-ct"]
    home = platform.settings.local.home_root / "kim"
    (home / "counts.csv").write_text("patient,site,n\nCOHORT-7,a,3\nother,b,120\n")
    (home / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    lab = browsers["kim"].get(f"{platform.url}/user/kim/lab")
    assert lab.status_code == 200 and "@jupyterlab/docmanager-extension:download" in lab.text  # disabled there
    raw = browsers["kim"].get(f"{platform.url}/user/kim/files/counts.csv")
    assert raw.status_code == 403 and "Downloads are off on this server" in raw.text

    with pytest.raises(BatchError, match="is outside your home"):
        kim.export(platform.root / "medhub.toml", "the settings", home=home)
    climbing = httpx.post(f"{platform.url}/services/medhub-access/exports", headers=kim.headers, content=b"x",
                          params={"name": "../../access.sqlite", "justification": "overwrite the store"}, timeout=30)
    assert climbing.status_code == 400 and "not a plain file name" in climbing.json()["message"]
    with pytest.raises(BatchError, match="justification: say what the output is"):
        kim.export(home / "counts.csv", " ", home=home)
    table = kim.export(home / "counts.csv", "counts per site for the paper", home=home)
    assert table["state"] == "pending" and [r["dataset"] for r in table["reviews"]] == ["cohort-ct", "trial-ct"]
    assert table["kind"] == "table" and "identifiers of cohort-ct: PatientID" in table["flags"]
    assert "small cells: n: 1 count(s) below 10" in table["flags"]
    figure = kim.export(home / "figure.png", "figure 2", home=home)
    assert figure["kind"] == "image" and figure["flags"] == []

    preview = httpx.get(f"{platform.url}/services/medhub-access/exports/{table['id']}/preview",
                        headers=olga.headers, timeout=30)
    assert preview.status_code == 200 and "<td>COHORT-7</td>" in preview.text
    with pytest.raises(BatchError, match=f"no export {table['id']} of yours or held back by a dataset you own"):
        tina.review(table["id"], "approve")
    assert [e["id"] for e in tara.exports(owner=True)] == [table["id"], figure["id"]]
    held = tara.review(table["id"], "approve", "aggregate counts are fine for trial-ct")
    assert held["state"] == "pending"  # approved for trial-ct, still waiting for cohort-ct's owners
    with pytest.raises(BatchError, match="HTTP 409: export .* is pending: only an approved one is downloaded"):
        kim.download(table["id"])
    with pytest.raises(BatchError, match="you decide for none of the datasets that still hold it back"):
        tara.review(table["id"], "approve")
    done = olga.review(table["id"], "approve")
    assert done["state"] == "approved" and done["download_until"]
    assert kim.download(table["id"]) == (home / "counts.csv").read_bytes()
    with pytest.raises(BatchError, match="no export .* of yours"):
        olga.download(table["id"])  # a reviewer does not take it out
    with pytest.raises(BatchError, match="reason: say why"):
        olga.review(figure["id"], "refuse")
    assert olga.review(figure["id"], "refuse", "the image shows a face")["state"] == "refused"
    with pytest.raises(BatchError, match="is refused: only an approved one is downloaded"):
        kim.download(figure["id"])

    rita_home = platform.settings.local.home_root / "rita"  # her servers read anonymized data only
    rita_home.mkdir(parents=True, exist_ok=True)
    (rita_home / "result.txt").write_text("AUC 0.91\n")
    free = rita.export(rita_home / "result.txt", "the headline number", home=rita_home)
    assert free["state"] == "approved" and free["reviews"] == []
    assert rita.download(free["id"]) == b"AUC 0.91\n"

    actions = [(e["action"], e["outcome"]) for e in events(platform, "kim", "cohort-ct")
               if e["object"].get("export") in (table["id"], figure["id"])]
    assert actions == [("export-request", "success"), ("export-request", "success"), ("export-review", "success"),
                       ("export-review", "denied")]
    downloads = [e for e in events(platform, "kim", "") if e["action"] == "export-download"]
    assert [e["object"]["export"] for e in downloads] == [table["id"]]
    platform.api("DELETE", "/users/kim/server")


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
    assert [time_left(end, now) for end in ("2027-03-01T09:30:00.000000Z", "2027-03-01T20:10:00.000000Z",
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
    store.mounted("rita", "", {"lung-ct": soon["id"], "head-ct": later["id"], "open-ct": None})
    assert store.mounting("open-ct") == [("rita", "")] and store.ever_mounted("rita") == ["head-ct", "lung-ct", "open-ct"]
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
    assert store.ended_mounts(later_on) == [] and store.mounting("open-ct") == []
    assert store.ever_mounted("rita") == ["head-ct", "lung-ct", "open-ct"]  # her home may hold what they gave


def test_a_grant_of_some_versions_is_mounted_as_those_alone(tmp_path: Path):
    from medhub import grants

    (tmp_path / "trial" / "v000001").mkdir(parents=True)
    (tmp_path / "trial" / "v000002").mkdir()
    trial = Dataset(id="trial-ct", title="T", location=str(tmp_path / "trial"), groups=("g",),
                    sensitivity="pseudonymized", licence="CC0-1.0", owners=("s",), versioned=True)
    assert grants.docker_volumes([trial], {"trial-ct": ["v000001"]}) == {
        str(tmp_path / "trial" / "v000001"): {"bind": "/datasets/trial-ct/v000001", "mode": "ro"}}
    view = grants.local_view(tmp_path / "views" / "rick", [trial], {"trial-ct": ["v000002"]})
    assert [p.name for p in (view / "trial-ct").iterdir()] == ["v000002"]
    assert (view / "trial-ct" / "v000002").resolve() == tmp_path / "trial" / "v000002"


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


def test_the_export_checks_flag_dicom_identifiers_and_small_cells():
    from medhub.access.exports import inspect, preview
    from medlib.anonymize.residual import Identifiers

    found = {"cohort-ct": Identifiers((("PatientID", "COHORT-7"), ("PatientName part", "DOE")))}
    table = inspect("t.csv", b"who,n,mean\nCohort-7,4,1.5\nx,0,2.5\ny,40,3.0\n", found, 10)
    assert table.kind == "table" and table.flags == ("small cells: n: 1 count(s) below 10",
                                                     "identifiers of cohort-ct: PatientID")
    assert inspect("notes.txt", b"Mrs Doelittle, 44", found, 10).flags == ()  # whole words only
    assert inspect("notes.txt", b"seen: doe", found, 10).flags == ("identifiers of cohort-ct: PatientName part",)
    dicom = inspect("x.bin", bytes(128) + b"DICM" + bytes(16), {}, 10)
    assert dicom.kind == "dicom" and dicom.flags[0].startswith("a DICOM file")
    kind, body = preview("t.csv", b"a,b\n<script>,2\n")
    assert kind.startswith("text/html") and b"&lt;script&gt;" in body and b"<script>" not in body


@pytest.mark.browser
def test_the_jupyterlab_panel_lists_my_datasets_with_their_time_left_and_opens_one(platform, people, browsers):
    from playwright.sync_api import expect, sync_playwright

    from test_browser import CHROMIUM, CHROMIUM_ARGS, sign_in

    people["olga"].grant("rick", "research-ct", "segmentation study, second phase", "EC-2026-020", day(10))
    people["rick"].request("cohort-ct", "external validation", "EC-2026-020", day(20))
    platform.spawn(browsers["rick"], "rick")
    home = platform.settings.local.home_root / "rick"
    notebook = "panel.ipynb"  # the medlib kernel named: JupyterLab asks nothing on opening it
    (home / notebook).write_text(json.dumps({"cells": [], "metadata": {"kernelspec": {
        "name": "medlib", "display_name": "Python 3 (medlib)", "language": "python"}}, "nbformat": 4,
        "nbformat_minor": 5}))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{platform.url}/user/rick/lab/tree/{notebook}")
            sign_in(page, platform, "rick")
            page.wait_for_url(f"{platform.url}/user/rick/lab/**", timeout=60_000)
            page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
            page.get_by_title("medhub: my datasets, requests, jobs and exports").click()
            datasets = page.locator("#medhub-datasets")
            row = datasets.locator("li", has_text="research-ct")
            expect(row).to_contain_text("personal grant: 10 days left")
            expect(datasets.locator("li", has_text="teaching-ct")).to_contain_text("your group's grant")
            expect(page.locator("#medhub-requests")).to_contain_text("cohort-ct: pending")
            expect(page.locator("#medhub-jobs")).to_contain_text("none")
            expect(page.locator("#medhub-exports")).to_be_visible()
            row.get_by_role("button", name="Open in notebook").click()
            expect(page.locator(".jp-Notebook .jp-Cell").last).to_contain_text('medlib.datasets.open("research-ct")')
        finally:
            browser.close()
    platform.api("DELETE", "/users/rick/server")


def test_medlib_refuses_a_version_its_grant_does_not_cover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import medlib.datasets as mds

    (tmp_path / "trial-ct" / "v000001").mkdir(parents=True)
    catalog = [Dataset(id="trial-ct", title="Trial CT", location=str(tmp_path / "trial-ct"), groups=("g",),
                       sensitivity="pseudonymized", licence="CC0-1.0", owners=("stewards",), versioned=True)]
    signer = GrantSigner(tmp_path / "key.pem")
    monkeypatch.setenv("MEDHUB_GRANTS_KEY", signer.public_key)
    monkeypatch.setenv("MEDHUB_AUDIT_BUFFER", str(tmp_path / "audit.jsonl"))
    monkeypatch.delenv("MEDHUB_AUDIT_URL", raising=False)
    grant = {"id": "0123456789ab", "purpose": "reader study", "approval": "EC-1", "approver": "tara",
             "expires": "2099-01-01T00:00:00.000000Z", "versions": ["v000001"]}
    monkeypatch.setenv("MEDHUB_GRANTS", signer.manifest("rick", ["g2"], catalog, catalog, str(tmp_path),
                                                        {"trial-ct": grant}))
    assert mds.local_root("trial-ct") == tmp_path / "trial-ct" / "v000001"  # the newest it may read
    with pytest.raises(PermissionError, match="your grant of 'trial-ct' covers v000001 only, not v000002"):
        mds.local_root("trial-ct", version="v000002")
