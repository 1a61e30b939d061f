from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection

from apps.audit.models import AuditEvent
from apps.core.errors import NotFound
from apps.leases import services
from apps.leases.models import Lease
from apps.pools.models import VM, VMState
from tests import factories


@pytest.mark.django_db
def test_checkout_takes_a_ready_vm_and_audits_it(engineer):
    pool = factories.pool(lease_lifetime=timedelta(hours=2))
    vm = factories.vm(pool, state=VMState.READY)
    [lease] = services.checkout(user=engineer, pools=[pool])
    vm.refresh_from_db()
    assert (lease.vm, vm.state, lease.user) == (vm, VMState.LEASED, engineer)
    assert timedelta(hours=1, minutes=59) < lease.expires_at - lease.started_at <= timedelta(hours=2)
    assert AuditEvent.objects.filter(action="lease.checkout", target_id=str(lease.pk)).exists()


@pytest.mark.django_db
def test_multi_vm_checkout_is_all_or_nothing(engineer):
    full, short = factories.pool(), factories.pool()
    factories.vm(full, state=VMState.READY)
    factories.vm(full, state=VMState.READY)
    with pytest.raises(services.PoolEmpty, match=f"Pool {short.name} has 0 ready VMs; 1 requested"):
        services.checkout(user=engineer, pools=[full, full, short])
    assert not Lease.objects.exists()
    assert VM.objects.filter(state=VMState.READY).count() == 2


@pytest.mark.django_db
def test_lease_limit_per_user(engineer, settings):
    settings.VMPORTAL_MAX_LEASES_PER_USER = 1
    pool = factories.pool()
    factories.vm(pool, state=VMState.READY)
    factories.vm(pool, state=VMState.READY)
    services.checkout(user=engineer, pools=[pool])
    with pytest.raises(services.LeaseLimitReached, match="limit is 1"):
        services.checkout(user=engineer, pools=[pool])


@pytest.mark.django_db
def test_extend_is_bounded_by_the_pool_maximum(engineer):
    pool = factories.pool(lease_lifetime=timedelta(hours=1), lease_max_lifetime=timedelta(hours=3))
    factories.vm(pool, state=VMState.READY)
    [lease] = services.checkout(user=engineer, pools=[pool])
    lease = services.extend(user=engineer, lease_id=lease.pk, by=timedelta(hours=10))
    assert lease.expires_at == lease.started_at + timedelta(hours=3)
    with pytest.raises(services.Conflict, match="maximum lifetime"):
        services.extend(user=engineer, lease_id=lease.pk, by=timedelta(hours=1))


@pytest.mark.django_db
def test_only_the_owner_or_an_admin_may_return(engineer, other_engineer, admin_user):
    pool = factories.pool()
    factories.vm(pool, state=VMState.READY)
    factories.vm(pool, state=VMState.READY)
    first, second = services.checkout(user=engineer, pools=[pool, pool])
    with pytest.raises(NotFound):
        services.return_lease(user=other_engineer, lease_id=first.pk)
    services.return_lease(user=engineer, lease_id=first.pk)
    services.return_lease(user=admin_user, lease_id=second.pk)
    assert VM.objects.filter(state=VMState.DESTROYING).count() == 2
    assert set(Lease.objects.values_list("end_reason", flat=True)) == {"returned"}


@pytest.mark.django_db(transaction=True)
def test_200_concurrent_checkouts_never_lease_a_vm_twice():
    pool = factories.pool(size=50)
    for _ in range(50):
        factories.vm(pool, state=VMState.READY)
    users = [User.objects.create_user(f"racer{i}") for i in range(200)]
    barrier = threading.Barrier(50)
    results: dict[str, list] = {"ok": [], "empty": [], "error": []}
    lock = threading.Lock()

    def racer(chunk):
        try:
            for n, user in enumerate(chunk):
                if n == 0:
                    barrier.wait()
                try:
                    [lease] = services.checkout(user=user, pools=[pool])
                    outcome = ("ok", lease.vm_id)
                except services.PoolEmpty:
                    outcome = ("empty", None)
                except Exception as exc:  # any other outcome is a bug
                    outcome = ("error", repr(exc))
                with lock:
                    results[outcome[0]].append(outcome[1])
        finally:
            connection.close()

    threads = [threading.Thread(target=racer, args=(users[i::50],)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["error"] == []
    assert len(results["ok"]) == 50 and len(set(results["ok"])) == 50
    assert len(results["empty"]) == 150
    assert Lease.objects.count() == 50
    assert VM.objects.filter(state=VMState.LEASED).count() == 50
