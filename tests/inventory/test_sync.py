"""Full inventory sync: a real simulator read into real PostgreSQL."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from pyVim.task import WaitForTask
from pyVmomi import vim

from apps.inventory import services
from apps.inventory.models import (
    Cluster,
    Datacenter,
    Datastore,
    Folder,
    Host,
    HostLoadSample,
    InventoryVM,
    Network,
    VCenter,
)
from apps.inventory.services import sync_inventory
from apps.vsphere import inventory as vsphere_inventory
from apps.vsphere.watcher import HostChange, VMChange
from tests import factories
from tests.inventory.conftest import clone_vm, destroy_vm, find

pytestmark = [pytest.mark.django_db]


def _raw_counts(si) -> dict[str, int]:
    """What the simulator holds, read the plain pyVmomi way (an independent path)."""
    content = si.content

    def count(kind, keep=lambda o: True):
        view = content.viewManager.CreateContainerView(content.rootFolder, [kind], True)
        try:
            return sum(1 for o in view.view if keep(o))
        finally:
            view.Destroy()

    return {
        "datacenters": count(vim.Datacenter),
        "clusters": count(vim.ClusterComputeResource),
        "hosts": count(vim.HostSystem),
        "datastores": count(vim.Datastore),
        "networks": count(vim.Network),
        "vms": count(vim.VirtualMachine),
        "templates": count(vim.VirtualMachine, lambda vm: vm.config.template),
    }


@pytest.mark.vcsim
def test_sync_mirrors_the_simulator_inventory(vcsim, vcenter_for, raw):
    vc = vcenter_for(vcsim)
    expected = _raw_counts(raw(vcsim))

    report = sync_inventory(vc)

    assert report.ok, report.error
    assert Datacenter.objects.filter(vcenter=vc).count() == expected["datacenters"] == 1
    assert Cluster.objects.filter(vcenter=vc).count() == expected["clusters"] == 2
    assert Host.objects.filter(vcenter=vc).count() == expected["hosts"] >= 6
    assert Datastore.objects.filter(vcenter=vc).count() == expected["datastores"] >= 2
    assert Network.objects.filter(vcenter=vc).count() == expected["networks"]
    assert InventoryVM.objects.filter(vcenter=vc).count() == expected["vms"]
    assert InventoryVM.objects.filter(vcenter=vc, is_template=True).count() == expected["templates"] >= 2
    assert {k: c.created for k, c in report.counts.items() if k in expected} == {
        k: v for k, v in expected.items() if k not in ("templates",)
    }

    debian = InventoryVM.objects.get(vcenter=vc, name="debian-12")
    assert debian.path == "DC0/vm/Templates/debian-12"
    assert debian.is_template and debian.instance_uuid and debian.host is not None
    assert debian.folder.path == "DC0/vm/Templates"
    assert debian.marker == ""  # not ours
    paths = set(Folder.objects.filter(vcenter=vc).values_list("path", flat=True))
    assert {"DC0/vm", "DC0/vm/Templates", "DC0/vm/vmportal"} <= paths

    cluster = Cluster.objects.get(vcenter=vc, name="DC0_C0")
    assert cluster.resource_pool_moid
    host = cluster.hosts.order_by("name").first()
    assert host.datacenter.name == "DC0"
    assert host.cpu_capacity_mhz > 0 and host.memory_capacity_mb > 0
    assert host.cpu_threads and host.cpu_threads > 0  # bounds the vCPUs a pool may ask for
    assert host.cpu_usage_mhz is not None and host.memory_usage_mb is not None
    assert host.connection_state == "connected"
    assert {d.name for d in host.datastores.all()} >= {"LocalDS_0", "LocalDS_1"}
    assert host.networks.exists()
    ds = Datastore.objects.get(vcenter=vc, name="LocalDS_0")
    assert ds.capacity_bytes > ds.free_bytes > 0 and ds.accessible

    vc.refresh_from_db()
    assert vc.status == VCenter.Status.REACHABLE and vc.status_reason == ""
    assert vc.last_sync_at is not None and vc.latency_ms is not None
    # O(1) round trips: view, one retrieve, (extraConfig on the simulator), destroy.
    assert report.vsphere_calls <= 4
    assert HostLoadSample.objects.filter(host__vcenter=vc).count() == expected["hosts"]


@pytest.mark.vcsim
def test_second_sync_changes_nothing_and_duplicates_nothing(vcsim, vcenter_for):
    vc = vcenter_for(vcsim)
    sync_inventory(vc)
    before = {m: m.objects.filter(vcenter=vc).count() for m in (Host, Cluster, Folder, InventoryVM, Datastore)}
    links = Host.datastores.through.objects.filter(host__vcenter=vc).count()

    again = sync_inventory(vc)

    assert again.ok
    assert all((c.created, c.updated, c.removed) == (0, 0, 0) for c in again.counts.values()), again
    assert {m: m.objects.filter(vcenter=vc).count() for m in before} == before
    assert Host.datastores.through.objects.filter(host__vcenter=vc).count() == links
    assert again.vsphere_calls <= 3  # the simulator's lack of keyed paths is remembered


@pytest.mark.vcsim
def test_vm_created_then_destroyed_in_vcenter_appears_then_disappears(vcsim_factory, vcenter_for, raw, monkeypatch):
    sim = vcsim_factory()
    si = raw(sim)
    vc = vcenter_for(sim)
    sync_inventory(vc)

    vm = clone_vm(si, "sync-victim", marker="vmportal:42")
    # Forget that the simulator lacks keyed property paths: the marker must come
    # through the probe-and-fall-back route too (one more call).
    monkeypatch.setattr(vsphere_inventory, "_NO_KEYED_PATHS", set())
    report = sync_inventory(vc)
    row = InventoryVM.objects.get(vcenter=vc, name="sync-victim")
    assert report.counts["vms"].created == 1
    assert report.vsphere_calls == 4
    assert row.path == "DC0/vm/vmportal/sync-victim"
    assert row.folder.path == "DC0/vm/vmportal"
    assert row.marker == "vmportal:42"
    assert not row.is_template and row.power_state == "poweredOff"

    destroy_vm(vm)
    report = sync_inventory(vc)

    assert report.counts["vms"].removed == 1
    assert report.vsphere_calls == 3
    assert not InventoryVM.objects.filter(vcenter=vc, name="sync-victim").exists()
    assert InventoryVM.objects.filter(vcenter=vc, name="debian-12").exists()


@pytest.mark.vcsim
def test_maintenance_and_disconnected_hosts_are_mirrored(vcsim_factory, vcenter_for):
    sim = vcsim_factory("-maint-hosts", "1", "-disconnected-hosts", "1")
    vc = vcenter_for(sim)

    assert sync_inventory(vc).ok

    hosts = Host.objects.filter(vcenter=vc)
    maintenance = hosts.filter(in_maintenance=True)
    disconnected = hosts.exclude(connection_state="connected")
    assert maintenance.count() == 1 and disconnected.count() == 1
    assert disconnected.get().connection_state == "disconnected"
    assert disconnected.get().config_issues >= 1
    assert hosts.filter(in_maintenance=False, connection_state="connected", config_issues=0).count() == \
        hosts.count() - 2


@pytest.mark.vcsim
def test_vanished_folder_still_used_by_a_pool_is_kept(vcsim_factory, vcenter_for, raw):
    sim = vcsim_factory()
    si = raw(sim)
    vc = vcenter_for(sim)
    find(si, "DC0/vm").CreateFolder("doomed")
    sync_inventory(vc)
    folder = Folder.objects.get(vcenter=vc, path="DC0/vm/doomed")
    pool = factories.pool(vcenter=vc, cluster=Cluster.objects.get(vcenter=vc, name="DC0_C0"), folder=folder)

    WaitForTask(find(si, "DC0/vm/doomed").Destroy_Task())
    report = sync_inventory(vc)

    assert report.ok
    assert report.counts["folders"].kept == 1 and report.counts["folders"].removed == 0
    pool.refresh_from_db()
    assert pool.folder_id == folder.pk


@pytest.mark.vcsim
def test_load_samples_are_bounded_by_age_and_count(vcsim, vcenter_for, monkeypatch):
    monkeypatch.setattr(services, "SAMPLES_PER_HOST", 3)
    vc = vcenter_for(vcsim)
    sync_inventory(vc)
    host = Host.objects.filter(vcenter=vc).first()
    HostLoadSample.objects.create(host=host, at=timezone.now() - timedelta(hours=25), cpu_usage_mhz=1,
                                  memory_usage_mb=1)

    for _ in range(4):
        report = sync_inventory(vc)

    assert report.samples_pruned >= 1
    per_host = {h.pk: h.load_samples.count() for h in Host.objects.filter(vcenter=vc)}
    assert set(per_host.values()) == {3}
    assert not HostLoadSample.objects.filter(at__lt=timezone.now() - timedelta(hours=24)).exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_vcenter_is_marked_with_a_reason_and_keeps_its_rows(vcenter_for):
    vc = VCenter.objects.create(name="gone", host=f"127.0.0.1:{_closed_port()}", username="u", password="p",
                                insecure=True)
    dc = Datacenter.objects.create(vcenter=vc, moid="datacenter-2", name="DC0")

    report = sync_inventory(vc)

    assert not report.ok
    assert "connection refused" in report.error
    vc.refresh_from_db()
    assert vc.status == VCenter.Status.UNREACHABLE
    assert "connection refused" in vc.status_reason and vc.latency_ms is None
    assert Datacenter.objects.filter(pk=dc.pk).exists()
    assert "sync failed" in str(report)


@pytest.mark.vcsim
def test_wrong_password_is_reported_as_such(vcsim, vcenter_for):
    vc = vcenter_for(vcsim, password="not-the-password")

    report = sync_inventory(vc)

    vc.refresh_from_db()
    assert not report.ok and vc.status == VCenter.Status.UNREACHABLE
    assert "user name or password" in vc.status_reason


@pytest.mark.vcsim
def test_sync_command_prints_the_report(vcsim, vcenter_for, capsys):
    vc = vcenter_for(vcsim)

    call_command("sync_inventory", vcenter=vc.name)

    out = capsys.readouterr().out
    assert vc.name in out and "vSphere calls" in out and "hosts" in out
    with pytest.raises(CommandError, match="No vCenter named"):
        call_command("sync_inventory", vcenter="nope")


@pytest.mark.vcsim
def test_apply_changes_writes_only_what_differs(vcsim, vcenter_for):
    vc = vcenter_for(vcsim)
    sync_inventory(vc)
    debian = InventoryVM.objects.get(vcenter=vc, name="debian-12")
    host = Host.objects.filter(vcenter=vc, cpu_usage_mhz__isnull=False).first()
    samples = HostLoadSample.objects.filter(host=host).count()

    same = services.apply_changes(vc, [VMChange("modify", debian.moid, {"power_state": debian.power_state})])
    assert (same.created, same.updated, same.removed) == (0, 0, 0)

    report = services.apply_changes(vc, [
        VMChange("modify", debian.moid, {"guest_ip": "10.0.0.5", "guest_hostname": None}),
        VMChange("enter", "vm-new", {"name": "new", "folder_moid": debian.folder.moid, "host_moid": host.moid,
                                     "power_state": "poweredOn", "is_template": False, "marker": "vmportal:1"}),
        VMChange("enter", "vm-elsewhere", {"name": "x", "folder_moid": "folder-unknown", "host_moid": None}),
        VMChange("enter", "vm-short-lived", {"name": "y", "folder_moid": debian.folder.moid}),
        VMChange("leave", "vm-short-lived"),
        HostChange("modify", host.moid, {"cpu_usage_mhz": None}),  # stats gone: unknown, not 0
    ])

    assert (report.created, report.updated, report.removed, report.deferred) == (1, 2, 0, 1)
    debian.refresh_from_db()
    assert debian.guest_ip == "10.0.0.5" and debian.guest_hostname == ""
    new = InventoryVM.objects.get(vcenter=vc, moid="vm-new")
    assert new.path == f"{debian.folder.path}/new" and new.host == host and new.marker == "vmportal:1"
    assert not InventoryVM.objects.filter(vcenter=vc, moid__in=["vm-elsewhere", "vm-short-lived"]).exists()
    host.refresh_from_db()
    assert host.cpu_usage_mhz is None and host.cpu_percent is None
    assert HostLoadSample.objects.filter(host=host).count() == samples  # no sample of unknown load

    gone = services.apply_changes(vc, [VMChange("leave", "vm-new")])
    assert gone.removed == 1 and not InventoryVM.objects.filter(vcenter=vc, moid="vm-new").exists()
