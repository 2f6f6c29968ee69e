"""What a browser does on the hub's and the development IdP's pages, scripted: for tests,
benchmarks and smoke checks of a running demo."""

from __future__ import annotations

import html
import re
from urllib.parse import urljoin

import httpx

LOGIN_FORM = re.compile(r'action="(/interaction/[\w-]+/login)"')
CONSENT_FORM = re.compile(r'action="(/interaction/[\w-]+/confirm)"')
SPAWN_FORM = re.compile(r'id="spawn_form"\s+action="([^"]+)"')


def scripted_login(client: httpx.Client, hub_url: str, username: str, password: str) -> httpx.Response:
    """Log in to the hub at ``hub_url`` through the development IdP.

    Follows the hub's redirect to the IdP's login form, posts it, authorizes the hub on the
    consent page (first login only) and follows the callback. ``client`` must follow
    redirects; it keeps the cookies, as a browser would.

    Returns:
        the hub's last response: 200 on its spawn or home page, 403 for a user in no
        allowed group, or the IdP's 401 page for a wrong password.
    """
    r = client.get(f"{hub_url}/hub/oauth_login")
    match = LOGIN_FORM.search(r.text)
    if not match:
        raise RuntimeError(f"no login form of the development IdP at {r.url} (HTTP {r.status_code})")
    r = client.post(urljoin(str(r.url), match.group(1)), data={"username": username, "password": password})
    consent = CONSENT_FORM.search(r.text)
    if consent:
        r = client.post(urljoin(str(r.url), consent.group(1)))
    return r


def submit_spawn_form(client: httpx.Client, hub_url: str, username: str, profile: str) -> bool:
    """Start ``username``'s server by posting the hub's spawn form with ``profile``.

    Returns False if the hub showed no form (no options to choose: it spawns on the GET).
    """
    form = client.get(f"{hub_url}/hub/spawn/{username}")
    action = SPAWN_FORM.search(form.text)
    if not action:
        return False
    client.post(urljoin(str(form.url), html.unescape(action.group(1))), data={"profile": profile},
                follow_redirects=False)
    return True
