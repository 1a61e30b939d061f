"""VM operations against the simulator: clones, waits, power, destroy, lookups, folders."""

from __future__ import annotations

import time

import pytest
from pyVmomi import vim

from apps.vsphere import operations as ops
from apps.vsphere import tasks
from apps.vsphere.errors import (
    DuplicateName,
    InvalidPowerState,
    InvalidSpec,
    ObjectNotFound,
    OperationTimeout,
    ResourceExhausted,
)
from apps.vsphere.session import connect
from apps.vsphere.types import (
    BASE_SNAPSHOT,
    OWNER_KEY,
    CloneResult,
    CloneSpec,
    Customization,
    FolderInfo,
    TaskHandle,
    TemplateInfo,
)
from tests.vsphere import POOL_FOLDER, Inventory, endpoint_for, inventory, unique

pytestmark = pytest.mark.vcsim


@pytest.fixture(scope="module")
def conn(vcsim):
    with connect(endpoint_for(vcsim)) as c:
        yield c


@pytest.fixture(scope="module")
def inv(conn) -> Inventory:
    return inventory(conn)


@pytest.fixture(scope="module")
def base(conn, inv) -> TemplateInfo:
    """A prepared private copy of debian-12, so the shared templates stay pristine."""
    copy = ops.copy_template_to_cluster(
        conn,
        template_moid=inv.template,
        name=unique("ops-base"),
        folder_moid=inv.templates_folder,
        resource_pool_moid=inv.pool_c0,
    )
    assert copy.created and copy.template.ready_for_linked_clones
    return copy.template


@pytest.fixture
def folder(conn):
    made = ops.create_folder(conn, POOL_FOLDER, unique("t"))
    yield made
    for vm in ops.list_folder_vms(conn, made.moid):
        ops.destroy_vm(conn, vm.moid, allow_template=True)


def clone_spec(base: TemplateInfo, folder: FolderInfo, inv: Inventory, **overrides) -> CloneSpec:
    values = {
        "template_moid": base.moid,
        "name": unique("vm"),
        "folder_moid": folder.moid,
        "resource_pool_moid": inv.pool_c0,
        "snapshot_moid": base.snapshot_moid,
        "power_on": False,
    }
    values.update(overrides)
    return CloneSpec(**values)


def test_create_folder_is_idempotent_and_refuses_a_vm_in_the_way(conn, folder, base, inv):
    name = unique("f")
    first = ops.create_folder(conn, folder.path, name)
    again = ops.create_folder(conn, folder.moid, name)
    assert first == again
    assert first.path == f"{folder.path}/{name}"
    vm = ops.clone_vm(conn, clone_spec(base, folder, inv))
    with pytest.raises(DuplicateName, match="VirtualMachine named"):
        ops.create_folder(conn, folder.path, vm.name)
    with pytest.raises(ObjectNotFound):
        ops.create_folder(conn, "DC0/vm/no-such-folder", "x")


def test_list_folder_vms_lists_only_vms_in_one_round_trip(conn, folder, base, inv):
    sub = ops.create_folder(conn, folder.moid, "sub")
    a = ops.clone_vm(conn, clone_spec(base, folder, inv, name="a", extra_config={OWNER_KEY: "test-install"}))
    ops.clone_vm(conn, clone_spec(base, folder, inv, name="b"))
    ops.clone_vm(conn, clone_spec(base, sub, inv, name="in-sub"))

    before = conn.calls
    listed = ops.list_folder_vms(conn, folder.path)
    used = conn.calls - before
    assert used["RetrievePropertiesEx"] == 1  # not one read per VM
    assert [v.name for v in listed] == ["a", "b"]  # neither the sub-folder nor its VM
    first = listed[0]
    assert (first.moid, first.path, first.owner, first.folder_moid) == (
        a.moid,
        f"{folder.path}/a",
        "test-install",
        folder.moid,
    )
    assert first.power_state == "poweredOff" and not first.is_template
    assert ops.list_folder_vms(conn, folder.moid) == listed
    assert [v.name for v in ops.list_folder_vms(conn, sub.path)] == ["in-sub"]
    ops.destroy_vm(conn, ops.list_folder_vms(conn, sub.moid)[0].moid)


