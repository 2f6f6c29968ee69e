"""The login flow through the real IdP, group sync, spawning and logout."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import httpx

from conftest import Platform


def test_login_redirect_uses_pkce_and_oidc_scopes(platform: Platform):
    with httpx.Client() as client:
        r = client.get(f"{platform.url}/hub/oauth_login")
    assert r.status_code == 302
    location = urlparse(r.headers["location"])
    query = parse_qs(location.query)
    assert f"{location.scheme}://{location.netloc}" == platform.idp.issuer
    assert query["response_type"] == ["code"]
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["code_challenge"][0]) == 43
    assert set(query["scope"][0].split()) == {"openid", "profile", "email", "groups"}


def test_wrong_password_is_refused_by_the_idp(platform: Platform):
    client = platform.browser()
    r = platform.login(client, "alice", password="not-the-password")
    assert r.status_code == 401
    assert "Invalid username or password" in r.text
    assert client.get(f"{platform.url}/hub/api/user").status_code == 403


def test_allowed_user_logs_in_and_server_answers(platform: Platform):
    client = platform.browser()
    r = platform.login(client, "bob")
    assert r.status_code == 200
    assert urlparse(str(r.url)).path.startswith("/hub/spawn")
    assert 'name="profile"' in r.text and "gpu1" in r.text  # the profile form
    platform.spawn(client, "bob")
    status = platform.server_status(client, "bob")
    assert status.status_code == 200
    assert "started" in status.json()


def test_user_in_no_allowed_group_gets_403(platform: Platform):
    client = platform.browser()
    r = platform.login(client, "mallory")
    assert r.status_code == 403
    assert urlparse(str(r.url)).path == "/hub/oauth_callback"
    assert client.get(f"{platform.url}/hub/api/user").status_code == 403


def test_groups_and_admin_flag_come_from_the_claim(platform: Platform):
    platform.login(platform.browser(), "alice")
    platform.login(platform.browser(), "carol")
    alice = platform.api("GET", "/users/alice").json()
    carol = platform.api("GET", "/users/carol").json()
    assert sorted(alice["groups"]) == ["course-instructors", "radiology-research"]
    assert alice["admin"] is True
    assert carol["groups"] == ["course-students"]
    assert carol["admin"] is False
    group = platform.api("GET", "/groups/course-students").json()
    assert "carol" in group["users"]


def test_auth_state_is_kept_and_holds_a_refresh_token(platform: Platform):
    platform.login(platform.browser(), "carol")
    state = platform.api("GET", "/users/carol").json()["auth_state"]
    assert state["refresh_token"]
    assert state["oauth_user"]["groups"] == ["course-students"]
    # encrypted at rest: the token is nowhere in the database file in clear
    assert state["refresh_token"].encode() not in platform.settings.hub.state_dir.joinpath(
        "jupyterhub.sqlite").read_bytes()


def test_logout_clears_the_session_and_ends_the_idp_session(platform: Platform):
    client = platform.browser()
    platform.login(client, "carol")
    assert client.get(f"{platform.url}/hub/api/user").json()["name"] == "carol"
    r = client.get(f"{platform.url}/hub/logout", follow_redirects=False)
    assert r.status_code == 302
    end_session = urlparse(r.headers["location"])
    assert f"{end_session.scheme}://{end_session.netloc}" == platform.idp.issuer
    assert parse_qs(end_session.query)["post_logout_redirect_uri"] == [f"{platform.url}/hub/login"]
    assert client.get(f"{platform.url}/hub/api/user").status_code == 403
    # The IdP's end-session page asks for confirmation; confirming returns to the hub's login
    page = client.get(r.headers["location"])
    assert "logoutForm" in page.text
    # Logging in again needs the password again: the IdP session is gone after confirmation
    import re

    action = re.search(r'action="([^"]+)"', page.text).group(1)
    xsrf = re.search(r'name="xsrf" value="([^"]+)"', page.text).group(1)
    done = client.post(httpx.URL(str(page.url)).join(action), data={"xsrf": xsrf, "logout": "yes"})
    assert urlparse(str(done.url)).path == "/hub/login"
    again = client.get(f"{platform.url}/hub/oauth_login")
    assert 'name="password"' in again.text
