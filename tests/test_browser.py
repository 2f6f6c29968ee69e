"""A real Chromium, driven by Playwright, logs in through the IdP's page and sees JupyterLab."""

from __future__ import annotations

import shutil

import pytest

from conftest import Platform

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def sign_in(page, platform: Platform, username: str) -> None:
    """On the hub's login page: to the identity provider's own page, its form, consent, back."""
    page.get_by_role("button", name="Sign in with").click()
    page.wait_for_url(f"{platform.idp.issuer}/interaction/**")
    page.fill("#username", username)
    page.fill("#password", platform.accounts[username].password)
    page.click("#sign-in")
    if page.locator("#authorize").count():
        page.click("#authorize")


@pytest.mark.browser
def test_browser_logs_in_through_the_idp_and_jupyterlab_loads(platform: Platform, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{platform.url}/hub/login")
            sign_in(page, platform, "erin")
            # back at the hub: the profile form
            page.wait_for_url(f"{platform.url}/hub/spawn**")
            page.check("#profile-cpu")
            page.click("#spawn_form button[type=submit]")
            page.wait_for_url(f"{platform.url}/user/erin/lab**", timeout=90_000)
            expect(page.locator(".jp-Launcher")).to_be_visible(timeout=90_000)
            expect(page.locator("#jupyterlab-splash")).to_have_count(0)
            expect(page.locator(".jp-DirListing")).to_be_visible()
            page.screenshot(path=str(tmp_path / "jupyterlab.png"))
        finally:
            browser.close()
