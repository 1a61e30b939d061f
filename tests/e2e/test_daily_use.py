"""Daily use in a real browser (issue 17): keyboard focus survives live updates, pages fit a
phone, destructive actions ask in a styled dialog, pictures are where people look.

Pools and VMs are factory rows; the pages and their wiring are under test, not vSphere.
Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest

from apps.pools.models import VMState
from tests import factories
from tests.e2e.browser import ARTIFACTS, CHROMIUM, MISSING, chromium, off_loop, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason=MISSING)]

# Polls are every 3 s; a loaded 2-core machine may take a few of them to answer.
POLL_WAIT_MS = 30_000


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
        off_loop(lambda: factories.vm(pool, state=VMState.READY, ip_address="10.20.0.13"))
        _wait_for_swaps(page, 2)
        expect(row.locator("td").nth(3)).to_have_text("3")
        focused = page.evaluate(
            "[document.activeElement.textContent.trim(), !!document.activeElement.closest('#pool-rows')]")
        assert focused == ["Check out", True]
        page.keyboard.press("Enter")
        expect(page).to_have_url(re.compile(r"/leases/\d+/$"))


@pytest.fixture
def site_data(pool, admin_user, engineer):
    """One of each thing the main pages show: hosts with load, a lease, an audit event."""
    from apps.audit.models import AuditEvent
    from apps.leases import services as leases

    factories.host_with_load(pool.cluster)
    [lease] = leases.checkout(user=admin_user, pools=[pool], note="a long note " * 8,
                              tags={"team": "qa", "ticket": "OPS-1234"})
    return {"pool": pool, "lease": lease, "event": AuditEvent.objects.order_by("-pk").first()}


def _main_pages(data) -> list[str]:
    pool, lease, event = data["pool"], data["lease"], data["event"]
    return [
        "/", "/leases/", f"/leases/{lease.pk}/", "/profile/ssh-keys/", "/api/tokens/", "/api/docs/",
        "/manage/", "/manage/pools/new/", f"/manage/pools/{pool.pk}/", f"/manage/pools/{pool.pk}/first-boot/",
        "/manage/templates/", f"/manage/templates/{pool.template_id}/", "/manage/audit/",
        f"/manage/audit/{event.pk}/", "/manage/hosts/", "/manage/health/", "/manage/address-ranges/",
    ]


# What sticks out past the right edge: the outermost such elements, for a failure message.
WIDEST = """[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 391
  && !(e.parentElement && e.parentElement.getBoundingClientRect().right > 391))
  .slice(0, 3).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))"""


def test_no_page_overflows_a_390px_phone_and_check_out_and_admin_are_reachable(live_server, site_data):
    from playwright.sync_api import expect

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.set_default_timeout(POLL_WAIT_MS)
        page.goto(f"{live_server.url}/")
        sign_in(page, "alice-admin", "pw-admin")
        expect(page.locator("h1")).to_have_text("Pools")
        overflowing = {}
        for path in _main_pages(site_data):
            page.goto(f"{live_server.url}{path}")
            expect(page.locator("main")).to_be_visible()
            width = page.evaluate("document.scrollingElement.scrollWidth")
            if width > 390:
                overflowing[path] = (width, page.evaluate(WIDEST))
        assert not overflowing, "\n".join(f"{k}: {v}" for k, v in overflowing.items())

        page.goto(f"{live_server.url}/")
        page.screenshot(path=str(ARTIFACTS / "phone-home.png"), full_page=True)
        for name in ("Check out", "Admin"):
            target = page.get_by_role("button" if name == "Check out" else "link", name=name, exact=True).first
            box = target.bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, (name, box)
        page.goto(f"{live_server.url}/leases/{site_data['lease'].pk}/")
        page.screenshot(path=str(ARTIFACTS / "phone-lease.png"), full_page=True)
        page.goto(f"{live_server.url}/manage/hosts/")
        page.screenshot(path=str(ARTIFACTS / "phone-hosts.png"), full_page=True)
        page.set_viewport_size({"width": 1100, "height": 800})
        page.reload()
        expect(page.locator("svg.spark-chart rect.hover").first).to_be_attached()
        page.screenshot(path=str(ARTIFACTS / "hosts.png"), full_page=True)


def _pool_row(pool_id: int) -> tuple:
    from apps.pools.models import Pool

    result = []
    off_loop(lambda: result.append(Pool.objects.values_list("size", "enabled").get(pk=pool_id)))
    return result[0]


def test_drain_and_disable_asks_in_a_styled_dialog_and_cancel_changes_nothing(live_server, pool, admin_user):
    from playwright.sync_api import expect

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(POLL_WAIT_MS)
        page.on("dialog", lambda d: pytest.fail(f"a native browser dialog opened: {d.message}"))
        page.goto(f"{live_server.url}/manage/pools/{pool.pk}/")
        sign_in(page, "alice-admin", "pw-admin")
        expect(page.locator("h1")).to_have_text("debian-12")

        page.get_by_role("button", name="Drain and disable").click()
        dialog = page.locator("dialog#confirm-dialog")
        expect(dialog).to_be_visible()
        expect(dialog).to_contain_text("Drain and disable debian-12?")
        expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
        page.screenshot(path=str(ARTIFACTS / "confirm-drain.png"))
        dialog.get_by_role("button", name="Cancel").click()
        expect(dialog).to_be_hidden()
        assert _pool_row(pool.pk) == (3, True)

        page.get_by_role("button", name="Drain and disable").click()
        dialog.get_by_role("button", name="Drain and disable").click()
        expect(page.locator(".msg.success")).to_contain_text("debian-12 disabled and draining")
        assert _pool_row(pool.pk) == (0, False)


def _a_day_of_samples(pool) -> None:
    from django.utils import timezone

    from apps.pools.models import PoolSample

    now = timezone.now()
    PoolSample.objects.bulk_create(
        PoolSample(pool=pool, at=now - timedelta(minutes=m), ready=max(0, 3 - (m // 90) % 4), booting=(m // 90) % 2,
                   leased=2 + (m // 180) % 3, on_demand=1 if 600 < m < 660 else 0)
        for m in range(0, 24 * 60, 5))


def test_pool_page_shows_its_history_and_home_its_capacity_bars(live_server, pool, admin_user):
    from playwright.sync_api import expect

    _a_day_of_samples(pool)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.set_default_timeout(POLL_WAIT_MS)
        page.goto(f"{live_server.url}/")
        sign_in(page, "alice-admin", "pw-admin")
        bar = page.locator("#pool-rows tr", has_text="debian-12").locator(".capacity")
        expect(bar).to_have_attribute("title", re.compile(r"^2 ready, 0 booting of size 3"))
        page.screenshot(path=str(ARTIFACTS / "home.png"))

        page.goto(f"{live_server.url}/manage/pools/{pool.pk}/")
        chart = page.locator("#pool-history")
        expect(chart.locator("polygon.area.leased")).to_have_count(1)
        chart.locator("rect.hover").nth(140).hover()
        expect(chart.locator("rect.hover").nth(140).locator("title")).to_contain_text(" leased")
        chart.screenshot(path=str(ARTIFACTS / "pool-history.png"))
        chart.get_by_role("link", name="7d").click()
        expect(chart.get_by_role("link", name="7d")).to_have_attribute("aria-current", "true")


def test_pool_page_updates_counts_failures_and_vm_table_without_a_reload(live_server, pool, admin_user):
    from playwright.sync_api import expect

    from apps.pools.models import Pool

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(POLL_WAIT_MS)
        page.goto(f"{live_server.url}/manage/pools/{pool.pk}/")
        sign_in(page, "alice-admin", "pw-admin")
        expect(page.locator("#pool-counts")).to_have_text(re.compile(r"^2 ready, 0 booting"))
        expect(page.locator("#pool-vms tbody tr")).to_have_count(2)
        page.get_by_label("Size").first.focus()

        def change():
            factories.vm(pool, state=VMState.READY, name="debian-12-new", ip_address="10.20.0.99")
            Pool.objects.filter(pk=pool.pk).update(consecutive_failures=2, health="degraded",
                                                   health_reason="clone failed: disk full")

        off_loop(change)
        expect(page.locator("#pool-counts")).to_have_text(re.compile(r"^3 ready, 0 booting"), timeout=POLL_WAIT_MS)
        expect(page.locator("#pool-failures")).to_have_text("2")
        expect(page.locator("#pool-live .msg.warning")).to_contain_text("clone failed: disk full")
        expect(page.locator("#pool-vms tbody tr", has_text="debian-12-new")).to_contain_text("10.20.0.99")
        assert page.evaluate("document.activeElement.name") == "size"  # the form below kept the focus


def test_lease_page_shows_tags_and_limit_puts_extend_first_and_follows_key_delivery(live_server, site_data):
    from playwright.sync_api import expect

    from apps.firstboot.models import KeyDelivery

    lease = site_data["lease"]
    delivery = KeyDelivery.objects.create(lease=lease, state=KeyDelivery.State.PENDING)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(POLL_WAIT_MS)
        page.goto(f"{live_server.url}/leases/{lease.pk}/")
        sign_in(page, "alice-admin", "pw-admin")
        expect(page.locator("#lease-tags")).to_contain_text("team qa")
        expect(page.locator("#lease-limit")).to_contain_text("24 h from check-out")
        actions = page.locator(".actions").first.locator("button, a").all_inner_texts()
        assert actions.index("Extend") < actions.index("Capture as template")
        assert actions.index("Return") < actions.index("Capture as template")
        expect(page.locator("#vm-key-delivery")).to_contain_text("Adding your SSH keys")

        off_loop(lambda: KeyDelivery.objects.filter(pk=delivery.pk).update(state=KeyDelivery.State.DONE))
        expect(page.locator("#vm-key-delivery")).to_contain_text("Your SSH keys were added", timeout=POLL_WAIT_MS)
        page.screenshot(path=str(ARTIFACTS / "lease-page.png"), full_page=True)

        page.get_by_role("button", name="Return").click()
        page.locator("dialog#confirm-dialog").get_by_role("button", name="Return").click()
        expect(page).to_have_url(re.compile(r"/leases/$"))
        page.goto(f"{live_server.url}/leases/{lease.pk}/")
        expect(page.locator("text=Ended")).to_be_visible()
        expect(page.locator("#vm-ssh")).to_have_count(0)
        expect(page.get_by_role("button", name="Copy")).to_have_count(0)


def test_my_vms_shows_state_and_check_out_time_extends_and_returns_inline(live_server, site_data):
    from playwright.sync_api import expect

    lease = site_data["lease"]
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(POLL_WAIT_MS)
        page.goto(f"{live_server.url}/leases/")
        sign_in(page, "alice-admin", "pw-admin")
        row = page.locator(f"#lease-{lease.pk}")
        expect(row.locator(".badge")).to_have_text("Leased")
        expect(row).to_contain_text("ago")
        before = row.locator("time.countdown").get_attribute("datetime")
        row.get_by_role("button", name=re.compile(r"^Extend .+ by 1 hour$")).click()
        expect(page).to_have_url(re.compile(r"/leases/$"))
        expect(page.locator(".msg.success")).to_contain_text("Extended until")
        expect(row.locator("time.countdown")).not_to_have_attribute("datetime", before)
        row.get_by_role("button", name=re.compile(r"^Return ")).click()
        page.locator("dialog#confirm-dialog").get_by_role("button", name="Return").click()
        expect(page.locator(".msg.success")).to_contain_text("returned")
        expect(row).to_have_count(0)
