"""Checkouts, returns and the pool manager on one pool at once: one lock order, no deadlock.

Each thread has its own database connection, as web processes and the pool manager do.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from apps.leases import services
from apps.leases.models import Lease
from apps.pools.manager import reconcile_pool
from apps.pools.models import VM, Pool, VMState
from tests import factories

_names = itertools.count(1)


def _ready_vm(pool: Pool) -> VM:
    # Stands in for a fill job finishing a clone, so the pool stays stocked.
    return VM.objects.create(pool=pool, name=f"{pool.name}-r{next(_names)}", vcenter_id=pool.template.vcenter_id,
                             template_id=pool.template_id, state=VMState.READY, ready_at=timezone.now())


def _run(workers: list, stop: threading.Event, seconds: float) -> None:
    threads = [threading.Thread(target=w) for w in workers]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a thread is stuck"


@pytest.mark.django_db(transaction=True)
def test_checkouts_and_returns_never_deadlock_with_reconcile_of_the_same_pool(redis_conn, settings):
    settings.VMPORTAL_MAX_LEASES_PER_USER = 0
    stop = threading.Event()
    pool = factories.pool(size=40)
    for _ in range(pool.size):
        _ready_vm(pool)
    users = [User.objects.create_user(f"ci-{n}") for n in range(8)]
    errors: list[str] = []
    taken: list[int] = []
    reconciles = [0]

    def client(user: User) -> None:
        try:
            while not stop.is_set():
                try:
                    [lease] = services.checkout(user=user, pools=[pool])
                    taken.append(lease.vm_id)
                    services.return_lease(user=user, lease_id=lease.pk)
                    _ready_vm(pool)
                except Exception as exc:  # noqa: BLE001 - every failure is the finding
                    errors.append(f"client: {exc!r}")
        finally:
            connection.close()

    def pool_manager() -> None:
        try:
            while not stop.is_set():
                try:
                    reconcile_pool(pool.pk)
                    reconciles[0] += 1
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"reconcile: {exc!r}")
        finally:
            connection.close()

    _run([pool_manager] + [lambda u=u: client(u) for u in users], stop, seconds=8)

    assert errors == [], (len(errors), errors[:3])
    assert len(taken) > 20 and reconciles[0] > 5, "checkouts and reconciles should both have run many times"
    assert [vm for vm, n in Counter(taken).items() if n > 1] == []
    assert Lease.objects.count() == len(taken)
    assert not Lease.objects.active().exists()