def test_find_vm_by_inventory_path_or_instance_uuid(conn, folder, base, inv):
    made = ops.clone_vm(conn, clone_spec(base, folder, inv))
    by_path = ops.find_vm(conn, path=made.path)
    by_uuid = ops.find_vm(conn, instance_uuid=made.instance_uuid)
    assert by_path == by_uuid
    assert by_path is not None and by_path.moid == made.moid and by_path.path == made.path
    assert ops.find_vm(conn, path=f"{folder.path}/nobody") is None
    assert ops.find_vm(conn, instance_uuid="00000000-0000-0000-0000-000000000000") is None
    with pytest.raises(InvalidSpec, match="not a VM"):
        ops.find_vm(conn, path=folder.path)
    with pytest.raises(InvalidSpec):
        ops.find_vm(conn)


def test_linked_clone_applies_overrides_marker_and_customisation_then_powers_on(conn, folder, base, inv):
    spec = clone_spec(
        base,
        folder,
        inv,
        name="web-001",
        snapshot_moid=None,  # looked up from the template's base snapshot
        cpus=4,
        memory_mb=3072,
        annotation="pool=web",
        extra_config={OWNER_KEY: "test-install", "guestinfo.userdata": "I2Nsb3VkLWNvbmZpZw=="},
        customization=Customization(
            hostname="web-001", domain="lab.test", ip="10.9.0.21", gateway="10.9.0.1", dns=("10.9.0.2",)
        ),
        power_on=True,
    )
    result = ops.clone_vm(conn, spec)
    assert isinstance(result, CloneResult)
    assert result.power_state == "poweredOn" and result.path == f"{folder.path}/web-001"
    vm = ops.get_vm(conn, result.moid)
    assert (vm.cpus, vm.memory_mb, vm.annotation, vm.owner) == (4, 3072, "pool=web", "test-install")
    guest = ops.wait_until_usable(conn, result.moid, timeout=10, expected_hostname="web-001")
    assert guest.ip == "10.9.0.21"
    assert guest.hostname.split(".")[0] == "web-001"


def test_full_clone_lands_on_the_requested_host_and_datastore(conn, folder, base, inv):
    host = inv.hosts_c1[1]
    datastore = inv.datastores["LocalDS_1"]
    result = ops.clone_vm(
        conn,
        clone_spec(
            base, folder, inv, linked=False, resource_pool_moid=inv.pool_c1, host_moid=host, datastore_moid=datastore
        ),
    )
    assert result.host_moid == host
    assert result.datastore_moids == (datastore,)
    assert result.power_state == "poweredOff"


def test_clone_with_a_taken_name_is_duplicate_name(conn, folder, base, inv):
    spec = clone_spec(base, folder, inv)
    ops.clone_vm(conn, spec)
    with pytest.raises(DuplicateName, match=f"clone '{spec.name}' failed"):
        ops.clone_vm(conn, spec)
    assert [v.name for v in ops.list_folder_vms(conn, folder.moid)] == [spec.name]


def test_linked_clone_needs_the_base_snapshot(conn, folder, base, inv):
    plain = ops.clone_vm(conn, clone_spec(base, folder, inv, linked=False))
    with pytest.raises(InvalidSpec, match=f"has no '{BASE_SNAPSHOT}' snapshot"):
        ops.clone_vm(conn, clone_spec(base, folder, inv, template_moid=plain.moid, snapshot_moid=None))


def test_bad_customisation_is_rejected_before_anything_is_created(conn, folder, base, inv):
    with pytest.raises(InvalidSpec, match="not a valid host name"):
        ops.clone_vm(conn, clone_spec(base, folder, inv, customization=Customization(hostname="bad_name!")))
    with pytest.raises(InvalidSpec, match="not an IP address"):
        ops.clone_vm(conn, clone_spec(base, folder, inv, customization=Customization(hostname="ok", ip="10.1")))
    assert ops.list_folder_vms(conn, folder.moid) == []


