"""The engineer's day in a real browser: sign in, check out, extend, return.

Pools and VMs are rows made by the factories; this test is about the pages and their
wiring, not vSphere. Screenshots land in test-artifacts/ for people to look at.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest

from apps.leases.models import Lease
from apps.pools.models import Pool, VMState
from tests import factories
from tests.e2e.browser import ARTIFACTS, CHROMIUM, MISSING, chromium, off_loop, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason=MISSING)]


@pytest.fixture
def pool(transactional_db):
    pool = factories.pool(name="debian-12", size=3, description="Debian 12, 2 vCPU, 4 GB")
    for i in range(1, 4):
        factories.vm(pool, state=VMState.READY, ip_address=f"10.20.0.{10 + i}",
                     hostname=f"debian-12-{i}.lab.example", ready_at=datetime.now().astimezone() - timedelta(minutes=i))
    return pool


def _expiry(page) -> datetime:
    return datetime.fromisoformat(page.locator("#lease-expiry").get_attribute("datetime"))


def test_engineer_checks_out_extends_and_returns_a_vm(live_server, pool, engineer):
    with chromium() as browser:
        _check_out_extend_and_return(browser, live_server.url)
    lease = Lease.objects.get()
    assert (lease.user, lease.end_reason, lease.vm.state) == (engineer, "returned", VMState.DESTROYING)


def _check_out_extend_and_return(browser, base_url: str) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(10_000)

    page.goto(f"{base_url}/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    sign_in(page, "bob-engineer", "pw-engineer")

    row = page.locator("#pool-rows tr", has_text="debian-12")
    expect(row.locator("td").nth(3)).to_have_text("3")
    page.screenshot(path=str(ARTIFACTS / "engineer-home.png"), full_page=True)
    row.get_by_role("button", name="Check out").click()

    expect(page).to_have_url(re.compile(r"/leases/\d+/$"))
    expect(page.locator("#vm-hostname")).to_have_text(re.compile(r"^debian-12-\d\.lab\.example$"))
    ip = page.locator("#vm-ip").inner_text()
    assert re.fullmatch(r"10\.20\.0\.1[1-3]", ip)
    expect(page.locator("#vm-ssh")).to_have_text(f"ssh root@{ip}")
    expect(page.locator("#lease-expiry")).to_have_text(re.compile(r"left$"))  # the live countdown runs

    before = _expiry(page)
    page.get_by_label("Extend by").select_option("1")
    page.get_by_role("button", name="Extend").click()
    expect(page.locator(".msg.success")).to_contain_text("Extended until")
    assert _expiry(page) - before == timedelta(hours=1)
    page.screenshot(path=str(ARTIFACTS / "engineer-flow.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(ARTIFACTS / "engineer-flow-390.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})

    vm_name = page.locator("h1").inner_text()
    page.get_by_role("button", name="Return").click()
    page.locator("dialog#confirm-dialog").get_by_role("button", name="Return").click()

    expect(page).to_have_url(re.compile(r"/leases/$"))
    expect(page.locator(".msg.success")).to_contain_text(f"{vm_name} returned")
    expect(page.locator("table.grid")).not_to_contain_text(vm_name)
    expect(page.locator("table.grid")).to_contain_text("You have no VMs")

    page.goto(f"{base_url}/")
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(ARTIFACTS / "engineer-home-390.png"), full_page=True)
    page.close()


def test_check_out_swaps_the_lease_page_in_and_reload_back_forward_and_no_javascript_still_work(
        live_server, pool, engineer):
    """Home's Check out is boosted (issue 17: click to lease page): the lease page comes back from
    the POST and replaces the home page in the same document. It must still act as a page of
    its own: its address, a reload that does not check out again, Back to fresh counts,
    Forward, the focus on its heading, error pages shown, and a browser without JavaScript."""
    from playwright.sync_api import expect

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(10_000)
        page.goto(f"{live_server.url}/")
        sign_in(page, "bob-engineer", "pw-engineer")
        row = page.locator("#pool-rows tr", has_text="debian-12")
        expect(row.locator("td").nth(3)).to_have_text("3")
        page.evaluate("window.sameDocument = true")
        row.get_by_role("button", name="Check out").click()

        expect(page).to_have_url(re.compile(r"/leases/\d+/$"))
        lease_url = page.url
        expect(page.locator("#vm-hostname")).to_have_text(re.compile(r"^debian-12-\d\.lab\.example$"))
        vm_name = page.locator("h1").inner_text()
        expect(page).to_have_title(f"{vm_name} · vmportal")
        expect(page.locator(".msg.success")).to_contain_text(f"{vm_name} is yours until")
        expect(page.locator("h1")).to_be_focused()
        expect(page.locator("#lease-expiry")).to_have_text(re.compile(r"left$"))
        assert page.evaluate("window.sameDocument") is True  # swapped in, not loaded
        page.get_by_role("button", name="Return").click()  # the swapped-in page's forms still ask first
        dialog = page.locator("dialog#confirm-dialog")
        dialog.get_by_role("button", name="Cancel").click()
        expect(dialog).to_be_hidden()

        page.reload()
        expect(page.locator("h1")).to_have_text(vm_name)
        expect(page.locator(".msg.success")).to_have_count(0)  # a GET: no second checkout, no flash

        page.go_back()
        expect(page).to_have_url(f"{live_server.url}/")
        expect(row.locator("td").nth(3)).to_have_text("2")  # from the server, not a copy from before
        page.go_forward()
        expect(page).to_have_url(lease_url)
        expect(page.locator("h1")).to_have_text(vm_name)

        # The pool renamed under the open home page: the 404 page is shown, not dropped.
        page.goto(f"{live_server.url}/")
        off_loop(lambda: Pool.objects.filter(pk=pool.pk).update(name="debian-12-renamed"))
        row.get_by_role("button", name="Check out").click()
        expect(page.locator("h1")).to_have_text("Page not found")
        off_loop(lambda: Pool.objects.filter(pk=pool.pk).update(name="debian-12"))

        plain = browser.new_context(java_script_enabled=False).new_page()
        plain.set_default_timeout(10_000)
        plain.goto(f"{live_server.url}/")
        sign_in(plain, "bob-engineer", "pw-engineer")
        plain.locator("#pool-rows tr", has_text="debian-12").get_by_role("button", name="Check out").click()
        expect(plain).to_have_url(re.compile(r"/leases/\d+/$"))
        expect(plain.locator(".msg.success")).to_contain_text("is yours until")
        expect(plain.locator("#vm-hostname")).to_have_text(re.compile(r"^debian-12-\d\.lab\.example$"))
        plain.reload()
        expect(plain.locator(".msg.success")).to_have_count(0)
    assert Lease.objects.filter(user=engineer).count() == 2
