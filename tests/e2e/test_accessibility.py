"""Accessibility (issue 17): axe-core, run in Chromium on every page an engineer or an admin
sees, finds no serious or critical violation.

axe-core comes with axe-playwright-python (its axe.min.js is injected into each page). Rows
are factory rows, one of each thing the pages list, so tables, badges, forms and the confirm
dialog are all on screen when axe looks. A failure prints each violation with the elements
it was found on and axe's reasons.
"""

from __future__ import annotations

import re

import pytest

from apps.pools.models import VMState
from tests import factories
from tests.e2e.browser import ARTIFACTS, CHROMIUM, MISSING, chromium, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason=MISSING)]

BLOCKING = ("serious", "critical")
WAIT_MS = 30_000
# An Ed25519 key in OpenSSH's format, valid as the form checks it (32 bytes after the type).
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq0sN9c0nW5DzF8Y2b9w3dC9fF3o3HqGzv0q7f1aJ2k bob@laptop"


@pytest.fixture
def site(transactional_db, redis_conn, admin_user, engineer):
    """One of each thing the pages show, for the engineer and for the admin."""
    from django.utils import timezone

    from apps.api.tokens import create_token
    from apps.audit.models import AuditEvent
    from apps.firstboot.access import add_ssh_key
    from apps.firstboot.models import AddressRange, KeyDelivery, VMSecret
    from apps.leases import ondemand
    from apps.leases import services as leases
    from apps.leases.models import VMTask

    pool = factories.pool(name="debian-12", size=3, description="Debian 12, 2 vCPU, 4 GB")
    for i in range(1, 4):
        factories.vm(pool, state=VMState.READY, ip_address=f"10.20.0.{10 + i}",
                     hostname=f"debian-12-{i}.lab.example")
    factories.vm(pool, state=VMState.BOOTING, name="debian-12-booting")
    empty = factories.pool(name="windows-2022", size=0, template=factories.template(pool.template.vcenter),
                           cluster=pool.cluster)
    factories.host_with_load(pool.cluster)
    now = timezone.now()
    ip_range = AddressRange.objects.create(name="lab-a", network="10.40.0.0/24", first="10.40.0.10",
                                           last="10.40.0.200", gateway="10.40.0.1", dns_servers="10.40.0.2")

    [lease] = leases.checkout(user=engineer, pools=[pool], note="load test", tags={"team": "qa"})
    VMTask.objects.create(lease=lease, kind=VMTask.Kind.SNAPSHOT, snapshot="a1b2c3d4e5f6a7b8",
                          status=VMTask.Status.DONE, finished_at=now)
    VMTask.objects.create(lease=lease, kind=VMTask.Kind.DISK, disk_gb=8, status=VMTask.Status.FAILED,
                          error="datastore full")
    VMSecret.objects.create(vm=lease.vm, username="debian", password="correct-horse-battery")
    KeyDelivery.objects.update_or_create(lease=lease, defaults={"state": KeyDelivery.State.FAILED,
                                                                "detail": "VMware Tools are not running"})
    [admin_lease] = leases.checkout(user=admin_user, pools=[pool])
    add_ssh_key(user=engineer, name="laptop", public_key=PUBLIC_KEY)
    create_token(user=engineer, name="ci")
    request = ondemand.request_vms(user=engineer, pools=[empty])
    event = AuditEvent.objects.order_by("-pk").first()
    return {"pool": pool, "lease": lease, "admin_lease": admin_lease, "request": request, "event": event,
            "range": ip_range}


def _engineer_pages(s) -> list[str]:
    return ["/", "/leases/", f"/leases/{s['lease'].pk}/", f"/requests/{s['request'].request_id}/",
            "/profile/ssh-keys/", "/api/tokens/", "/api/docs/", "/no-such-page/"]


