"""OpenID Connect login for the hub.

:class:`OIDCAuthenticator` is oauthenticator's ``GenericOAuthenticator`` configured from an
issuer URL alone: endpoints come from the issuer's discovery document, fetched when first
needed (so the hub starts even while the identity provider is down). On top of the generic
OAuth 2 flow (authorization code with PKCE, encrypted and refreshed ``auth_state``) it
verifies the id_token (RS256 signature against the issuer's JWKS, ``iss``, ``aud``, ``exp``),
ends the identity provider's session at logout, and tells users on the login page when the
identity provider cannot be reached. Hub usernames are the claim's value as the issuer gives it
(``sub`` by default): no case folding, so two accounts that differ only by case stay two users.
Each refresh of a user's tokens checks the allowed groups again: a user the identity provider
has removed from all of them loses the session and their servers.
"""

from __future__ import annotations

import contextvars
import json
import time
from typing import Any
from urllib.parse import urlencode

import jwt
from jupyterhub.utils import url_path_join
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthLoginHandler, OAuthLogoutHandler
from tornado import web
from tornado.escape import xhtml_escape
from tornado.httputil import url_concat
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Float, Integer, List, TraitError, Unicode, default, validate

from .audit import hooks as audit_hooks
from .errors import IdentityProviderUnavailable


#: Set when check_allowed has already recorded why this login was refused.
_denial_recorded: contextvars.ContextVar[bool] = contextvars.ContextVar("medhub_denial_recorded", default=False)


class IdTokenRejected(HTTPClientError):
    """The id_token failed verification.

    A subclass of tornado's ``HTTPClientError`` with code 401, so that oauthenticator's
    ``refresh_user`` treats an expired id_token like an expired access token and uses the
    refresh token.
    """

    def __init__(self, reason: str):
        super().__init__(401, f"id_token rejected: {reason}")
        self.reason = reason


class OIDCLoginHandler(OAuthLoginHandler):
    """Redirects to the issuer, or back to the login page (which then says why) when it is down."""

    async def get(self):
        try:
            await self.authenticator.discover(force=True)
        except IdentityProviderUnavailable as e:
            self.log.warning("Login not possible: %s", e)
            self.redirect(url_concat(url_path_join(self.hub.base_url, "login"), {"idp": "unavailable"}))
            return
        super().get()


class OIDCLogoutHandler(OAuthLogoutHandler):
    """Clears the hub session, then ends the identity provider's session where it offers one."""

    async def handle_logout(self):
        await super().handle_logout()
        if self.current_user is not None:  # still set here; cleared before the page renders
            audit_hooks.record("logout", self.current_user)

    async def render_logout_page(self):
        try:
            await self.authenticator.discover()
        except IdentityProviderUnavailable:
            pass  # the hub session is gone; the IdP's ends when it expires
        await super().render_logout_page()


