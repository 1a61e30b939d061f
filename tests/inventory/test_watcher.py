"""The live watcher: changes made in the simulator reach PostgreSQL within seconds.

These tests run the watcher in a thread (as ``manage.py watch_inventory`` does), so they
use committed transactions: the watcher's thread has its own database connection.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection
from pyVim.task import WaitForTask

from apps.inventory.management.commands.watch_inventory import VCenterWatch
from apps.inventory.models import Datastore, Folder, Host, HostLoadSample, InventoryVM, VCenter
from apps.vsphere.session import Endpoint
from apps.vsphere.watcher import ChangeBatch, Watcher, watch_in_thread
from tests import vcsim as vcsim_launcher
from tests.inventory.conftest import clone_vm, destroy_vm, find

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def vm_row(vc, name):
    return InventoryVM.objects.filter(vcenter=vc, name=name).first()


@pytest.fixture
def start_watch():
    """Start ``VCenterWatch`` threads (fast timings) and stop them after the test."""
    started: list[VCenterWatch] = []

    def start(vc: VCenter) -> VCenterWatch:
        watch = VCenterWatch(vc, max_wait=1, write=lambda line: None)
        watch.watcher.backoff_first, watch.watcher.backoff_max = 0.2, 1.0
        watch.start()
        started.append(watch)
        return watch

    yield start
    for watch in started:
        watch.stop.set()
    for watch in started:
        watch.thread.join(timeout=10)
        assert not watch.thread.is_alive(), "the watcher did not stop"


def test_vm_lifecycle_in_vcenter_reaches_the_database(vcsim_factory, vcenter_for, raw, start_watch):
    sim = vcsim_factory("-guest-ip", "10.20.0.0/16")
    si = raw(sim)
    vc = vcenter_for(sim)
    watch = start_watch(vc)
    # The first batch is a resync: a full sync fills the tables.
    assert wait_until(lambda: vm_row(vc, "debian-12") is not None)
    vc.refresh_from_db()
    assert vc.status == VCenter.Status.REACHABLE

    vm = clone_vm(si, "watched", marker="vmportal:7")
    assert wait_until(lambda: vm_row(vc, "watched") is not None)
    row = vm_row(vc, "watched")
    assert row.path == "DC0/vm/vmportal/watched" and row.folder.path == "DC0/vm/vmportal"
    assert row.marker == "vmportal:7"  # read for new VMs, not watched
    assert row.power_state == "poweredOff" and row.host is not None

    WaitForTask(vm.PowerOnVM_Task())
    assert wait_until(lambda: vm_row(vc, "watched").power_state == "poweredOn")
    assert wait_until(lambda: vm_row(vc, "watched").guest_ip.startswith("10.20."))
    assert vm_row(vc, "watched").tools_status == "guestToolsRunning"

    WaitForTask(vm.PowerOffVM_Task())
    assert wait_until(lambda: vm_row(vc, "watched").power_state == "poweredOff")
    vm.MarkAsTemplate()
    assert wait_until(lambda: vm_row(vc, "watched").is_template)

    WaitForTask(vm.Rename_Task("renamed"))
    assert wait_until(lambda: vm_row(vc, "renamed") is not None)
    assert vm_row(vc, "renamed").path == "DC0/vm/vmportal/renamed"
    WaitForTask(find(si, "DC0/vm/Templates").MoveIntoFolder_Task([vm]))
    assert wait_until(lambda: getattr(vm_row(vc, "renamed"), "path", "") == "DC0/vm/Templates/renamed")

    destroy_vm(vm)
    assert wait_until(lambda: vm_row(vc, "renamed") is None)
    assert watch.watcher.connects == 1  # all of it on one connection, no resync needed


def test_host_changes_and_load_reach_the_database(vcsim_factory, vcenter_for, raw, start_watch, monkeypatch):
    from apps.inventory import services

    monkeypatch.setattr(services, "WATCH_SAMPLE_INTERVAL", services.timedelta(0))
    sim = vcsim_factory("-host-stats", "1s")
    si = raw(sim)
    vc = vcenter_for(sim)
    start_watch(vc)
    assert wait_until(lambda: Host.objects.filter(vcenter=vc).count() >= 6)
    first = {h.moid: (h.cpu_usage_mhz, h.memory_usage_mb) for h in Host.objects.filter(vcenter=vc)}
    samples = HostLoadSample.objects.filter(host__vcenter=vc).count()

    # Quick stats move every second; the watcher records them (and a sample each).
    assert wait_until(lambda: {h.moid: (h.cpu_usage_mhz, h.memory_usage_mb)
                               for h in Host.objects.filter(vcenter=vc)} != first, timeout=5)
    assert wait_until(lambda: HostLoadSample.objects.filter(host__vcenter=vc).count() > samples)

    host = find(si, "DC0/host/DC0_C1/DC0_C1_H1")
    WaitForTask(host.EnterMaintenanceMode_Task(timeout=0))
    assert wait_until(lambda: Host.objects.get(vcenter=vc, moid=host._moId).in_maintenance)
    WaitForTask(host.ExitMaintenanceMode_Task(timeout=0))
    assert wait_until(lambda: not Host.objects.get(vcenter=vc, moid=host._moId).in_maintenance)


def test_datastore_and_folder_renames_reach_the_database_without_a_full_sync(vcsim_factory, vcenter_for, raw,
                                                                            start_watch, monkeypatch):
    from apps.inventory.management.commands import watch_inventory

    sim = vcsim_factory()
    si = raw(sim)
    vc = vcenter_for(sim)
    watch = start_watch(vc)
    assert wait_until(lambda: vm_row(vc, "debian-12") is not None)
    inner = find(si, "DC0/vm/vmportal").CreateFolder("inner")
    assert wait_until(lambda: Folder.objects.filter(vcenter=vc, path="DC0/vm/vmportal/inner").exists())
    clone_vm(si, "deep", folder="DC0/vm/vmportal/inner")
    assert wait_until(lambda: getattr(vm_row(vc, "deep"), "path", "") == "DC0/vm/vmportal/inner/deep")
    full_syncs = []
    monkeypatch.setattr(watch_inventory, "sync_inventory", lambda vcenter: full_syncs.append(vcenter))

    datastore = find(si, "DC0/datastore/LocalDS_0")
    WaitForTask(datastore.Rename_Task("Renamed_DS"))
    assert wait_until(lambda: Datastore.objects.get(vcenter=vc, moid=datastore._moId).name == "Renamed_DS")

    # A folder renamed: its path and those of the folders and VMs under it follow.
    WaitForTask(find(si, "DC0/vm/vmportal").Rename_Task("pools"))
    assert wait_until(lambda: getattr(vm_row(vc, "deep"), "path", "") == "DC0/vm/pools/inner/deep")
    assert Folder.objects.get(vcenter=vc, moid=inner._moId).path == "DC0/vm/pools/inner"
    assert Folder.objects.get(vcenter=vc, path="DC0/vm/pools").name == "pools"
    assert not Folder.objects.filter(vcenter=vc, path__startswith="DC0/vm/vmportal").exists()
    # ... and one moved to another parent.
    WaitForTask(find(si, "DC0/vm/Templates").MoveIntoFolder_Task([inner]))
    assert wait_until(lambda: getattr(vm_row(vc, "deep"), "path", "") == "DC0/vm/Templates/inner/deep")
    assert Folder.objects.get(vcenter=vc, moid=inner._moId).path == "DC0/vm/Templates/inner"
    assert not full_syncs and watch.watcher.connects == 1  # all of it as events on one connection


def test_watcher_reconnects_and_resyncs_after_the_simulator_restarts(vcenter_for, raw, start_watch):
    sim = vcsim_launcher.start()
    port = sim.port
    try:
        vc = vcenter_for(sim)
        watch = start_watch(vc)
        assert wait_until(lambda: watch.watcher.connects == 1 and vm_row(vc, "debian-12") is not None)
        clone_vm(raw(sim), "from-before")
        assert wait_until(lambda: vm_row(vc, "from-before") is not None)

        sim.stop()
        assert wait_until(lambda: not watch.watcher.connected.is_set(), timeout=10)
        assert wait_until(lambda: VCenter.objects.get(pk=vc.pk).status == VCenter.Status.UNREACHABLE)

        # Same address, fresh inventory: "from-before" no longer exists in vCenter.
        sim = vcsim_launcher.start(listen=f"127.0.0.1:{port}")
        assert wait_until(lambda: watch.watcher.connects == 2, timeout=10)
        assert wait_until(lambda: vm_row(vc, "from-before") is None)  # the resync removed it
        assert VCenter.objects.get(pk=vc.pk).status == VCenter.Status.REACHABLE

        clone_vm(raw(sim), "from-after")  # and the new connection watches again
        assert wait_until(lambda: vm_row(vc, "from-after") is not None)
        watch.stop.set()  # before the simulator goes, so it is not left reconnecting
    finally:
        sim.stop()


def test_watcher_stops_promptly_and_reports_batches(vcsim, vcenter_for):
    batches: list[ChangeBatch] = []
    vc = vcenter_for(vcsim)
    watcher = Watcher(Endpoint.from_vcenter(vc), batches.append, max_wait=1)
    thread = watch_in_thread(watcher)
    assert wait_until(lambda: batches, timeout=5)
    first = batches[0]
    assert first.resync
    names = {e.values.get("name") for e in first.events}
    assert {"debian-12", "ubuntu-24.04"} <= names
    host = next(e for e in first.events if e.moid.startswith("host-"))
    assert host.kind == "enter" and host.values["cpu_usage_mhz"] is not None

    started = time.monotonic()
    watcher.stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive() and time.monotonic() - started < 3


def test_watch_inventory_command_applies_changes_and_stops_on_sigterm(vcsim_factory, vcenter_for, raw, tmp_path):
    sim = vcsim_factory()
    vc = vcenter_for(sim)
    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
    }
    log = tmp_path / "watch.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "watch_inventory", "--vcenter", vc.name, "--max-wait", "1"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        assert wait_until(lambda: vm_row(vc, "debian-12") is not None, timeout=15), log.read_text()
        clone_vm(raw(sim), "seen-by-command")
        assert wait_until(lambda: vm_row(vc, "seen-by-command") is not None), log.read_text()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert "watching" in output and "SIGTERM: stopping" in output and "stopped" in output