def _admin_pages(s) -> list[str]:
    pool = s["pool"]
    return [
        "/", f"/leases/{s['lease'].pk}/", "/manage/", "/manage/pools/new/", f"/manage/pools/{pool.pk}/",
        f"/manage/pools/{pool.pk}/first-boot/", "/manage/templates/", f"/manage/templates/{pool.template_id}/",
        f"/manage/vms/{s['admin_lease'].vm_id}/capture/", "/manage/hosts/", "/manage/health/",
        "/manage/address-ranges/", f"/manage/address-ranges/{s['range'].pk}/", "/manage/audit/",
        f"/manage/audit/{s['event'].pk}/", "/manage/no-such-page/",
    ]


def _describe(where: str, violations: list[dict]) -> str:
    lines = []
    for v in violations:
        lines.append(f"{where}: {v['impact']} {v['id']}: {v['help']} ({v['helpUrl']})")
        for node in v["nodes"][:10]:
            reasons = "; ".join(c["message"] for c in node["any"] + node["all"] + node["none"])
            lines.append(f"    {' '.join(map(str, node['target']))}: {node['html'][:160]}")
            lines.append(f"      {reasons}")
        if len(v["nodes"]) > 10:
            lines.append(f"    ... and {len(v['nodes']) - 10} more")
    return "\n".join(lines)


def _check(page, axe, where: str, found: dict[str, list[str]]) -> None:
    from playwright.sync_api import expect

    expect(page.locator("h1").first, f"{where}: the page has no heading (at {page.url})").to_be_visible()
    # What scripts draw after the load event (the API page's Swagger UI) is checked too.
    page.wait_for_load_state("networkidle")
    if page.locator("#swagger-ui").count():
        expect(page.locator("#swagger-ui .opblock").first).to_be_visible()
    for v in axe.run(page).response["violations"]:
        found["blocking" if v["impact"] in BLOCKING else "other"].append(_describe(where, [v]))


def _visit_all(browser, base: str, username: str, password: str, paths: list[str], axe,
               found: dict[str, list[str]]) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{base}/accounts/login/")
    sign_in(page, username, password)
    page.wait_for_url(f"{base}/")
    for path in paths:
        page.goto(f"{base}{path}")
        _check(page, axe, f"{username} {path}", found)
    page.close()


def test_every_page_has_no_serious_or_critical_accessibility_violation(live_server, site):
    from axe_playwright_python.sync_playwright import Axe

    axe = Axe()
    found: dict[str, list[str]] = {"blocking": [], "other": []}
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(WAIT_MS)
        page.goto(f"{live_server.url}/accounts/login/")
        _check(page, axe, "anonymous /accounts/login/", found)
        page.close()

        _visit_all(browser, live_server.url, "bob-engineer", "pw-engineer", _engineer_pages(site), axe, found)
        _visit_all(browser, live_server.url, "alice-admin", "pw-admin", _admin_pages(site), axe, found)

        # The confirm dialog, open over the lease page.
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(WAIT_MS)
        page.goto(f"{live_server.url}/leases/{site['lease'].pk}/")
        sign_in(page, "bob-engineer", "pw-engineer")
        page.get_by_role("button", name="Reset").click()
        page.locator("dialog#confirm-dialog").wait_for()
        _check(page, axe, "bob-engineer lease page, reset dialog open", found)
        page.screenshot(path=str(ARTIFACTS / "a11y-confirm-dialog.png"))
        page.locator("dialog#confirm-dialog").get_by_role("button", name="Cancel").click()

        # The first-boot password, revealed in place (htmx) and on its own page (without script).
        page.get_by_role("button", name="Reveal").click()
        page.locator("#vm-password-value").wait_for()
        _check(page, axe, "bob-engineer lease page, password revealed", found)
        page.reload()
        page.locator("#vm-password form").evaluate("form => form.submit()")  # no submit event: htmx stays out
        page.wait_for_url(re.compile(r"/password$"))
        _check(page, axe, "bob-engineer password page", found)
    # Every violation, moderate and minor too, for people to read; only serious and critical fail.
    (ARTIFACTS / "a11y-violations.txt").write_text("\n".join(found["blocking"] + found["other"]) + "\n")
    assert not found["blocking"], "axe-core found serious or critical violations:\n" + "\n".join(found["blocking"])
