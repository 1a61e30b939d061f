"""On demand in a real browser: an empty pool, a click, live progress, then the lease page.

Real all the way down: Chromium, the live server, an rqworker process and vcsim (whose
guests take a moment to report their address, so the booting step is seen).
"""

from __future__ import annotations

import re

import pytest

from apps.leases.models import Lease, OnDemandRequest
from tests.e2e.browser import ARTIFACTS, CHROMIUM, MISSING, chromium, sign_in
from tests.live import make_pool, site, worker

pytestmark = [
    pytest.mark.browser, pytest.mark.vcsim, pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=MISSING),
]


def test_engineer_gets_a_vm_on_demand_and_watches_it_come_up(live_server, vcsim_factory, redis_conn, engineer):
    vc, folder = site(vcsim_factory("-guest-ip", "10.30.0.0/16", "-guest-ip-delay", "2s"))
    make_pool(vc, folder, name="debian-12", size=0)
    proc = worker(burst=False)
    try:
        with chromium() as browser:
            seen = _request_and_follow(browser, live_server.url)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    req = OnDemandRequest.objects.get()
    lease = Lease.objects.get()
    assert req.status == "ready" and lease.user == engineer and lease.vm in req.vms.all()
    assert "Booting" in seen, seen  # the page followed the request through its steps


def _request_and_follow(browser, base_url: str) -> set[str]:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(30_000)
    page.goto(f"{base_url}/accounts/login/")
    sign_in(page, "bob-engineer", "pw-engineer")

    row = page.locator("#pool-rows tr", has_text="debian-12")
    row.get_by_role("button", name="Get one on demand").click()
    expect(page).to_have_url(re.compile(r"/requests/[0-9a-f]+/$"))
    expect(page.locator(".msg.info")).to_contain_text("being made for you")
    seen: set[str] = set()
    shot = False
    # Watch the live fragment until the browser is sent on to the lease page.
    for _ in range(300):
        if re.search(r"/leases/\d+/$", page.url):
            break
        # One look, no waiting: the fragment is swapped, and the page left, under our feet.
        try:
            now = page.evaluate("() => document.querySelector('ol.steps li.now')?.textContent")
        except Exception:  # the page is navigating to the lease
            now = None
        if now:
            seen.add(now)
            if now == "Booting" and not shot:
                page.screenshot(path=str(ARTIFACTS / "ondemand-progress.png"), full_page=True)
                shot = True
        page.wait_for_timeout(100)
    expect(page).to_have_url(re.compile(r"/leases/\d+/$"))
    expect(page.locator("#vm-ip")).to_have_text(re.compile(r"^10\.30\."))
    page.screenshot(path=str(ARTIFACTS / "ondemand-lease.png"), full_page=True)
    page.close()
    return seen
