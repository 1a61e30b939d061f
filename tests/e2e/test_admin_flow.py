"""An admin's resize in a real browser, with the real machinery behind the page: an RQ
worker and the pool manager as processes, vcsim as vCenter. The admin grows a pool, watches
it refill on the live pool list, then finds the change in the audit log."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest

from apps.audit.models import AuditEvent
from apps.pools.models import VMState
from tests.e2e.browser import ARTIFACTS, CHROMIUM, MISSING, chromium, sign_in
from tests.live import GUEST, make_pool, manage_process, settle, site, vms_in_folder

pytestmark = [
    pytest.mark.browser,
    pytest.mark.vcsim,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=MISSING),
]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_admin_grows_a_pool_watches_it_refill_and_finds_it_in_the_audit_log(
        live_server, admin_user, vcsim_factory, redis_conn):
    ARTIFACTS.mkdir(exist_ok=True)
    vc, folder = site(vcsim_factory(*GUEST, "-guest-ip-delay", "1s"))
    pool = make_pool(vc, folder, name="debian-ci", size=1)
    settle(pool)
    assert pool.vms.filter(state=VMState.READY).count() == 1
    processes = [
        manage_process("rqworker", "clone", "purge", "deploy", "default", "--worker-class", "rq.SimpleWorker"),
        manage_process("poolmanager", "--interval", "2"),
    ]
    try:
        with chromium() as browser:
            refill_seconds = _resize_and_watch(browser, live_server.url, pool.pk)
    finally:
        for proc in processes:
            _stop(proc)
    ready = pool.vms.filter(state=VMState.READY)
    assert ready.count() == 3
    assert {v.name for v in vms_in_folder(vc)} >= set(ready.values_list("name", flat=True))
    event = AuditEvent.objects.get(action="pool.reconfigure", pool_id=pool.pk)
    assert (event.actor_name, event.before, event.after) == ("alice-admin", {"size": 1}, {"size": 3})
    print(f"\nrefill 1 -> 3 seen on the live pool list {refill_seconds:.1f}s after Apply")  # noqa: T201


def _resize_and_watch(browser, base_url: str, pool_id: int) -> float:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(15_000)
    page.goto(f"{base_url}/manage/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    sign_in(page, "alice-admin", "pw-admin")

    row = page.locator("#admin-pool-rows tr", has_text="debian-ci")
    expect(row.locator("td").nth(3)).to_have_text("1")
    row.get_by_role("link", name="debian-ci").click()
    expect(page).to_have_url(re.compile(rf"/manage/pools/{pool_id}/$"))

    page.locator("#id_size").fill("3")
    expect(page.locator("#reconfigure-preview")).to_contain_text("Will clone 2, 0 leased VMs untouched.")
    page.screenshot(path=str(ARTIFACTS / "admin-resize-preview.png"), full_page=True)
    page.get_by_role("button", name="Apply").click()
    applied = time.monotonic()
    expect(page.locator(".msg.success")).to_contain_text("debian-ci reconfigured: clone 2")

    page.locator("nav.subnav").get_by_role("link", name="Pools").click()
    row = page.locator("#admin-pool-rows tr", has_text="debian-ci")
    expect(row.locator("td").nth(6)).to_have_text("3")  # the size
    # The list polls every 3 s; the ready count climbs without a reload.
    expect(row.locator("td").nth(3)).to_have_text("3", timeout=90_000)
    refill = time.monotonic() - applied
    page.screenshot(path=str(ARTIFACTS / "admin-pool-refilled.png"), full_page=True)

    page.locator("nav.subnav").get_by_role("link", name="Audit log").click()
    page.get_by_label("Action").fill("pool.reconfigure")
    page.get_by_role("button", name="Filter").click()
    event_row = page.locator("table.grid tbody tr", has_text="pool.reconfigure").first
    expect(event_row).to_contain_text("alice-admin")
    expect(event_row).to_contain_text("clone 2")
    event_row.get_by_role("link").first.click()
    expect(page.locator("table.diff tr.changed", has_text="size")).to_contain_text("1")
    expect(page.locator("table.diff tr.changed", has_text="size").locator("td.after")).to_have_text("3")
    page.screenshot(path=str(ARTIFACTS / "admin-audit-resize.png"), full_page=True)
    page.close()
    return refill


def test_admin_uploads_an_ova_and_watches_it_deploy(live_server, admin_user, vcsim_factory, redis_conn, settings,
                                                    tmp_path, monkeypatch):
    from tests.vsphere.test_templates import ova_bytes

    ARTIFACTS.mkdir(exist_ok=True)
    # Slow lease calls, so each stage stays on screen for a poll or two.
    vc, _ = site(vcsim_factory("-method-delay", "ImportVApp:1500,HttpNfcLeaseComplete:2000"))
    ova = tmp_path / "tiny.ova"
    ova.write_bytes(ova_bytes())
    upload_dir = tmp_path / "uploads"
    monkeypatch.setenv("VMPORTAL_UPLOAD_DIR", str(upload_dir))  # the worker process and this one must agree
    settings.VMPORTAL_UPLOAD_DIR = upload_dir
    proc = manage_process("rqworker", "deploy", "--worker-class", "rq.SimpleWorker")
    try:
        with chromium() as browser:
            seen, seconds = _deploy_and_watch(browser, live_server.url, ova)
    finally:
        _stop(proc)
    from apps.pools.models import Template, TemplateStatus

    template = Template.objects.get(name="tiny-ova")
    assert template.status == TemplateStatus.READY and template.copies.get().snapshot_moid
    assert seen[0] == "deploying" and seen[-1] == "ready" and "preparing" in seen, seen
    assert not any(upload_dir.iterdir())
    print(f"\nOVA upload to ready template, as the browser saw it: {seconds:.1f}s; stages {seen}")  # noqa: T201


def _deploy_and_watch(browser, base_url: str, ova) -> tuple[list[str], float]:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(15_000)
    page.goto(f"{base_url}/accounts/login/?next=/manage/templates/")
    sign_in(page, "alice-admin", "pw-admin")

    form = page.locator("#deploy form")
    form.get_by_label("Name").fill("tiny-ova")
    form.get_by_label("OS").fill("Tiny Linux")
    form.get_by_label("Or upload an OVA").set_input_files(str(ova))
    form.get_by_label("Cluster").select_option(label="DC0_C0")
    form.get_by_label("Datastore").select_option(label="LocalDS_0")
    form.get_by_label("VM folder").select_option(label="DC0/vm/Templates")
    form.get_by_role("button", name="Deploy").click()
    started = time.monotonic()
    expect(page).to_have_url(re.compile(r"/manage/templates/\d+/$"))
    status = page.locator("#template-status .badge")
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = status.inner_text().split()[0]
        if not seen or seen[-1] != text:
            seen.append(text)
            if text in ("deploying", "preparing"):
                page.screenshot(path=str(ARTIFACTS / f"admin-ova-{text}.png"), full_page=True)
        if text in ("ready", "failed"):
            break
        page.wait_for_timeout(200)
    seconds = time.monotonic() - started
    expect(page.locator("#template-live")).to_contain_text("templates.deploy_ovf")
    page.screenshot(path=str(ARTIFACTS / "admin-ova-ready.png"), full_page=True)
    page.close()
    return seen, seconds
