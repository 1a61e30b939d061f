"""The address allocator: one transaction with the VM rows, never an address twice."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, close_old_connections, connection, transaction

from apps.firstboot import provisioning
from apps.firstboot.models import AddressRange, IPAllocation, Method, PoolFirstBoot
from apps.pools.manager import claim_slots
from apps.pools.models import VM, Pool, TemplateCopy, TemplateStatus, VMState
from tests import factories


def make_range(**kw) -> AddressRange:
    defaults = {"name": "r", "network": "10.50.0.0/24", "first": "10.50.0.10", "last": "10.50.0.39"}
    rng = AddressRange(**{**defaults, **kw})
    rng.full_clean()
    rng.save()
    return rng


def fixed_pool(rng: AddressRange, **kw) -> Pool:
    pool = factories.pool(**kw)
    # A ready copy in the pool's cluster, so slots can be claimed without a copy job first.
    TemplateCopy.objects.create(template=pool.template, cluster=pool.cluster, status=TemplateStatus.READY,
                                moid=f"vm-copy-{pool.pk}")
    PoolFirstBoot.objects.create(pool=pool, method=Method.CUSTOMIZATION, address_range=rng)
    return pool


def new_vms(pool: Pool, n: int) -> list[VM]:
    return VM.objects.bulk_create(
        VM(vcenter_id=pool.template.vcenter_id, pool=pool, template=pool.template,
           name=f"{pool.name}-{i}-{time.time_ns()}")
        for i in range(n)
    )


@pytest.mark.django_db
def test_range_validation_explains_itself():
    make_range()
    cases = [
        ({"network": "10.60.0.0/33"}, "network"),
        ({"network": "10.60.0.0/24", "first": "10.61.0.1", "last": "10.60.0.20"}, "first"),
        ({"network": "10.60.0.0/24", "first": "10.60.0.20", "last": "10.60.0.10"}, "last"),
        ({"network": "10.60.0.0/24", "first": "10.60.0.10", "last": "10.60.0.20", "gateway": "10.60.0.15"}, "gateway"),
        ({"network": "10.60.0.0/24", "first": "10.60.0.0", "last": "10.60.0.20"}, "first"),
        ({"network": "10.50.0.0/24", "first": "10.50.0.30", "last": "10.50.0.50"}, "first"),  # overlaps "r"
        ({"network": "10.60.0.0/24", "first": "10.60.0.10", "last": "10.60.0.20", "dns_servers": "dns1"},
         "dns_servers"),
    ]
    for n, (kw, field) in enumerate(cases):
        rng = AddressRange(name=f"x{n}", **{"first": "10.60.0.10", "last": "10.60.0.20", **kw})
        with pytest.raises(ValidationError) as info:
            rng.full_clean()
        assert field in info.value.message_dict, (kw, info.value.message_dict)


@pytest.mark.django_db
def test_allocation_takes_the_lowest_free_addresses_and_release_returns_them():
    rng = make_range(last="10.50.0.14")
    pool = fixed_pool(rng)
    with transaction.atomic():
        vms = provisioning.allocate_addresses(pool, new_vms(pool, 3))
    assert [vm.ip_allocation.address for vm in vms] == ["10.50.0.10", "10.50.0.11", "10.50.0.12"]
    assert provisioning.release(vms[1]) == 0  # a live VM keeps its address
    VM.objects.filter(pk=vms[1].pk).update(state=VMState.DESTROYED)
    assert provisioning.release(vms[1]) == 1
    assert provisioning.release(vms[1]) == 0  # a destroy run twice releases once
    with transaction.atomic():
        [again] = provisioning.allocate_addresses(pool, new_vms(pool, 1))
    assert again.ip_allocation.address == "10.50.0.11"


@pytest.mark.django_db
def test_a_destroyed_vms_address_is_free_whatever_destroyed_it():
    rng = make_range(last="10.50.0.10")
    pool = fixed_pool(rng)
    with transaction.atomic():
        [vm] = provisioning.allocate_addresses(pool, new_vms(pool, 1))
    VM.objects.filter(pk=vm.pk).update(state=VMState.DESTROYED)  # no release() call
    with transaction.atomic():
        [other] = provisioning.allocate_addresses(pool, new_vms(pool, 1))
    assert other.ip_allocation.address == "10.50.0.10"


@pytest.mark.django_db
def test_the_database_refuses_one_address_for_two_vms():
    rng = make_range()
    pool = fixed_pool(rng)
    a, b = new_vms(pool, 2)
    IPAllocation.objects.create(address_range=rng, address="10.50.0.10", vm=a)
    with pytest.raises(IntegrityError), transaction.atomic():
        IPAllocation.objects.create(address_range=rng, address="10.50.0.10", vm=b)


@pytest.mark.django_db
def test_exhaustion_keeps_what_fits_deletes_the_rest_and_tells_the_admin():
    rng = make_range(last="10.50.0.11")
    pool = fixed_pool(rng)
    with transaction.atomic():
        kept = provisioning.allocate_addresses(pool, new_vms(pool, 3))
    assert len(kept) == 2 and pool.vms.count() == 2
    pool.refresh_from_db()
    assert pool.health == Pool.Health.DEGRADED and pool.retry_at is not None
    assert "exhausted" in pool.health_reason and "Widen the range" in pool.health_reason


@pytest.mark.django_db
def test_pools_without_fixed_addresses_are_untouched():
    pool = factories.pool()
    vms = new_vms(pool, 2)
    with transaction.atomic():
        assert provisioning.allocate_addresses(pool, vms) == vms
    assert not IPAllocation.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_allocations_from_many_connections_never_share_an_address():
    """Eight threads, each its own PostgreSQL connection, two pools on one 30-address range,
    48 VMs wanted: exactly 30 get an address, each a different one."""
    rng = make_range()
    vc = factories.vcenter()
    pools = [fixed_pool(rng, vcenter=vc), fixed_pool(rng, vcenter=vc)]
    start = threading.Barrier(8)
    errors: list[BaseException] = []
    kept: list[int] = []

    def claim(pool: Pool) -> None:
        try:
            close_old_connections()
            start.wait()
            for _ in range(3):
                with transaction.atomic():
                    got = provisioning.allocate_addresses(pool, new_vms(pool, 2))
                kept.extend(vm.pk for vm in got)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(pools[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    addresses = list(IPAllocation.objects.values_list("address", flat=True))
    assert len(addresses) == len(set(addresses)) == 30 == len(kept)
    assert Counter(IPAllocation.objects.values_list("vm_id", flat=True)).most_common(1)[0][1] == 1
    assert VM.objects.count() == 30  # the 18 that found no address were rolled back


@pytest.mark.django_db(transaction=True)
def test_claim_slots_allocates_in_the_same_transaction(settings):
    rng = make_range(last="10.50.0.12")
    pool = fixed_pool(rng, size=5)
    vms = claim_slots(pool.pk, 5)
    assert len(vms) == 3
    assert sorted(IPAllocation.objects.filter(vm__in=vms).values_list("address", flat=True)) == [
        "10.50.0.10", "10.50.0.11", "10.50.0.12"]
    assert claim_slots(pool.pk, 5) == []  # backing off: the pool says why
    pool.refresh_from_db()
    assert "exhausted" in pool.health_reason
