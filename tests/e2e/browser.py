"""Debian's Chromium through Playwright, for the end-to-end tests."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

from django.db import connection

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
MISSING = f"{CHROMIUM} is missing (make test installs Debian's chromium)"


@contextmanager
def chromium():
    """Debian's Chromium, headless. Playwright's sync API runs an event loop in this
    thread while open, and Django refuses ORM calls beside one: query before or after."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page, username: str, password: str) -> None:
    """Fill in the sign-in form the page is on (or was redirected to)."""
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def off_loop(fn) -> None:
    """Run ORM work in another thread: Playwright's loop in this one makes Django refuse it."""
    errors: list[BaseException] = []

    def run():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if errors:
        raise errors[0]
