"""A real Chromium, driven by Playwright, walks a new user's first hour: medhub's login page, the
IdP's own page, the spawn form (GPU profiles unavailable on this GPU-less machine), JupyterLab
opening on the welcome notebook with one kernel and no news prompt, and the NiiVue viewer
showing the value under the cursor. Screenshots go to the test's temporary folder; the checks
are on the page, not on pixels."""

from __future__ import annotations

import re
import shutil

import pytest

from conftest import Platform
from medhub.gpus import node_devices
from medlib.contract import NOTEBOOKS_FOLDER, WELCOME_NOTEBOOK

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
def test_a_new_users_first_hour_in_a_real_browser(platform: Platform, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{platform.url}/hub/login")
            # medhub's look: the platform, the institution and its identity provider, named
            expect(page).to_have_title("medhub · Example University Hospital")
            expect(page.locator("#medhub-intro h1")).to_have_text("medhub at Example University Hospital")
            expect(page.locator("#medhub-intro")).to_contain_text("radiomics")
            expect(page.locator("#medhub-idp")).to_contain_text("the hospital's identity provider")
            expect(page.locator("#medhub-idp")).to_be_in_viewport()
            expect(page.locator("#medhub-logo")).to_have_text(re.compile("medhub\\s+Example University Hospital"))
            expect(page.locator("#jupyterhub-logo")).to_have_count(0)
            expect(page.get_by_role("button", name="Sign in with the hospital's identity provider")).to_be_visible()
            page.screenshot(path=str(tmp_path / "1-login.png"))
            sign_in(page, platform, "erin")

            page.wait_for_url(f"{platform.url}/hub/spawn**")
            if not node_devices():  # this machine has no GPU: the form says so
                for slug in ("gpu1", "gpu-all"):
                    expect(page.locator(f"#profile-{slug}")).to_be_disabled()
                expect(page.locator("#spawn_form")).to_contain_text("(unavailable: this node has no GPU)")
            expect(page.locator("#profile-cpu")).to_be_checked()
            page.screenshot(path=str(tmp_path / "2-spawn-form.png"))
            page.click("#spawn_form button[type=submit]")

            # a first start opens JupyterLab on the welcome notebook
            page.wait_for_url(f"{platform.url}/user/erin/lab**", timeout=90_000)
            expect(page.locator(".jp-NotebookPanel")).to_be_visible(timeout=90_000)
            expect(page.locator(".lm-TabBar-tab.jp-mod-current")).to_contain_text(WELCOME_NOTEBOOK)
            assert f"/lab/tree/{NOTEBOOKS_FOLDER}/{WELCOME_NOTEBOOK}" in page.url
            expect(page.locator(".jp-Notebook")).to_contain_text("Welcome to medhub")
            expect(page.locator(".jp-DirListing")).to_contain_text("5-batch-job.ipynb")  # the other notebooks

            # one kernel, the medlib one, in the launcher; no question about Jupyter's news
            page.get_by_role("menuitem", name="File").click()
            page.get_by_role("menuitem", name="New Launcher").click()
            cards = page.locator(".jp-Launcher-section:has(.jp-Launcher-sectionTitle:text-is('Notebook')) .jp-LauncherCard")
            expect(cards).to_have_count(1)
            expect(cards.first).to_have_attribute("title", re.compile("Python 3 \\(medlib\\)"))
            page.screenshot(path=str(tmp_path / "3-launcher.png"))
            assert page.get_by_text("official Jupyter news").count() == 0
            page.locator(".lm-TabBar-tab", has_text=WELCOME_NOTEBOOK).click()

            # run the tour: the viewer shows the series; a click reads the HU value under it
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            canvas = page.locator(".jp-OutputArea-output canvas").first
            expect(canvas).to_be_visible(timeout=120_000)
            cell = canvas.locator("xpath=ancestor::div[contains(@class, 'jp-OutputArea-output')][1]")
            box, room = canvas.bounding_box(), cell.bounding_box()
            assert box["width"] <= room["width"] + 1 and box["height"] <= 430  # the viewer fits the cell
            canvas.scroll_into_view_if_needed()
            page.wait_for_timeout(1000)  # NiiVue draws once its volume has arrived
            box = canvas.bounding_box()
            # a click on a view of the series (where they are depends on its shape: try a few places)
            value = page.locator(".medlib-value").first
            for fx, fy in ((0.45, 0.3), (0.5, 0.3), (0.4, 0.3), (0.45, 0.7), (0.55, 0.7), (0.5, 0.5)):
                page.mouse.click(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
                page.wait_for_timeout(500)
                if value.count():
                    break
            expect(value).to_contain_text(re.compile(r"-?\d+(\.\d+)? HU"), timeout=30_000)
            page.screenshot(path=str(tmp_path / "4-viewer.png"), full_page=True)
            assert page.get_by_text("official Jupyter news").count() == 0

            # the hub's home: what medhub is, and the way to the datasets and batch jobs
            page.goto(f"{platform.url}/hub/home")
            expect(page.locator("#medhub-intro")).to_be_visible()
            links = page.locator("#medhub-links a")
            expect(links).to_have_text(["My datasets", "Batch jobs", "Data access", "Deliveries"])
            assert links.first.get_attribute("href") == f"/hub/user-redirect/lab/tree/{NOTEBOOKS_FOLDER}/{WELCOME_NOTEBOOK}"
            page.screenshot(path=str(tmp_path / "5-home.png"))
        finally:
            browser.close()
