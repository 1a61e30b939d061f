"""Measurements for the first-boot note (not collected by default; run explicitly):

    VMPORTAL_TEST_DB=... .venv/bin/pytest tests/firstboot/bench_firstboot.py -s -p no:cacheprovider

Fill time of a 20-VM pool per method (one burst worker, real vcsim), and the allocator
under 16 threads on their own connections.
"""

from __future__ import annotations

import threading
import time

import pytest
from django.db import close_old_connections, connection, transaction

from apps.firstboot import provisioning
from apps.firstboot.models import AddressRange, Delivery, IPAllocation, Method, PoolFirstBoot
from apps.pools import manager as pool_manager
from apps.pools.models import VM, VMState
from tests import factories
from tests.live import GUEST, make_pool, site, worker

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]
N = 20


@pytest.mark.parametrize("method, delivery", [
    ("none", None), ("customization", None), ("cloud_init", "guestinfo"), ("cloud_init", "seed_iso")])
def test_fill_time_per_method(vcsim_factory, redis_conn, method, delivery):
    vc, folder = site(vcsim_factory(*GUEST), task_limit=10)
    pool = make_pool(vc, folder, name=f"b-{method}-{delivery}".replace("_", "-"), size=N)
    if method != "none":
        rng = AddressRange.objects.create(name=f"r{pool.pk}", network="10.60.0.0/24", first="10.60.0.10",
                                          last="10.60.0.200")
        PoolFirstBoot.objects.create(pool=pool, method=method, delivery=delivery or Delivery.GUESTINFO,
                                     address_range=rng)
    started = time.perf_counter()
    for _ in range(6):
        pool_manager.reconcile_pool(pool.pk)
        assert worker().wait(timeout=300) == 0
        if pool.vms.filter(state=VMState.READY).count() == N:
            break
    took = time.perf_counter() - started
    assert pool.vms.filter(state=VMState.READY).count() == N
    print(f"\nBENCH fill {N} VMs, method={method} delivery={delivery}: {took:.2f}s "
          f"({took / N * 1000:.0f} ms/VM, including worker start-ups)")


def test_allocator_race(redis_conn):
    rng = AddressRange.objects.create(name="race", network="10.61.0.0/16", first="10.61.0.10",
                                      last="10.61.1.9")  # 256 addresses
    vc = factories.vcenter()
    pools = []
    for _ in range(4):
        pool = factories.pool(vcenter=vc)
        PoolFirstBoot.objects.create(pool=pool, method=Method.CUSTOMIZATION, address_range=rng)
        pools.append(pool)
    barrier = threading.Barrier(16)
    kept: list[int] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            close_old_connections()
            barrier.wait()
            pool = pools[i % 4]
            for n in range(10):
                with transaction.atomic():
                    vms = VM.objects.bulk_create(
                        VM(vcenter=vc, pool=pool, template=pool.template, name=f"r{i}-{n}-{k}") for k in range(2))
                    kept.extend(v.pk for v in provisioning.allocate_addresses(pool, vms))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - started
    addresses = list(IPAllocation.objects.values_list("address", flat=True))
    assert not errors and len(addresses) == len(set(addresses)) == 256 == len(kept)
    print(f"\nBENCH allocator: 16 threads x 10 claims x 2 VMs = 320 wanted, 256 addresses: "
          f"{len(kept)} allocated, {len(addresses) - len(set(addresses))} duplicates, "
          f"{320 - len(kept)} refused, {took:.2f}s ({took / 160 * 1000:.1f} ms per claim transaction)")
