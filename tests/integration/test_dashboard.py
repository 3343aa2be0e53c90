"""The dashboard in Debian's chromium (Playwright): sign in with a token, see the demo bot
running, restart it from the bot page (with the confirmation), watch a new log line arrive
live and the restart count rise; the same pages at phone width (375 px) without sideways
scrolling. Screenshots go to $CLAWPEN_ARTIFACTS (or the test's tmp folder)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_fixtures import Api, start_api
from helpers import DaemonCli

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.browser]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def api(daemon: DaemonCli) -> Iterator[Api]:
    yield start_api(daemon)


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CLAWPEN_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sign_in(browser: object, api: Api, width: int, height: int) -> tuple[object, list[str]]:
    page = browser.new_page(viewport={"width": width, "height": height})  # type: ignore[attr-defined]
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(api.url + "/")
    page.fill("#token", "cpt_00000000_forged")
    page.click("#signin button")
    page.wait_for_selector("text=That token is not valid.")
    problems.clear()  # the refused sign-in logs its 401 in the console
    page.fill("#token", api.tokens["operator"])
    page.click("#signin button")
    page.wait_for_selector('tr[data-bot="demo"] .state >> text=running', timeout=15_000)
    return page, problems


def tick_ones(page: object) -> int:
    texts = page.locator("#log .line").all_inner_texts()  # type: ignore[attr-defined]
    return sum(1 for t in texts if re.search(r" tick 1$", t))


def test_sign_in_see_the_bot_restart_it_and_watch_it_live(browser: object, api: Api, artifacts: Path) -> None:
    from playwright.sync_api import expect

    page, problems = sign_in(browser, api, 1280, 900)
    row = page.locator('tr[data-bot="demo"]')  # type: ignore[attr-defined]
    expect(row.locator(".state")).to_have_text("running")
    before = int(row.locator(".restarts").inner_text())
    page.click('a[href="#/bot/demo"]')  # type: ignore[attr-defined]
    expect(page.locator("#state")).to_have_text("running")  # type: ignore[attr-defined]
    expect(page.locator("#log .line").nth(4)).to_be_attached()  # type: ignore[attr-defined]
    assert tick_ones(page) == 1  # the first line the bot wrote, from the tail
    pid = page.locator("#facts dd").nth(2).inner_text()  # type: ignore[attr-defined]

    page.click("#act-restart")  # type: ignore[attr-defined]
    expect(page.locator("#confirm")).to_be_visible()  # type: ignore[attr-defined]
    expect(page.locator("#confirm-text")).to_have_text("Restart demo?")  # type: ignore[attr-defined]
    page.click("#confirm-ok")  # type: ignore[attr-defined]
    # the restarted bot writes "tick 1" again, and it arrives through the live stream
    first_lines = page.locator("#log .line", has_text=re.compile(r" tick 1$"))  # type: ignore[attr-defined]
    expect(first_lines).to_have_count(2, timeout=15_000)
    expect(page.locator("#events")).to_contain_text("running → stopping")  # type: ignore[attr-defined]
    expect(page.locator("#state")).to_have_text("running", timeout=15_000)  # type: ignore[attr-defined]
    expect(page.locator("#facts dd").nth(2)).not_to_have_text(pid)  # type: ignore[attr-defined]
    page.screenshot(path=str(artifacts / "dashboard-bot.png"), full_page=True)  # type: ignore[attr-defined]

    for where, marker, text in (
        ("#/topology", "svg.topo", "demo"),
        ("#/releases", "#releases", "create demo"),
        ("#/alerts", "#alerts", ""),
    ):
        page.goto(f"{api.url}/{where}")  # type: ignore[attr-defined]
        expect(page.locator(marker)).to_contain_text(text)  # type: ignore[attr-defined]
    page.goto(f"{api.url}/#/")  # type: ignore[attr-defined]
    page.screenshot(path=str(artifacts / "dashboard-overview.png"), full_page=True)  # type: ignore[attr-defined]
    assert not problems, problems  # no script error, no blocked (CSP) resource

    # the restart count rises (Issue 7)
    expect(page.locator('tr[data-bot="demo"] .restarts')).to_have_text(  # type: ignore[attr-defined]
        str(before + 1), timeout=10_000
    )


def test_phone_width(browser: object, api: Api, artifacts: Path) -> None:
    page, problems = sign_in(browser, api, 375, 740)
    for where, marker in (
        ("#/", 'tr[data-bot="demo"]'),
        ("#/bot/demo", "#log .line"),
        ("#/topology", "svg.topo"),
    ):
        page.goto(f"{api.url}/{where}")  # type: ignore[attr-defined]
        page.wait_for_selector(marker)  # type: ignore[attr-defined]
        overflow = page.evaluate(  # type: ignore[attr-defined]
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{where} scrolls sideways by {overflow} px at 375 px"
        if where == "#/bot/demo":
            assert page.locator("#act-restart").is_visible()  # type: ignore[attr-defined]
        name = where.strip("#/").replace("/", "-") or "overview"
        shot = artifacts / f"dashboard-375-{name}.png"
        page.screenshot(path=str(shot), full_page=True)  # type: ignore[attr-defined]
    assert not problems, problems
