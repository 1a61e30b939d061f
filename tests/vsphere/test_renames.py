"""Objects renamed in vCenter are used by their new names at once: the vSphere layer keeps no
per-process copy of names or paths that a second worker host (or a rename) would make stale."""

from __future__ import annotations

import pytest
from pyVmomi import vim

from apps.vsphere import operations as ops
from apps.vsphere import tasks
from apps.vsphere.session import connect
from apps.vsphere.types import CloneSpec
from tests.vsphere import POOL_FOLDER, endpoint_for, inventory, unique

pytestmark = pytest.mark.vcsim


@pytest.fixture(scope="module")
def sim(request):
    from tests import vcsim as launcher  # noqa: PLC0415

    started = launcher.start()
    request.addfinalizer(started.stop)
    return started


@pytest.fixture(scope="module")
def conn(sim):
    with connect(endpoint_for(sim)) as c:
        yield c


def rename(conn, kind, moid: str, name: str) -> None:
    tasks.run_task(conn, conn.ref(kind, moid).Rename_Task, newName=name, operation="rename", obj=moid, timeout=30)


def test_a_datastore_renamed_in_vcenter_is_written_to_by_its_new_name(conn):
    ds = inventory(conn).datastores["LocalDS_1"]
    path = f"vmportal-seeds/{unique('seed')}.iso"
    assert ops.upload_datastore_file(conn, ds, path, b"first") == f"[LocalDS_1] {path}"
    rename(conn, vim.Datastore, ds, "SharedDS_renamed")
    try:
        again = f"vmportal-seeds/{unique('seed')}.iso"
        assert ops.upload_datastore_file(conn, ds, again, b"second") == f"[SharedDS_renamed] {again}"
        assert ops.datastore_path(conn, ds, again) == f"[SharedDS_renamed] {again}"
        assert ops.datastore_file_exists(conn, ds, again)
        assert ops.delete_datastore_file(conn, ds, again) is True
    finally:
        rename(conn, vim.Datastore, ds, "LocalDS_1")


def test_a_pool_folder_renamed_in_vcenter_shows_in_clone_paths_at_once(conn):
    inv = inventory(conn)
    folder = ops.create_folder(conn, POOL_FOLDER, unique("rn"))

    def clone() -> str:
        return ops.clone_vm(conn, CloneSpec(template_moid=inv.template, name=unique("vm"), folder_moid=folder.moid,
                                            resource_pool_moid=inv.pool_c0, linked=False, power_on=False)).path

    try:
        assert clone().startswith(f"{POOL_FOLDER}/{folder.name}/")
        rename(conn, vim.Folder, folder.moid, "renamed-" + folder.name)
        assert clone().startswith(f"{POOL_FOLDER}/renamed-{folder.name}/")
    finally:
        for vm in ops.list_folder_vms(conn, folder.moid):
            ops.destroy_vm(conn, vm.moid)
