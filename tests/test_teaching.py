"""Teaching: a course's instructor reaches the students' servers; students reach only what is
shared with them; course material and datasets. Real IdP, hub and servers on 127.0.0.1."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from medhub.errors import HubConfigError
from medhub.settings import load
from medlib.manifest import write_manifest
from test_settings import MINIMAL, write


def token_of(platform, name: str) -> str:
    """An API token of ``name``'s own (made by the admin observer; it carries the user's rights)."""
    response = platform.api("POST", f"/users/{name}/tokens", json={"note": "teaching test"})
    assert response.status_code == 201, response.text
    return response.json()["token"]


def as_(token: str, method: str, url: str, **kwargs) -> httpx.Response:
    return httpx.request(method, url, headers={"Authorization": f"token {token}"}, timeout=30, **kwargs)


def status_in(browser: httpx.Client, platform, owner: str) -> int:
    """What a logged-in browser gets for ``owner``'s server: opening JupyterLab goes through the
    server's OAuth with the hub (which resolves group-based access and shares), then the API."""
    lab = browser.get(f"{platform.url}/user/{owner}/lab")
    if lab.status_code == 200 and "/oauth2/authorize" in str(lab.url):  # another's server: confirm, as a person would
        fields = re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', lab.text)
        body = urlencode([(k, html.unescape(v)) for k, v in fields])
        lab = browser.post(str(lab.url), content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    return lab.status_code if lab.status_code != 200 else browser.get(f"{platform.url}/user/{owner}/api/status").status_code


def test_an_instructor_runs_the_class_and_shares_a_server(platform):
    browsers = {}
    for name in ("tina", "sara", "tom"):  # log in through the IdP: the hub learns their groups
        browsers[name] = platform.browser()
        assert platform.login(browsers[name], name).status_code == 200
    tina, tom = token_of(platform, "tina"), token_of(platform, "tom")
    api = f"{platform.url}/hub/api"

    # the instructor lists and starts a student's server, with the teaching profile, and opens it
    assert as_(tina, "GET", f"{api}/users/sara").status_code == 200
    assert as_(tina, "GET", f"{api}/users/alice").status_code in (403, 404)  # not a student of hers
    assert as_(tina, "POST", f"{api}/users/sara/server", json={"profile": "teaching"}).status_code in (201, 202)
    assert platform.wait_ready("sara")["user_options"] == {"profile": "teaching"}
    assert status_in(browsers["tina"], platform, "sara") == 200
    # the course material is in the student's server; the datasets are the course's only
    lab = browsers["tina"]
    material = lab.get(f"{platform.url}/user/sara/api/contents/courses/imaging-101")
    assert material.status_code == 200 and [f["name"] for f in material.json()["content"]] == ["lesson-1.ipynb"]
    datasets = lab.get(f"{platform.url}/user/sara/medlib/datasets").json()
    assert [d["id"] for d in datasets["datasets"]] == ["teaching-ct"]

    # a student does not reach another student's server, nor start or stop it
    assert status_in(browsers["tom"], platform, "sara") == 403
    assert as_(tom, "DELETE", f"{api}/users/sara/server").status_code in (403, 404)

    # the instructor shares her own server with the class: then a student reaches it (only that)
    assert as_(tina, "POST", f"{api}/users/tina/server", json={"profile": "teaching"}).status_code in (201, 202)
    platform.wait_ready("tina")
    assert status_in(browsers["tom"], platform, "tina") == 403
    share = subprocess.run([sys.executable, "-m", "medhub.cli", "share", "--group", "course-students",
                            "--hub", platform.url, "--token", tina], capture_output=True, text=True, timeout=60)
    assert share.returncode == 0 and "shared tina's server (default) with" in share.stdout, share.stderr
    # a browser that was turned away keeps the server's cookie of that refusal: the class opens
    # the shared link afresh (a new session)
    fresh = platform.browser()
    assert platform.login(fresh, "tom").status_code == 200
    assert status_in(fresh, platform, "tina") == 200
    assert as_(tom, "DELETE", f"{api}/users/tina/server").status_code in (403, 404)  # access only

    # and the instructor stops the student's server
    assert as_(tina, "DELETE", f"{api}/users/sara/server").status_code in (202, 204)
    for name in ("sara", "tina"):
        platform.api("DELETE", f"/users/{name}/server")


@pytest.mark.parametrize("course, message", [
    ({"name": "Imaging 101", "instructors": "t", "students": "s"}, "is not a slug"),
    ({"name": "c", "instructors": "t", "students": "t"}, "different group from instructors"),
    ({"name": "c", "instructors": "t", "students": "s", "datasets": ["nope"]}, "not in the dataset catalog"),
    ({"name": "c", "instructors": "t", "students": "s", "datasets": ["lung"]}, "does not grant 'lung' to 's'"),
    ({"name": "c", "instructors": "t", "students": "s", "profile": "gpu9"}, "'gpu9' is not a profile; choose one of"),
])
def test_course_errors_name_the_setting(tmp_path: Path, course: dict, message: str):
    (tmp_path / "lung").mkdir()
    write_manifest(tmp_path / "lung")
    (tmp_path / "datasets.toml").write_text(
        f'[[dataset]]\nid = "lung"\ntitle = "Lung CT"\nlocation = "{tmp_path / "lung"}"\ngroups = ["radiology-research"]\n'
        'modality = "CT"\nlicence = "CC0-1.0"\nsensitivity = "anonymized"\ncontact = "a@b.org"\n'
        'owners = ["radiology-research"]\n')
    data = {**MINIMAL, "hub": {"catalog": str(tmp_path / "datasets.toml")}, "course": [course]}
    with pytest.raises(HubConfigError, match=message):
        load(write(tmp_path, data))


def test_a_course_lets_its_groups_log_in_and_profiles_can_be_kept_to_groups(tmp_path: Path):
    data = {**MINIMAL, "course": [{"name": "c", "instructors": "teachers", "students": "pupils", "profile": "cpu"}],
            "profiles": [{"slug": "cpu", "display_name": "CPU"},
                         {"slug": "gpu1", "display_name": "GPU", "gpus": 1, "groups": ["radiology-research"]}]}
    settings = load(write(tmp_path, data))
    assert settings.allowed_groups == ("radiology-research", "teachers", "pupils")
    assert settings.profiles[1].groups == ("radiology-research",)
