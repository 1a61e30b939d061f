"""Checkout's locking: which VMs a checkout takes, and who waits for whom."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.utils import timezone

from apps.leases import services
from apps.leases.models import Lease
from apps.pools.models import VM, VMState
from tests import factories


@pytest.mark.django_db
def test_checkout_of_one_vm_takes_the_oldest_ready_one_and_leaves_the_rest(engineer):
    pool = factories.pool(size=3)
    now = timezone.now()
    vms = [factories.vm(pool, state=VMState.READY) for _ in range(3)]
    for age, vm in zip((1, 3, 2), vms, strict=True):
        VM.objects.filter(pk=vm.pk).update(ready_at=now - timedelta(minutes=age))
    [lease] = services.checkout(user=engineer, pools=[pool])
    assert lease.vm_id == vms[1].pk
    assert Lease.objects.count() == 1
    assert VM.objects.filter(state=VMState.READY).count() == 2


@pytest.mark.django_db
def test_on_demand_vms_are_not_handed_to_checkout(engineer):
    pool = factories.pool(size=1)
    vm = factories.vm(pool, state=VMState.READY)
    VM.objects.filter(pk=vm.pk).update(on_demand=True)
    with pytest.raises(services.PoolEmpty):
        services.checkout(user=engineer, pools=[pool])


@pytest.mark.django_db(transaction=True)
def test_a_second_checkout_by_the_same_user_waits_for_the_first_and_counts_it(settings):
    settings.VMPORTAL_MAX_LEASES_PER_USER = 1
    user = User.objects.create_user("dana-engineer")
    pool = factories.pool(size=2)
    factories.vm(pool, state=VMState.READY)
    factories.vm(pool, state=VMState.READY)
    first_in, release = threading.Event(), threading.Event()
    outcome: dict[str, str] = {}

    def first() -> None:
        try:
            with transaction.atomic():
                services.checkout(user=user, pools=[pool])
                first_in.set()
                release.wait(10)
        finally:
            connection.close()

    def second() -> None:
        try:
            first_in.wait(10)
            services.checkout(user=user, pools=[pool])
            outcome["second"] = "leased"
        except services.LeaseLimitReached:
            outcome["second"] = "limit"
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    assert first_in.wait(10)
    threads[1].join(0.5)
    waited = threads[1].is_alive()
    release.set()
    for t in threads:
        t.join(10)
    assert waited, "the second checkout should wait for the first one's lock on the user"
    assert outcome == {"second": "limit"}
    assert Lease.objects.filter(user=user).count() == 1