def test_clone_many_keeps_all_tasks_in_flight_and_waits_with_one_read(conn, folder, base, inv):
    taken = ops.clone_vm(conn, clone_spec(base, folder, inv))
    specs = [clone_spec(base, folder, inv, name=f"burst-{i}", power_on=True) for i in range(8)]
    specs.insert(3, clone_spec(base, folder, inv, name=taken.name))
    before = conn.calls
    results = ops.clone_many(conn, specs, timeout=60)
    used = conn.calls - before
    # Powered on by the clone task itself; the finished tasks are seen with one read, so
    # no collector is set up at all; one more read fetches the clones' properties.
    assert used["CloneVM_Task"] == 8 and used["PowerOnVM_Task"] == 0
    assert used["CreateFilter"] == 0
    assert used["RetrievePropertiesEx"] <= 3
    assert isinstance(results[3], DuplicateName)
    made = [r for r in results if isinstance(r, CloneResult)]
    assert [r.name for r in made] == [f"burst-{i}" for i in range(8)]
    assert all(r.power_state == "poweredOn" for r in made)
    assert all(r.path == f"{folder.path}/{r.name}" for r in made)


def test_clone_many_without_paths_skips_the_folder_read(conn, folder, base, inv):
    specs = [clone_spec(base, folder, inv, name=f"nopath-{i}", power_on=True) for i in range(3)]
    with_paths = conn.calls.copy()
    ops.clone_many(conn, specs[:1], timeout=60)
    with_paths = conn.calls - with_paths
    before = conn.calls.copy()
    results = ops.clone_many(conn, specs[1:], timeout=60, with_paths=False)
    used = conn.calls - before
    assert [(r.name, r.path, r.power_state) for r in results] == [
        ("nopath-1", "", "poweredOn"), ("nopath-2", "", "poweredOn")]
    assert used["RetrievePropertiesEx"] == with_paths["RetrievePropertiesEx"] - 1  # no parent walk


def test_wait_until_usable_times_out_naming_what_is_missing(conn, folder, base, inv):
    result = ops.clone_vm(conn, clone_spec(base, folder, inv))
    started = time.monotonic()
    with pytest.raises(OperationTimeout, match="the VM is poweredOff") as caught:
        ops.wait_until_usable(conn, result.moid, timeout=1)
    assert time.monotonic() - started < 4
    assert "wait until usable" in str(caught.value) and not caught.value.permanent
    ops.power_on(conn, result.moid)
    with pytest.raises(OperationTimeout, match="expected 'someone-else'"):
        ops.wait_until_usable(conn, result.moid, timeout=1, expected_hostname="someone-else")
    guest = ops.wait_until_usable(conn, result.moid, timeout=10, require_ip=False)
    assert guest.tools_status == "guestToolsRunning" or guest.ip or guest.hostname


def test_power_on_and_off_are_idempotent(conn, folder, base, inv):
    moid = ops.clone_vm(conn, clone_spec(base, folder, inv)).moid
    assert ops.power_on(conn, moid) == "poweredOn"
    assert ops.power_on(conn, moid) == "poweredOn"
    assert ops.get_vm(conn, moid).power_state == "poweredOn"
    assert ops.power_off(conn, moid) == "poweredOff"
    assert ops.power_off(conn, moid) == "poweredOff"


def test_destroy_powers_off_first_and_a_second_destroy_is_fine(conn, folder, base, inv):
    moid = ops.clone_vm(conn, clone_spec(base, folder, inv, power_on=True)).moid
    assert ops.destroy_vm(conn, moid) is True
    assert ops.destroy_vm(conn, moid) is False
    with pytest.raises(ObjectNotFound):
        ops.get_vm(conn, moid)


def test_destroy_refuses_templates_and_vms_with_another_owner(conn, folder, base, inv):
    with pytest.raises(InvalidSpec, match="is a template"):
        ops.destroy_vm(conn, base.moid)
    moid = ops.clone_vm(conn, clone_spec(base, folder, inv, extra_config={OWNER_KEY: "install-a"})).moid
    with pytest.raises(InvalidSpec, match="not marked as ours"):
        ops.destroy_vm(conn, moid, expected_owner="install-b")
    assert ops.destroy_vm(conn, moid, expected_owner="install-a") is True


