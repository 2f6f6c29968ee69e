"""id_token verification against the real IdP's keys, and token refresh through the hub."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import TOKEN_TTL, Platform
from medhub.auth import IdTokenRejected, OIDCAuthenticator


@pytest.fixture(scope="module")
def authenticator(platform: Platform) -> OIDCAuthenticator:
    a = OIDCAuthenticator(
        issuer=platform.idp.issuer,
        client_id=platform.settings.oidc.client_id,
        client_secret=platform.settings.oidc.client_secret,
        id_token_leeway=0,
    )
    asyncio.run(a.discover())
    return a


def fresh_id_token(platform: Platform, username: str) -> tuple[str, dict]:
    platform.login(platform.browser(), username)
    state = platform.api("GET", f"/users/{username}").json()["auth_state"]
    return state["id_token"], state


def test_discovery_sets_the_endpoints(authenticator: OIDCAuthenticator, platform: Platform):
    issuer = platform.idp.issuer
    assert authenticator.authorize_url == issuer + "/auth"
    assert authenticator.token_url == issuer + "/token"
    assert authenticator.userdata_url == issuer + "/me"
    assert authenticator.logout_redirect_url.startswith(issuer + "/session/end?")


def test_a_genuine_id_token_verifies(authenticator: OIDCAuthenticator, platform: Platform):
    token, _ = fresh_id_token(platform, "carol")
    claims = authenticator.verify_id_token(token)
    assert claims["preferred_username"] == "carol"
    assert claims["groups"] == ["course-students"]
    assert jwt.get_unverified_header(token)["alg"] == "RS256"


def _tamper(token: str, **changes) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def test_forged_id_tokens_are_refused(authenticator: OIDCAuthenticator, platform: Platform):
    token, state = fresh_id_token(platform, "carol")
    claims = jwt.decode(token, options={"verify_signature": False})
    kid = jwt.get_unverified_header(token)["kid"]
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forgeries = {
        "payload edited": _tamper(token, groups=["course-instructors"]),
        "signed by another key": jwt.encode(claims, other_key, algorithm="RS256", headers={"kid": kid}),
        "alg none": jwt.encode(claims, None, algorithm="none"),
        "HS256 with the client secret": jwt.encode(claims, platform.settings.oidc.client_secret, algorithm="HS256"),
        "other audience": jwt.encode({**claims, "aud": "other-client"}, other_key, algorithm="RS256",
                                     headers={"kid": kid}),
    }
    for what, forged in forgeries.items():
        with pytest.raises(IdTokenRejected):
            authenticator.verify_id_token(forged)
        # the login path refuses it too, even with a genuine access token beside it
        token_info = {**state["token_response"], "id_token": forged}
        with pytest.raises(IdTokenRejected):
            asyncio.run(authenticator.token_to_user(token_info))
        print("refused:", what)


def test_expired_id_token_is_refused_and_the_hub_refreshes(authenticator: OIDCAuthenticator, platform: Platform):
    client = platform.browser()
    platform.login(client, "carol")
    before = platform.api("GET", "/users/carol").json()["auth_state"]
    time.sleep(TOKEN_TTL + 1)
    with pytest.raises(IdTokenRejected, match="expired"):
        authenticator.verify_id_token(before["id_token"])
    # carol's next request is past auth_refresh_age: the hub refreshes with her refresh token
    assert client.get(f"{platform.url}/hub/api/user").json()["name"] == "carol"
    after = platform.api("GET", "/users/carol").json()["auth_state"]
    assert after["access_token"] != before["access_token"]
    assert after["id_token"] != before["id_token"]
    assert authenticator.verify_id_token(after["id_token"])["sub"] == "carol"


def test_symmetric_algorithms_cannot_be_configured():
    from traitlets import TraitError

    with pytest.raises(TraitError, match="HS256 cannot be accepted"):
        OIDCAuthenticator(id_token_algorithms=["RS256", "HS256"])
    assert OIDCAuthenticator(id_token_algorithms=["ES256"]).id_token_algorithms == ["ES256"]
