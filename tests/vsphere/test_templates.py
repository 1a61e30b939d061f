"""Templates against the simulator: register, prepare, OVF/OVA deploy, per-cluster copies."""

from __future__ import annotations

import io
import os
import tarfile
import threading
import time
from pathlib import Path

import pytest
from pyVmomi import vim

from apps.vsphere import operations as ops
from apps.vsphere.errors import (
    DuplicateName,
    InvalidPowerState,
    InvalidSpec,
    ObjectNotFound,
    OperationTimeout,
)
from apps.vsphere.operations import ovf
from apps.vsphere.session import connect
from apps.vsphere.types import BASE_SNAPSHOT, CloneSpec, TemplateInfo
from tests.vsphere import POOL_FOLDER, TEMPLATE, Inventory, endpoint_for, http_server, inventory, unique

pytestmark = pytest.mark.vcsim

DISK = os.urandom(48 * 1024)  # a few KB stand in for the VMDK; the simulator discards NFC data anyway
OVF = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
 xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
 xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
 xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References><File ovf:href="disk1.vmdk" ovf:id="file1" ovf:size="SIZE"/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1"
     ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection><Info>nets</Info><Network ovf:name="VM Network"><Description>net</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="tiny">
    <Info>tiny vm</Info><Name>tiny</Name>
    <OperatingSystemSection ovf:id="94" vmw:osType="ubuntu64Guest"><Info>os</Info></OperatingSystemSection>
    <VirtualHardwareSection><Info>hw</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName><vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType></System>
      <Item><rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits><rasd:ElementName>2 vCPU</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>1024MB</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>1024</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:ElementName>SCSI0</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>disk1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation><rasd:Connection>VM Network</rasd:Connection>
        <rasd:ElementName>eth0</rasd:ElementName><rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
""".replace("SIZE", str(len(DISK)))


def ova_bytes(*, with_disk: bool = True, descriptor: str = OVF) -> bytes:
    """An OVA: a tar with the descriptor first (as the standard demands), then the disk."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        members = [("tiny.ovf", descriptor.encode())] + ([("disk1.vmdk", DISK)] if with_disk else [])
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def conn(vcsim):
    with connect(endpoint_for(vcsim)) as c:
        yield c


@pytest.fixture(scope="module")
def inv(conn) -> Inventory:
    return inventory(conn)


@pytest.fixture
def folder(conn):
    made = ops.create_folder(conn, POOL_FOLDER, unique("tpl"))
    yield made
    for vm in ops.list_folder_vms(conn, made.moid):
        ops.destroy_vm(conn, vm.moid, allow_template=True)


def plain_vm(conn, inv: Inventory, folder, *, power_on: bool = False) -> str:
    """A full clone of debian-12 as an ordinary VM, i.e. a template-to-be without snapshot."""
    spec = CloneSpec(
        template_moid=inv.template,
        name=unique("plain"),
        folder_moid=folder.moid,
        resource_pool_moid=inv.pool_c0,
        linked=False,
        power_on=power_on,
    )
    return ops.clone_vm(conn, spec).moid


def deploy_kwargs(inv: Inventory, folder, **overrides) -> dict:
    kwargs = {
        "name": unique("ovf"),
        "folder_moid": folder.moid,
        "resource_pool_moid": inv.pool_c0,
        "datastore_moid": inv.datastores["LocalDS_0"],
        "network_mapping": {"VM Network": "VM Network"},
    }
    kwargs.update(overrides)
    return kwargs


# ---------------------------------------------------------------- register and prepare


def test_register_template_by_inventory_path(conn, inv):
    info = ops.register_template(conn, TEMPLATE)
    assert isinstance(info, TemplateInfo)
    assert (info.moid, info.name, info.path, info.is_template) == (inv.template, "debian-12", TEMPLATE, True)
    assert (info.cpus, info.memory_mb, info.disk_gb) == (2, 2048, 16.0)
    assert info.instance_uuid and info.datastore_moids


def test_register_needs_an_existing_vm_or_template(conn):
    with pytest.raises(ObjectNotFound, match="no VM or template at 'DC0/vm/Templates/nope'"):
        ops.register_template(conn, "DC0/vm/Templates/nope")
    with pytest.raises(InvalidSpec, match="is a Folder, not a VM or template"):
        ops.register_template(conn, "DC0/vm/Templates")