def test_relocate_moves_a_vm_to_another_host_and_datastore(conn, folder, base, inv):
    moid = ops.clone_vm(conn, clone_spec(base, folder, inv, linked=False)).moid
    host, datastore = inv.hosts_c0[2], inv.datastores["LocalDS_1"]
    moved = ops.relocate_vm(conn, moid, host_moid=host, datastore_moid=datastore)
    assert moved.host_moid == host
    assert datastore in moved.datastore_moids
    with pytest.raises(InvalidSpec):
        ops.relocate_vm(conn, moid)


def test_add_disk_adds_a_disk_of_the_requested_size(conn, folder, base, inv):
    moid = ops.clone_vm(conn, clone_spec(base, folder, inv)).moid
    first = ops.add_disk(conn, moid, 2)
    second = ops.add_disk(conn, moid, 0.5)
    assert first.capacity_gb == 2.0 and second.capacity_gb == 0.5
    assert first.key != second.key and first.unit_number != second.unit_number
    with pytest.raises(InvalidSpec):
        ops.add_disk(conn, moid, 0)


def test_snapshots_can_be_created_reverted_and_removed_idempotently(conn, folder, base, inv):
    moid = ops.clone_vm(conn, clone_spec(base, folder, inv)).moid
    one = ops.create_snapshot(conn, moid, "one", description="first")
    two = ops.create_snapshot(conn, moid, "two")
    assert one.description == "first" and two.is_current
    ops.revert_snapshot(conn, moid, "one")
    assert [s.name for s in ops.list_snapshots(conn, moid) if s.is_current] == ["one"]
    with pytest.raises(ObjectNotFound, match="no snapshot 'three'"):
        ops.revert_snapshot(conn, moid, "three")
    assert ops.remove_snapshot(conn, moid, two.moid) is True
    assert ops.remove_snapshot(conn, moid, "two") is False
    assert [s.name for s in ops.list_snapshots(conn, moid)] == ["one"]


def test_wait_for_tasks_reports_every_task_separately(conn, folder, base, inv):
    off = ops.clone_vm(conn, clone_spec(base, folder, inv)).moid
    on = ops.clone_vm(conn, clone_spec(base, folder, inv)).moid
    handles = [
        tasks.start_task(conn, conn.ref(vim.VirtualMachine, on).PowerOnVM_Task, operation="power on", obj="on"),
        tasks.start_task(conn, conn.ref(vim.VirtualMachine, off).PowerOffVM_Task, operation="power off", obj="off"),
        TaskHandle("task-does-not-exist", operation="clone", obj="ghost"),
    ]
    outcomes = tasks.wait_for_tasks(conn, handles, timeout=10)
    assert [o.state for o in outcomes] == ["success", "error", "error"]
    assert isinstance(outcomes[1].error, InvalidPowerState)
    assert str(outcomes[1].error).startswith("power off 'off' failed")
    assert isinstance(outcomes[2].error, ObjectNotFound) and "outcome is unknown" in str(outcomes[2].error)


def test_clone_out_of_disk_space_is_a_permanent_resource_error_and_leaves_nothing(vcsim_factory):
    sim = vcsim_factory("-fail-rate", "1", "-fail-methods", "CloneVM_Task", "-fail-fault", "NoDiskSpace")
    with connect(endpoint_for(sim)) as c:
        sim_inv = inventory(c)
        target = ops.create_folder(c, POOL_FOLDER, "full")
        template = ops.register_template(c, "DC0/vm/Templates/debian-12")
        spec = clone_spec(template, target, sim_inv, name="web-002", linked=False, power_on=True)
        with pytest.raises(ResourceExhausted) as caught:
            ops.clone_vm(c, spec)
        assert caught.value.permanent
        assert str(caught.value).startswith("clone 'web-002' failed: not enough disk space")
        assert "NoDiskSpace" in str(caught.value)
        assert ops.list_folder_vms(c, target.moid) == []
