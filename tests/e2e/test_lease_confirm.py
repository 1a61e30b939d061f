"""The lease page's destructive VM actions ask first (issue 17): revert to a snapshot, power
off and reset open the styled confirm dialog; Cancel sends nothing, confirming queues the task.

The lease and its snapshot are rows; what is under test is the page, its dialog and the
request it sends (the task itself is run against the simulator in tests/leases).
"""

from __future__ import annotations

import pytest

from apps.leases.models import VMTask
from apps.pools.models import VMState
from tests import factories
from tests.e2e.browser import ARTIFACTS, CHROMIUM, MISSING, chromium, off_loop, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason=MISSING)]

SNAPSHOT = "5e1f0c2a9b7d4e3f8a6c1d2b3e4f5a6b"


@pytest.fixture
def lease(transactional_db, redis_conn, engineer):
    from django.utils import timezone

    from apps.leases import services as leases

    pool = factories.pool(name="debian-12", size=1)
    factories.vm(pool, state=VMState.READY, moid="vm-4242", ip_address="10.20.0.11")
    [lease] = leases.checkout(user=engineer, pools=[pool])
    VMTask.objects.create(lease=lease, kind=VMTask.Kind.SNAPSHOT, snapshot=SNAPSHOT, status=VMTask.Status.DONE,
                          finished_at=timezone.now())
    return lease


def _asked(lease_id: int) -> list[tuple[str, str]]:
    """The tasks asked for besides the snapshot the fixture took, oldest first."""
    rows: list[tuple[str, str]] = []
    off_loop(lambda: rows.extend(VMTask.objects.filter(lease_id=lease_id).exclude(kind=VMTask.Kind.SNAPSHOT)
                                 .order_by("pk").values_list("kind", "snapshot")))
    return rows


def test_revert_power_off_and_reset_ask_first_cancel_sends_nothing_and_confirm_queues_the_task(live_server, lease):
    from playwright.sync_api import expect

    vm = lease.vm.name
    actions = [  # the button, the question, what is queued once confirmed, what the page then says
        ("Revert", f"Revert {vm} to snapshot {SNAPSHOT[:12]}", ("revert", SNAPSHOT), f"Reverting {vm}"),
        ("Power off", f"Power off {vm}? It is switched off at once", ("power_off", ""), f"{vm}: power off asked"),
        ("Reset", f"Reset {vm}? It restarts at once, without shutting down.", ("reset", ""), f"{vm}: reset asked"),
    ]
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(30_000)
        page.on("dialog", lambda d: pytest.fail(f"a native browser dialog opened: {d.message}"))
        page.goto(f"{live_server.url}/leases/{lease.pk}/")
        sign_in(page, "bob-engineer", "pw-engineer")
        dialog = page.locator("dialog#confirm-dialog")
        queued: list[tuple[str, str]] = []
        for label, question, task, said in actions:
            button = page.locator("#vm-tasks-card").get_by_role("button", name=label, exact=True)
            button.click()
            expect(dialog).to_be_visible()
            expect(dialog).to_contain_text(question)
            expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
            dialog.get_by_role("button", name="Cancel").click()
            expect(dialog).to_be_hidden()
            assert _asked(lease.pk) == queued, f"{label}: Cancel sent the request"

            button.click()
            expect(dialog).to_be_visible()
            page.keyboard.press("Escape")
            expect(dialog).to_be_hidden()
            assert _asked(lease.pk) == queued, f"{label}: Escape sent the request"

            button.click()
            if label == "Reset":
                page.screenshot(path=str(ARTIFACTS / "confirm-reset.png"))
            dialog.get_by_role("button", name=label, exact=True).click()
            expect(page.locator(".msg.success")).to_contain_text(said)
            queued.append(task)
            assert _asked(lease.pk) == queued, f"{label}: confirming did not queue the task"