class OIDCAuthenticator(GenericOAuthenticator):
    """Log in through any OpenID Connect issuer, configured by its URL."""

    login_handler = OIDCLoginHandler
    logout_handler = OIDCLogoutHandler
    # Where a deployment without a settings file (Kubernetes) passes the secret.
    client_secret_env = "MEDHUB_OIDC_CLIENT_SECRET"

    issuer = Unicode(
        config=True,
        help="""The OpenID Connect issuer URL, e.g. https://login.example.org/realms/research.

        The authorization, token, userinfo, JWKS and end-session endpoints are read from
        ``{issuer}/.well-known/openid-configuration``; the document's ``issuer`` must equal
        this value exactly.""",
    )
    discovery_timeout = Float(
        5.0,
        config=True,
        help="Seconds to wait for the issuer's discovery document and JWKS before calling it unavailable.",
    )
    discovery_max_age = Integer(
        300,
        config=True,
        help="Seconds a fetched discovery document and JWKS are reused before being fetched again.",
    )
    id_token_leeway = Integer(
        30,
        config=True,
        help="Seconds of clock skew tolerated when checking the id_token's exp and iat.",
    )
    id_token_algorithms = List(
        Unicode(),
        ["RS256"],
        config=True,
        help="Signature algorithms accepted for id_tokens. Symmetric algorithms are never accepted.",
    )
    @validate("id_token_algorithms")
    def _asymmetric_only(self, proposal):
        refused = [a for a in proposal.value if a.lower() == "none" or a.upper().startswith("HS")]
        if refused:
            raise TraitError(f"id_token_algorithms: {', '.join(refused)} cannot be accepted; use RS*, PS* or ES*")
        return proposal.value

    post_logout_redirect_url = Unicode(
        "",
        config=True,
        help="""Where the issuer sends the browser after ending its session at logout (must be
        registered with the client). Empty: the hub's login page, from oauth_callback_url.""",
    )

    @default("login_service")
    def _login_service_default(self):
        return "your institution"

    @default("scope")
    def _scope_default(self):
        return ["openid", "profile", "email", "groups"]

    @default("manage_groups")
    def _manage_groups_default(self):
        return True

    @default("enable_auth_state")
    def _enable_auth_state_default(self):
        return True

    @default("auth_state_groups_key")
    def _auth_state_groups_key_default(self):
        return f"{self.user_auth_state_key}.groups"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._discovery: dict[str, Any] | None = None
        self._jwks: jwt.PyJWKSet | None = None
        self._fetched_at = 0.0
        self._last_error: str | None = None

    # -- discovery -------------------------------------------------------------------------

    async def _fetch_json(self, url: str) -> dict[str, Any]:
        client = AsyncHTTPClient()
        request = HTTPRequest(
            url,
            connect_timeout=self.discovery_timeout,
            request_timeout=self.discovery_timeout,
            validate_cert=self.validate_server_cert,
            headers={"Accept": "application/json"},
        )
        try:
            response = await client.fetch(request)
        except (OSError, HTTPClientError) as e:
            raise IdentityProviderUnavailable(f"{url}: {e}") from e
        return json.loads(response.body)

    async def discover(self, force: bool = False, refresh_keys: bool = False) -> dict[str, Any]:
        """Fetch (or reuse) the issuer's discovery document and JWKS, and set the endpoints.

        Args:
            force: fetch the discovery document again even if the cached one is fresh; used
                on each login so that a user is told at once when the issuer is down.
            refresh_keys: fetch the JWKS again too (the issuer may have rotated its keys).

        Raises:
            IdentityProviderUnavailable: the issuer did not answer (or answered nonsense).
        """
        fresh = time.monotonic() - self._fetched_at < self.discovery_max_age
        if self._discovery is not None and fresh and not force and not refresh_keys:
            return self._discovery
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            doc = await self._fetch_json(url)
            if doc.get("issuer") != self.issuer:
                raise IdentityProviderUnavailable(
                    f"{url} names issuer {doc.get('issuer')!r}, not the configured {self.issuer!r}"
                )
            known_uri = (self._discovery or {}).get("jwks_uri")
            if self._jwks is None or not fresh or refresh_keys or doc.get("jwks_uri") != known_uri:
                self._jwks = jwt.PyJWKSet.from_dict(await self._fetch_json(doc["jwks_uri"]))
        except IdentityProviderUnavailable as e:
            self._last_error = str(e)
            raise
        except (KeyError, ValueError, jwt.PyJWKSetError) as e:
            self._last_error = f"{url}: invalid discovery document or JWKS ({e})"
            raise IdentityProviderUnavailable(self._last_error) from e
        self._apply_discovery(doc)
        self._discovery, self._fetched_at, self._last_error = doc, time.monotonic(), None
        return doc

    def _apply_discovery(self, doc: dict[str, Any]) -> None:
        self.authorize_url = doc["authorization_endpoint"]
        self.token_url = doc["token_endpoint"]
        self.userdata_url = doc["userinfo_endpoint"]
        end_session = doc.get("end_session_endpoint")
        if end_session:
            after = self.post_logout_redirect_url or self.oauth_callback_url.replace(
                "/oauth_callback", "/login"
            )
            query = urlencode({"client_id": self.client_id, "post_logout_redirect_uri": after})
            self.logout_redirect_url = f"{end_session}?{query}"

    # -- login page ------------------------------------------------------------------------

    def unavailable_html(self, base_url: str) -> str:
        login = self.login_url(base_url)
        return (
            '<div class="alert alert-danger" id="idp-unavailable" role="alert">'
            f"The identity provider ({xhtml_escape(self.issuer)}) is unavailable, "
            "so nobody can sign in right now. Servers that are running keep running. "
            "Try again in a few minutes; if it persists, tell your administrator.</div>"
            f'<a class="btn btn-jupyter btn-lg" href="{login}">Try again</a>'
        )

    def get_custom_html(self, base_url: str) -> str:
        if self._last_error:
            return self.unavailable_html(base_url)
        return super().get_custom_html(base_url)

    # -- tokens ----------------------------------------------------------------------------

    def _knows_key_of(self, token: str) -> bool:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            return True  # malformed: let verify_id_token say so
        return self._jwks is not None and any(kid is None or k.key_id == kid for k in self._jwks.keys)

    def verify_id_token(self, id_token: str) -> dict[str, Any]:
        """Verify an id_token from the issuer and return its claims.

        Checks the signature against the issuer's JWKS, the algorithm, ``iss``, ``aud``
        (this client), ``exp`` and ``iat``.

        Raises:
            IdTokenRejected: naming what failed.
        """
        if self._jwks is None:
            raise IdTokenRejected("the issuer's signing keys are not known yet")
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError as e:
            raise IdTokenRejected(f"malformed ({e})") from e
        if header.get("alg") not in self.id_token_algorithms:
            raise IdTokenRejected(f"algorithm {header.get('alg')!r} is not accepted")
        kid = header.get("kid")
        keys = [k for k in self._jwks.keys if kid is None or k.key_id == kid]
        if not keys:
            raise IdTokenRejected(f"signed with unknown key id {kid!r}")
        try:
            return jwt.decode(
                id_token,
                key=keys[0].key,
                algorithms=list(self.id_token_algorithms),
                audience=self.client_id,
                issuer=self.issuer,
                leeway=self.id_token_leeway,
                options={"require": ["iss", "aud", "exp", "iat", "sub"]},
            )
        except jwt.PyJWTError as e:
            raise IdTokenRejected(str(e)) from e

    async def token_to_user(self, token_info: dict[str, Any]) -> dict[str, Any]:
        """The user's claims: the verified id_token merged with the userinfo response."""
        await self.discover()
        id_token = token_info.get("id_token")
        if not id_token:
            raise IdTokenRejected("the token response has no id_token; is 'openid' in oidc.scopes?")
        if not self._knows_key_of(id_token):
            await self.discover(refresh_keys=True)
        claims = self.verify_id_token(id_token)
        userinfo = await super().token_to_user(token_info)
        if userinfo.get("sub") != claims["sub"]:
            raise IdTokenRejected("userinfo 'sub' differs from the id_token's")
        return {**claims, **userinfo}

    async def get_token_info(self, handler, params):
        """The token response, stamped with ``expires_at`` (epoch seconds) from ``expires_in``.
        The endpoints are discovered first: after a hub restart, a refresh can be the first call
        to the issuer (it used to fail with an empty token URL, refusing every API token)."""
        await self.discover()
        token_info = await super().get_token_info(handler, params)
        if "expires_in" in token_info:
            token_info["expires_at"] = time.time() + float(token_info["expires_in"])
        return token_info

    def normalize_username(self, username: str) -> str:
        """The claim's value unchanged (JupyterHub's default lower-cases it, which would make
        ``Alice`` and ``alice`` one hub user); ``username_map`` still applies."""
        return self.username_map.get(username, username)

    async def refresh_user(self, user, handler=None, **kwargs):
        """Refresh auth_state; use the refresh token as soon as the access token nears expiry.

        oauthenticator only refreshes once the issuer rejects the old access token, which
        issuers that tolerate clock skew do late. Here an access token that expires within
        ``auth_refresh_age`` seconds is replaced straight away.

        Returns False (log in again) when the issuer refuses the tokens, and when it no longer
        puts the user in an allowed group (their servers are stopped first). When the issuer does
        not answer (timeout, 5xx), the current auth is kept until the next refresh: an
        identity provider outage must not stop logged-in users from working.
        """
        try:
            refreshed = await self._refresh(user, handler, **kwargs)
        except (IdentityProviderUnavailable, OSError) as e:
            transient = e
        except HTTPClientError as e:
            if e.code < 500:
                raise
            transient = e
        else:
            if isinstance(refreshed, dict) and not await GenericOAuthenticator.check_allowed(self, user.name, refreshed):
                await self._revoke_access(user, handler, refreshed)
                return False
            return refreshed
        self.log.warning("Could not refresh %s's tokens, keeping them for now: %s", user.name, transient)
        return True

    async def _revoke_access(self, user, handler, auth_model: dict[str, Any]) -> None:
        """The identity provider no longer puts ``user`` in an allowed group: stop their servers
        (the hub then asks them to log in, which it refuses)."""
        groups = sorted(auth_model.get("groups") or [])
        self.log.warning("%s is in no allowed group any more (%s): stopping their servers", user.name, groups)
        audit_hooks.record("logout", {"user": user.name, "groups": groups},
                           reason="removed from every allowed group at the identity provider")
        for name, spawner in list(user.spawners.items()):
            if spawner.active:
                if handler is not None:
                    await handler.stop_single_user(user, name)
                else:
                    await user.stop(name)

    async def _refresh(self, user, handler=None, **kwargs):
        state = await user.get_auth_state() if self.enable_auth_state else None
        expires_at = ((state or {}).get("token_response") or {}).get("expires_at")
        if state and state.get("refresh_token") and expires_at and expires_at - time.time() < self.auth_refresh_age:
            params = self.build_refresh_token_request_params(state["refresh_token"])
            try:
                token_info = await self.get_token_info(handler, params)
            except (web.HTTPError, HTTPClientError) as e:
                if isinstance(e, HTTPClientError) and e.code >= 500:
                    raise  # the issuer is in trouble: refresh_user keeps the current auth
                self.log.info("Refreshing %s's tokens was refused (%s): login required", user.name, e)
                return False
            token_info.setdefault("refresh_token", state["refresh_token"])
            return await self._token_to_auth_model(token_info)
        return await super().refresh_user(user, handler, **kwargs)

    async def get_authenticated_user(self, handler, data):
        """JupyterHub's login sequence unchanged, with its outcome in the audit log."""
        _denial_recorded.set(False)
        try:
            authenticated = await super().get_authenticated_user(handler, data)
        except web.HTTPError as e:
            audit_hooks.record("login-failed", None, outcome="failure", reason=e.log_message or str(e))
            raise
        if authenticated is None:
            if not _denial_recorded.get():
                audit_hooks.record("login-failed", None, outcome="denied", reason="authentication failed")
        else:
            groups = authenticated.get("groups") or []
            audit_hooks.record("login", {"user": authenticated["name"], "groups": sorted(groups)},
                               admin=bool(authenticated.get("admin")))
        return authenticated

    async def check_allowed(self, username, auth_model):
        allowed = await super().check_allowed(username, auth_model)
        if not allowed:
            groups = sorted((auth_model or {}).get("groups") or [])
            audit_hooks.record("login-failed", {"user": username, "groups": groups}, outcome="denied",
                               reason="not in an allowed group")
            _denial_recorded.set(True)
        return allowed

    async def authenticate(self, handler, data=None, **kwargs):
        try:
            await self.discover()
            return await super().authenticate(handler, data, **kwargs)
        except IdTokenRejected as e:
            self.log.warning("Login refused: %s", e)
            raise web.HTTPError(403, f"Login refused: {e.reason}") from None
        except IdentityProviderUnavailable as e:
            self.log.warning("Login failed: %s", e)
            raise web.HTTPError(503, "The identity provider is unavailable; try again later.") from None
