"""Start-up checks of the OpenID Connect settings against the live issuer.

A misconfiguration (wrong issuer URL, a document naming another issuer, an unsupported
scope, client credentials the issuer rejects) stops ``medhub`` with a message naming the
setting. An issuer that does not answer at all is not a misconfiguration: the hub starts,
and its login page says the identity provider is unavailable until it answers.
"""

from __future__ import annotations

import base64
import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from .errors import HubConfigError
from .settings import Settings


@dataclass(frozen=True)
class IssuerStatus:
    reachable: bool
    detail: str


def _get_json(url: str, timeout: float) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def check_issuer(settings: Settings, timeout: float = 5.0) -> IssuerStatus:
    """Check the issuer and the client credentials.

    Returns:
        whether the issuer answered, and what was checked or why it could not be.

    Raises:
        HubConfigError: naming ``oidc.issuer``, ``oidc.scopes`` or ``oidc.client_id`` /
            ``oidc.client_secret``.
    """
    oidc = settings.oidc
    where = f"{settings.source}: oidc"
    url = oidc.issuer + "/.well-known/openid-configuration"
    try:
        doc = _get_json(url, timeout)
    except urllib.error.HTTPError as e:
        raise HubConfigError(
            f"{where}.issuer: {url} answered HTTP {e.code}; is {oidc.issuer!r} the issuer URL "
            "(the part before /.well-known/openid-configuration)?"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return IssuerStatus(False, f"{oidc.issuer} did not answer ({reason}); logins wait for it")
    except ValueError:
        raise HubConfigError(f"{where}.issuer: {url} did not return a JSON discovery document") from None

    if doc.get("issuer") != oidc.issuer:
        raise HubConfigError(
            f"{where}.issuer: the discovery document names issuer {doc.get('issuer')!r}; "
            f"set oidc.issuer to exactly that (it is {oidc.issuer!r})"
        )
    missing = [k for k in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri") if not doc.get(k)]
    if missing:
        raise HubConfigError(f"{where}.issuer: the discovery document lacks {', '.join(missing)}")
    supported = doc.get("scopes_supported")
    if supported:
        unsupported = [s for s in oidc.scopes if s not in supported]
        if unsupported:
            raise HubConfigError(
                f"{where}.scopes: the issuer does not support {', '.join(unsupported)} "
                f"(it supports {', '.join(supported)})"
            )
    _check_client(settings, doc["token_endpoint"], timeout)
    return IssuerStatus(True, f"{oidc.issuer} answered; client {oidc.client_id!r} accepted")


def _check_client(settings: Settings, token_endpoint: str, timeout: float) -> None:
    """Present the client credentials with a code that cannot exist.

    RFC 6749 §5.2: the token endpoint authenticates the client before it looks at the grant,
    so wrong credentials give ``invalid_client`` and right ones ``invalid_grant``.
    """
    oidc = settings.oidc
    body = urllib.parse.urlencode({
        "grant_type": "authorization_code",
        "code": "medhub-preflight-" + secrets.token_urlsafe(16),
        "redirect_uri": settings.callback_url,
        "client_id": oidc.client_id,
        "client_secret": oidc.client_secret,
        "code_verifier": base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode(),
    }).encode()
    request = urllib.request.Request(token_endpoint, data=body, method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as e:
        try:
            error = json.loads(e.read()).get("error")
        except ValueError:
            error = None
        if error == "invalid_client":
            raise HubConfigError(
                f"{settings.source}: oidc.client_id / oidc.client_secret: the issuer rejected the "
                f"credentials of client {oidc.client_id!r}; check both against the client registered "
                "at the identity provider"
            ) from None
    except (urllib.error.URLError, OSError):
        return
