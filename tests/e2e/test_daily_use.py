"""Daily use in a real browser (issue 17): keyboard focus survives live updates, pages fit a
phone, destructive actions ask in a styled dialog, pictures are where people look.

Pools and VMs are factory rows; the pages and their wiring are under test, not vSphere.
Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import re
import threading
from datetime import datetime, timedelta

import pytest
from django.db import connection

from apps.pools.models import VMState
from tests import factories
from tests.e2e.browser import ARTIFACTS, CHROMIUM, MISSING, chromium, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason=MISSING)]

# Polls are every 3 s; a loaded 2-core machine may take a few of them to answer.
POLL_WAIT_MS = 30_000


def _off_loop(fn) -> None:
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


@pytest.fixture
def pool(transactional_db):
    pool = factories.pool(name="debian-12", size=3, description="Debian 12, 2 vCPU, 4 GB")
    for i in range(1, 3):
        factories.vm(pool, state=VMState.READY, ip_address=f"10.20.0.{10 + i}",
                     hostname=f"debian-12-{i}.lab.example", ready_at=datetime.now().astimezone() - timedelta(minutes=i))
    return pool


def _count_swaps(page) -> None:
    page.evaluate("window.__swaps = 0; document.addEventListener('htmx:afterSettle', () => window.__swaps++)")


def _wait_for_swaps(page, n: int) -> None:
    page.wait_for_function(f"window.__swaps >= {n}", timeout=POLL_WAIT_MS)


def test_keyboard_focus_on_check_out_survives_two_polls_that_change_the_counts(live_server, pool, engineer):
    from playwright.sync_api import expect

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(POLL_WAIT_MS)
        page.goto(f"{live_server.url}/")
        sign_in(page, "bob-engineer", "pw-engineer")
        row = page.locator("#pool-rows tr", has_text="debian-12")
        expect(row.get_by_role("button", name="Check out")).to_be_visible()

        for _ in range(40):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.textContent.trim()") == "Check out":
                break
        else:
            pytest.fail("Tab never reached the Check out button")

        _count_swaps(page)
        # A VM becomes ready between the polls, so the rows really change under the focus.
        _off_loop(lambda: factories.vm(pool, state=VMState.READY, ip_address="10.20.0.13"))
        _wait_for_swaps(page, 2)
        expect(row.locator("td").nth(3)).to_have_text("3")
        focused = page.evaluate(
            "[document.activeElement.textContent.trim(), !!document.activeElement.closest('#pool-rows')]")
        assert focused == ["Check out", True]
        page.keyboard.press("Enter")
        expect(page).to_have_url(re.compile(r"/leases/\d+/$"))