def test_prepare_takes_the_base_snapshot_once_and_marks_the_template(conn, inv, folder):
    moid = plain_vm(conn, inv, folder)
    first = ops.prepare_template(conn, moid)
    assert first.is_template and first.snapshot_name == BASE_SNAPSHOT and first.ready_for_linked_clones
    again = ops.prepare_template(conn, moid)
    assert again == first
    assert [s.name for s in ops.list_snapshots(conn, moid)] == [BASE_SNAPSHOT]


def test_prepare_of_a_template_without_snapshot_adds_one(conn, inv, folder):
    moid = plain_vm(conn, inv, folder)
    conn.ref(vim.VirtualMachine, moid).MarkAsTemplate()
    info = ops.prepare_template(conn, moid)
    assert info.is_template and info.snapshot_moid


def test_prepare_refuses_a_running_vm_and_leaves_it_alone(conn, inv, folder):
    moid = plain_vm(conn, inv, folder, power_on=True)
    with pytest.raises(InvalidPowerState, match="power the VM off first"):
        ops.prepare_template(conn, moid)
    assert ops.list_snapshots(conn, moid) == []
    assert not ops.get_vm(conn, moid).is_template


# ---------------------------------------------------------------- OVF / OVA


def test_deploy_ova_upload_reports_progress_and_gives_a_prepared_template(conn, inv, folder, monkeypatch):
    monkeypatch.setattr(ovf, "UPLOAD_CHUNK", 4096)  # many chunks, so progress has steps
    seen: list[int] = []
    info = ops.deploy_ovf(conn, source=io.BytesIO(ova_bytes()), progress=seen.append, **deploy_kwargs(inv, folder))
    assert info.ready_for_linked_clones
    assert (info.cpus, info.memory_mb, info.guest_id) == (2, 1024, "ubuntu64Guest")
    assert info.path == f"{folder.path}/{info.name}"
    assert seen[0] == 0 and seen[-1] == 100
    assert seen == sorted(seen) and len(seen) > 5


@pytest.mark.parametrize("kind", ["ovf-url", "ova-url", "ovf-path"])
def test_deploy_from_url_or_local_path(conn, inv, folder, tmp_path: Path, kind):
    (tmp_path / "tiny.ovf").write_text(OVF)
    (tmp_path / "disk1.vmdk").write_bytes(DISK)
    (tmp_path / "tiny.ova").write_bytes(ova_bytes())
    with http_server(tmp_path) as base_url:
        source = {
            "ovf-url": f"{base_url}tiny.ovf",  # the disk is fetched from the sibling URL
            "ova-url": f"{base_url}tiny.ova",  # streamed, never stored
            "ovf-path": str(tmp_path / "tiny.ovf"),
        }[kind]
        info = ops.deploy_ovf(conn, source=source, **deploy_kwargs(inv, folder))
    assert info.ready_for_linked_clones and info.memory_mb == 1024


def test_failed_upload_aborts_the_lease_and_leaves_no_vm(conn, inv, folder):
    kwargs = deploy_kwargs(inv, folder)
    with pytest.raises(InvalidSpec, match="the package lacks disk1.vmdk"):
        ops.deploy_ovf(conn, source=io.BytesIO(ova_bytes(with_disk=False)), **kwargs)
    assert ops.find_vm(conn, path=f"{folder.path}/{kwargs['name']}") is None


def test_deploy_rejects_bad_packages_and_taken_names(conn, inv, folder):
    with pytest.raises(InvalidSpec, match="not a valid OVA"):
        ops.deploy_ovf(conn, source=io.BytesIO(b"this is no tar file" * 100), **deploy_kwargs(inv, folder))
    # (An empty <Envelope/> would be better still, but it crashes the simulator's handler.)
    bad_quantity = OVF.replace("<rasd:VirtualQuantity>1024", "<rasd:VirtualQuantity>lots")
    with pytest.raises(InvalidSpec, match="vCenter said: InvalidArgument"):
        ops.deploy_ovf(conn, source=io.BytesIO(ova_bytes(descriptor=bad_quantity)), **deploy_kwargs(inv, folder))
    with pytest.raises(ObjectNotFound, match="no network 'no-such-net'"):
        ops.deploy_ovf(
            conn,
            source=io.BytesIO(ova_bytes()),
            **deploy_kwargs(inv, folder, network_mapping={"VM Network": "no-such-net"}),
        )
    taken = ops.deploy_ovf(conn, source=io.BytesIO(ova_bytes()), **deploy_kwargs(inv, folder))
    with pytest.raises(DuplicateName):
        ops.deploy_ovf(conn, source=io.BytesIO(ova_bytes()), **deploy_kwargs(inv, folder, name=taken.name))
    assert [v.name for v in ops.list_folder_vms(conn, folder.moid)] == [taken.name]


