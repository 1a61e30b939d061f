"""The first-boot operations of apps.vsphere against the simulator: customisation,
readiness with expectations, seed ISO upload/attach/eject/delete, guest file operations."""

from __future__ import annotations

import pytest

from apps.firstboot import seed
from apps.vsphere import guest as guest_ops
from apps.vsphere import operations as ops
from apps.vsphere.errors import InvalidPowerState, VSphereError
from apps.vsphere.session import connect
from apps.vsphere.types import CloneSpec, Customization, GuestExpectation, GuestInfo
from tests.vsphere import POOL_FOLDER, endpoint_for, inventory, unique

pytestmark = pytest.mark.vcsim


@pytest.fixture(scope="module")
def sim(request):
    from tests import vcsim as launcher  # noqa: PLC0415

    started = launcher.start("-guest-ip", "10.77.0.0/16", "-guest-login", "vmportal:guest-pw")
    request.addfinalizer(started.stop)
    return started


@pytest.fixture(scope="module")
def conn(sim):
    with connect(endpoint_for(sim)) as c:
        yield c


@pytest.fixture(scope="module")
def inv(conn):
    return inventory(conn)


@pytest.fixture
def folder(conn):
    made = ops.create_folder(conn, POOL_FOLDER, unique("fb"))
    yield made
    for vm in ops.list_folder_vms(conn, made.moid):
        ops.destroy_vm(conn, vm.moid, allow_template=True)


def spec(inv, folder, **kw) -> CloneSpec:
    return CloneSpec(template_moid=inv.template, name=unique("vm"), folder_moid=folder.moid,
                     resource_pool_moid=inv.pool_c0, linked=False, power_on=True, **kw)


def test_customised_guest_reports_its_name_and_address_and_a_wrong_name_is_a_mismatch(conn, inv, folder):
    c = Customization(hostname="alpha", domain="lab.example", ip="10.40.1.5", netmask="255.255.255.0",
                      gateway="10.40.1.1", dns=("10.40.1.2",), script="#!/bin/sh\n")
    vm = ops.clone_vm(conn, spec(inv, folder, customization=c))
    good = ops.check_usable(conn, [vm.moid], expect={vm.moid: GuestExpectation("alpha", "10.40.1.5", True)})
    assert isinstance(good[vm.moid], GuestInfo) and good[vm.moid].ip == "10.40.1.5"
    bad = ops.check_usable(conn, [vm.moid], expect={vm.moid: GuestExpectation("beta", None, True)})
    assert bad[vm.moid] == "hostname mismatch: the guest reports 'alpha', expected 'beta'"
    wrong_ip = ops.check_usable(conn, [vm.moid], expect={vm.moid: GuestExpectation("alpha", "10.40.1.6", True)})
    assert wrong_ip[vm.moid].startswith("address mismatch: the guest reports 10.40.1.5")
    # The simulator speaks API 6.5: LinuxPrep's script (7.0) cannot reach it, and we can tell.
    assert ops.customization_script_supported(conn) is False


def test_sysprep_customisation_names_a_windows_guest(conn, inv, folder):
    c = Customization(hostname="win-0001", windows=True, admin_password="Secr3tPassw0rd", ip="10.40.2.9")
    vm = ops.clone_vm(conn, spec(inv, folder, customization=c))
    seen = ops.check_usable(conn, [vm.moid], expect={vm.moid: GuestExpectation("win-0001", "10.40.2.9", True)})
    assert isinstance(seen[vm.moid], GuestInfo), seen
    with pytest.raises(VSphereError, match="at most 15"):
        ops.clone_vm(conn, spec(inv, folder, customization=Customization(hostname="x" * 16, windows=True)))


def test_seed_iso_upload_attach_eject_delete(conn, inv, folder):
    ds = inv.datastores["LocalDS_0"]
    path = f"vmportal-seeds/{unique('seed')}.iso"
    ident = seed.Identity(vm_name="n", hostname="seeded", pool="p", instance_id="i", ip="10.40.3.7", prefix=24)
    data = seed.seed_iso("#cloud-config\n", seed.meta_data("", ident, with_network=False), seed.network_config(ident))
    iso = ops.upload_datastore_file(conn, ds, path, data)
    assert iso == f"[LocalDS_0] {path}" and ops.datastore_file_exists(conn, ds, path)
    vm = ops.clone_vm(conn, spec(inv, folder, cdrom_iso=iso))
    assert ops.cdrom_isos(conn, vm.moid) == [iso]
    # The simulated guest read the seed: it calls itself "seeded" at the address given.
    seen = ops.check_usable(conn, [vm.moid], expect={vm.moid: GuestExpectation("seeded", "10.40.3.7", True)})
    assert isinstance(seen[vm.moid], GuestInfo), seen
    assert ops.eject_cdrom(conn, vm.moid, iso) is True
    assert ops.cdrom_isos(conn, vm.moid) == []
    assert ops.eject_cdrom(conn, vm.moid, iso) is False  # idempotent
    assert ops.delete_datastore_file(conn, ds, path) is True
    assert not ops.datastore_file_exists(conn, ds, path)
    assert ops.delete_datastore_file(conn, ds, path) is False


def test_guest_file_operations_merge_authorized_keys(conn, inv, folder):
    vm = ops.clone_vm(conn, spec(inv, folder))
    ops.wait_until_usable(conn, vm.moid, timeout=10)
    login = {"username": "vmportal", "password": "guest-pw"}
    assert guest_ops.read_guest_file(conn, vm.moid, "/home/vmportal/.ssh/authorized_keys", **login) is None
    assert guest_ops.add_authorized_keys(conn, vm.moid, ["ssh-ed25519 AAAA one"], **login) == 1
    assert guest_ops.add_authorized_keys(conn, vm.moid, ["ssh-ed25519 AAAA one", "ssh-rsa BBBB two"], **login) == 1
    text = guest_ops.read_guest_file(conn, vm.moid, "/home/vmportal/.ssh/authorized_keys", **login).decode()
    assert text == "ssh-ed25519 AAAA one\nssh-rsa BBBB two\n"
    with pytest.raises(VSphereError, match="InvalidGuestLogin") as info:
        guest_ops.read_guest_file(conn, vm.moid, "/etc/hostname", username="vmportal", password="nope")
    assert "nope" not in str(info.value)
    ops.power_off(conn, vm.moid)
    with pytest.raises(InvalidPowerState):
        guest_ops.add_authorized_keys(conn, vm.moid, ["ssh-ed25519 AAAA three"], **login)
