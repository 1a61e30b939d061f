"""What plan_clones puts into each clone's spec, per method (database only)."""

from __future__ import annotations

import pytest

from apps.firstboot import provisioning
from apps.firstboot.models import AddressRange, Delivery, Method, OSFamily, PoolFirstBoot, SeedISO, VMSecret
from apps.firstboot.seed import FirstBootError
from apps.pools.models import VM
from tests import factories
from tests.firstboot.keys import ED25519

pytestmark = pytest.mark.django_db


def vms(pool, n=1):
    return [factories.vm(pool) for _ in range(n)]


def test_windows_pools_get_sysprep_with_the_clones_own_password():
    pool = factories.pool(name="win_pool")
    PoolFirstBoot.objects.create(pool=pool, method=Method.CUSTOMIZATION, os_family=OSFamily.WINDOWS)
    [vm] = vms(pool)
    plan = provisioning.plan_clones(pool, [vm])[vm.pk]
    secret = VMSecret.objects.get(vm=vm)
    c = plan.customization
    assert c.windows and c.admin_password == secret.password and secret.username == "Administrator"
    assert c.script == "" and len(c.hostname) <= 15 and c.ip is None
    assert secret.password not in repr(c)


def test_linux_customisation_carries_the_hash_and_keys_in_its_script_and_a_fixed_ip():
    rng = AddressRange.objects.create(name="r", network="10.9.0.0/24", first="10.9.0.10", last="10.9.0.20",
                                      gateway="10.9.0.1", dns_servers="10.9.0.2")
    pool = factories.pool()
    PoolFirstBoot.objects.create(pool=pool, method=Method.CUSTOMIZATION, address_range=rng, authorized_keys=ED25519)
    [vm] = provisioning.allocate_addresses(pool, vms(pool))
    c = provisioning.plan_clones(pool, [vm])[vm.pk].customization
    password = VMSecret.objects.get(vm=vm).password
    assert (c.ip, c.netmask, c.gateway, c.dns) == ("10.9.0.10", "255.255.255.0", "10.9.0.1", ("10.9.0.2",))
    assert "chpasswd -e" in c.script and ED25519 in c.script and password not in c.script


def test_a_second_plan_reuses_the_password():
    pool = factories.pool()
    PoolFirstBoot.objects.create(pool=pool, method=Method.CLOUD_INIT)
    [vm] = vms(pool)
    provisioning.plan_clones(pool, [vm])
    first = VMSecret.objects.get(vm=vm).password
    plan = provisioning.plan_clones(pool, [vm])[vm.pk]
    assert VMSecret.objects.get(vm=vm).password == first
    assert set(plan.extra_config) == {"guestinfo.metadata", "guestinfo.metadata.encoding", "guestinfo.userdata",
                                      "guestinfo.userdata.encoding"}


def test_seed_iso_without_a_known_datastore_is_a_clear_permanent_error():
    pool = factories.pool(name="iso_pool")
    PoolFirstBoot.objects.create(pool=pool, method=Method.CLOUD_INIT, delivery=Delivery.SEED_ISO)
    with pytest.raises(FirstBootError, match="no datastore is known") as info:
        provisioning.plan_clones(pool, vms(pool))
    assert info.value.permanent


def test_a_broken_template_fails_the_plan_with_its_reason():
    pool = factories.pool()
    PoolFirstBoot.objects.create(pool=pool, method=Method.CLOUD_INIT, user_data="#cloud-config\n{% for %}")
    with pytest.raises(FirstBootError, match="user-data template has an error"):
        provisioning.plan_clones(pool, vms(pool))
    assert not SeedISO.objects.exists()


def test_pools_without_a_method_get_empty_plans():
    pool = factories.pool()
    PoolFirstBoot.objects.create(pool=pool, method=Method.NONE)
    [vm] = vms(pool)
    plan = provisioning.plan_clones(pool, [vm])[vm.pk]
    assert plan.customization is None and plan.extra_config == {} and plan.cdrom_iso is None
    assert not VMSecret.objects.exists()
    assert provisioning.expectations([VM(pk=vm.pk, pool=pool, name=vm.name, moid="vm-9")]) == {}