# ---------------------------------------------------------------- one copy per cluster


def test_copy_to_another_cluster_is_a_prepared_template_there(conn, inv, folder):
    copy = ops.copy_template_to_cluster(
        conn,
        template_moid=inv.template,
        name=unique("c1-copy"),
        folder_moid=folder.moid,
        resource_pool_moid=inv.pool_c1,
        datastore_moid=inv.datastores["LocalDS_1"],
    )
    assert copy.created and copy.template.ready_for_linked_clones
    assert copy.template.host_moid in inv.hosts_c1
    assert copy.template.datastore_moids == (inv.datastores["LocalDS_1"],)
    again = ops.copy_template_to_cluster(
        conn,
        template_moid=inv.template,
        name=copy.template.name,
        folder_moid=folder.moid,
        resource_pool_moid=inv.pool_c1,
    )
    assert not again.created and again.template == copy.template


def test_concurrent_copies_of_one_template_have_one_winner(vcsim_factory):
    # The clone delay holds every racer inside CloneVM_Task at once, so the losers meet
    # vSphere's DuplicateName rather than simply finding the finished copy.
    sim = vcsim_factory("-method-delay", "CloneVM_Task:400")
    ep = endpoint_for(sim)
    with connect(ep) as c:
        sim_inv = inventory(c)
    barrier = threading.Barrier(4)
    results: list = []
    clone_calls: list[int] = []

    def racer() -> None:
        with connect(ep) as c:
            barrier.wait()
            try:
                results.append(
                    ops.copy_template_to_cluster(
                        c,
                        template_moid=sim_inv.template,
                        name="debian-12-c1",
                        folder_moid=sim_inv.templates_folder,
                        resource_pool_moid=sim_inv.pool_c1,
                        timeout=20,
                    )
                )
            except Exception as exc:  # noqa: BLE001 - asserted below
                results.append(exc)
            clone_calls.append(c.calls["CloneVM_Task"])

    threads = [threading.Thread(target=racer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(not isinstance(r, Exception) for r in results), results
    assert sum(r.created for r in results) == 1
    assert len({r.template.moid for r in results}) == 1
    assert all(r.template.ready_for_linked_clones for r in results)
    assert sum(clone_calls) >= 2, "the race did not happen: only one racer tried to clone"
    with connect(ep) as c:
        named = [v for v in ops.list_folder_vms(c, sim_inv.templates_folder) if v.name == "debian-12-c1"]
        assert len(named) == 1


def test_a_waiting_copier_gets_the_winners_template_once_it_is_ready(conn, inv, folder):
    winner = plain_vm(conn, inv, folder)  # the winner's clone exists but is not prepared yet
    name = ops.get_vm(conn, winner).name
    outcome: list = []

    def loser() -> None:
        with connect(conn.endpoint) as c:
            outcome.append(
                ops.copy_template_to_cluster(
                    c,
                    template_moid=inv.template,
                    name=name,
                    folder_moid=folder.moid,
                    resource_pool_moid=inv.pool_c0,
                    timeout=15,
                )
            )

    thread = threading.Thread(target=loser)
    thread.start()
    time.sleep(0.5)
    prepared = ops.prepare_template(conn, winner)
    thread.join()
    assert outcome and not outcome[0].created
    assert outcome[0].template == prepared


def test_waiting_for_a_copy_nobody_finishes_times_out_clearly(conn, inv, folder):
    stuck = plain_vm(conn, inv, folder)
    name = ops.get_vm(conn, stuck).name
    started = time.monotonic()
    with pytest.raises(OperationTimeout) as caught:
        ops.copy_template_to_cluster(
            conn,
            template_moid=inv.template,
            name=name,
            folder_moid=folder.moid,
            resource_pool_moid=inv.pool_c0,
            timeout=1,
        )
    assert time.monotonic() - started < 4
    text = str(caught.value)
    assert f"'{name}'" in text and f"no '{BASE_SNAPSHOT}' snapshot yet" in text
    assert "another worker started this copy" in text
