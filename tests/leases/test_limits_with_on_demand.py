"""Lease limits hold across checkouts, on-demand requests and their delivery, under concurrency.

What counts: active leases plus the VMs of pending on-demand requests (queued or
provisioning). No worker runs here, so requests stay pending unless a test delivers them.
"""

from __future__ import annotations

import threading

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection

from apps.leases import ondemand, services
from apps.leases.models import GroupLeaseLimit, Lease, OnDemandRequest
from apps.pools.models import VMState
from tests import factories

Status = OnDemandRequest.Status


def _held(*users: User) -> int:
    """Active leases plus VMs still coming on demand."""
    pending = OnDemandRequest.objects.filter(user__in=users, status__in=(Status.QUEUED, Status.PROVISIONING))
    return Lease.objects.active().filter(user__in=users).count() + sum(r.total for r in pending)


@pytest.mark.django_db
def test_checkout_counts_the_users_pending_on_demand_vms(engineer, redis_conn, settings):
    settings.VMPORTAL_MAX_LEASES_PER_USER = 2
    pool = factories.pool_with_ready_vms(3)
    ondemand.request_vms(user=engineer, pools=[pool, pool])
    with pytest.raises(services.LeaseLimitReached, match="0 active leases and 2 VMs coming on demand; the limit is 2"):
        services.checkout(user=engineer, pools=[pool])
    assert not Lease.objects.exists()


@pytest.mark.django_db
def test_on_demand_request_counts_active_leases_and_other_pending_requests(engineer, redis_conn, settings):
    settings.VMPORTAL_MAX_LEASES_PER_USER = 3
    pool = factories.pool_with_ready_vms(3)
    services.checkout(user=engineer, pools=[pool])
    ondemand.request_vms(user=engineer, pools=[pool])
    with pytest.raises(services.LeaseLimitReached, match="1 active lease and 1 VM coming on demand"):
        ondemand.request_vms(user=engineer, pools=[pool, pool])
    ondemand.request_vms(user=engineer, pools=[pool])
    assert _held(engineer) == 3


@pytest.mark.django_db
def test_group_limit_counts_pending_on_demand_vms_of_every_member(engineer, other_engineer, redis_conn, settings):
    settings.VMPORTAL_MAX_LEASES_PER_USER = 10
    group = Group.objects.create(name="storage-team")
    GroupLeaseLimit.objects.create(group=group, max_active_leases=2)
    group.user_set.add(engineer, other_engineer)
    pool = factories.pool_with_ready_vms(3)
    ondemand.request_vms(user=engineer, pools=[pool])
    services.checkout(user=other_engineer, pools=[pool])
    with pytest.raises(services.LeaseLimitReached, match="storage-team has 1 active lease and 1 VM coming on demand"):
        services.checkout(user=engineer, pools=[pool])
    with pytest.raises(services.LeaseLimitReached, match="storage-team"):
        ondemand.request_vms(user=other_engineer, pools=[pool])


def _provisioned(user: User, pool, n: int) -> tuple[OnDemandRequest, list]:
    """A request whose job has made its ``n`` VMs (ready, not yet leased)."""
    req = ondemand.request_vms(user=user, pools=[pool] * n)
    req = ondemand.start(req.pk)
    vms = [factories.vm(pool, state=VMState.READY, on_demand=True) for _ in range(n)]
    ondemand.add_vms(req, vms)
    return req, vms


@pytest.mark.django_db
def test_delivery_turns_pending_vms_into_leases_without_counting_them_twice(engineer, redis_conn, settings):
    settings.VMPORTAL_MAX_LEASES_PER_USER = 2
    pool = factories.pool(size=0)
    req, vms = _provisioned(engineer, pool, 2)
    assert _held(engineer) == 2
    assert ondemand.deliver(req, vms) is True
    req.refresh_from_db()
    assert req.status == Status.READY
    assert Lease.objects.active().filter(user=engineer).count() == 2 == _held(engineer)


@pytest.mark.django_db
def test_delivery_over_a_limit_lowered_meanwhile_fails_the_request_and_discards_its_vms(engineer, redis_conn,
                                                                                         settings):
    settings.VMPORTAL_MAX_LEASES_PER_USER = 3
    pool = factories.pool(size=0)
    req, vms = _provisioned(engineer, pool, 2)
    settings.VMPORTAL_MAX_LEASES_PER_USER = 1
    assert ondemand.deliver(req, vms) is False
    req.refresh_from_db()
    assert req.status == Status.FAILED
    assert "Not delivered: You have 0 active leases and 2 VMs coming on demand; the limit is 1." in req.status_reason
    assert not Lease.objects.exists()
    assert {vm.state for vm in req.vms.all()} == {VMState.DESTROYING}


@pytest.mark.django_db(transaction=True)
def test_concurrent_checkouts_and_on_demand_requests_of_one_person_never_exceed_the_limits(redis_conn, settings):
    settings.VMPORTAL_MAX_LEASES_PER_USER = 3
    dana, erik = User.objects.create_user("dana-engineer"), User.objects.create_user("erik-engineer")
    group = Group.objects.create(name="db-team")
    GroupLeaseLimit.objects.create(group=group, max_active_leases=5)
    group.user_set.add(dana, erik)
    pool = factories.pool_with_ready_vms(40)
    threads_per_user = 6
    start = threading.Barrier(2 * threads_per_user)
    outcomes: list[str] = []

    def ask(user: User) -> None:
        try:
            start.wait(10)
            # All start with a request, then mix: checkouts race requests still in flight.
            for attempt in range(4):
                try:
                    if attempt % 2:
                        services.checkout(user=user, pools=[pool])
                        outcomes.append("leased")
                    else:
                        ondemand.request_vms(user=user, pools=[pool])
                        outcomes.append("requested")
                except services.LeaseLimitReached:
                    outcomes.append("refused")
                except Exception as exc:  # noqa: BLE001 - anything else is the finding
                    outcomes.append(f"error: {exc!r}")
        finally:
            connection.close()

    threads = [threading.Thread(target=ask, args=(user,)) for user in (dana, erik) for _ in range(threads_per_user)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not [o for o in outcomes if o.startswith("error")]
    assert _held(dana) <= 3 and _held(erik) <= 3, (_held(dana), _held(erik))
    assert _held(dana, erik) == 5
    assert outcomes.count("leased") + outcomes.count("requested") == 5
