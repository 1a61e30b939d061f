"""Per-group lease limits: a team quota shared by all members of a Django group."""

from __future__ import annotations

import threading

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, User
from django.db import connection
from django.urls import reverse

from apps.leases import services
from apps.leases.models import GroupLeaseLimit, Lease
from tests import factories


def _team(limit: int, *members: User) -> Group:
    group = Group.objects.create(name="storage-team")
    GroupLeaseLimit.objects.create(group=group, max_active_leases=limit)
    group.user_set.add(*members)
    return group


@pytest.mark.django_db
def test_members_of_a_limited_group_share_its_quota(engineer, other_engineer, settings):
    settings.VMPORTAL_MAX_LEASES_PER_USER = 10
    _team(2, engineer, other_engineer)
    pool = factories.pool_with_ready_vms(3)
    services.checkout(user=engineer, pools=[pool])
    services.checkout(user=other_engineer, pools=[pool])
    with pytest.raises(services.LeaseLimitReached, match="Your group storage-team has 2 active leases; its limit is 2"):
        services.checkout(user=engineer, pools=[pool])
    assert Lease.objects.count() == 2


@pytest.mark.django_db
def test_group_limit_counts_every_vm_of_a_multi_vm_checkout(engineer):
    _team(2, engineer)
    pool = factories.pool_with_ready_vms(3)
    with pytest.raises(services.LeaseLimitReached, match="storage-team"):
        services.checkout(user=engineer, pools=[pool, pool, pool])
    assert not Lease.objects.exists()
    assert len(services.checkout(user=engineer, pools=[pool, pool])) == 2


@pytest.mark.django_db
def test_returned_leases_free_the_group_quota(engineer, other_engineer):
    _team(1, engineer, other_engineer)
    pool = factories.pool_with_ready_vms(2)
    [lease] = services.checkout(user=engineer, pools=[pool])
    with pytest.raises(services.LeaseLimitReached):
        services.checkout(user=other_engineer, pools=[pool])
    services.return_lease(user=engineer, lease_id=lease.pk)
    services.checkout(user=other_engineer, pools=[pool])


@pytest.mark.django_db
def test_people_outside_the_group_are_not_limited_by_it(engineer, other_engineer):
    _team(1, engineer)
    pool = factories.pool_with_ready_vms(3)
    services.checkout(user=engineer, pools=[pool])
    assert len(services.checkout(user=other_engineer, pools=[pool, pool])) == 2


@pytest.mark.django_db
def test_admins_are_exempt_from_group_limits(admin_user, engineer):
    _team(1, admin_user, engineer)
    pool = factories.pool_with_ready_vms(3)
    assert len(services.checkout(user=admin_user, pools=[pool, pool])) == 2
    with pytest.raises(services.LeaseLimitReached, match="storage-team"):
        services.checkout(user=engineer, pools=[pool])


@pytest.mark.django_db
def test_the_strictest_of_several_groups_applies(engineer):
    _team(5, engineer)
    tight = Group.objects.create(name="interns")
    GroupLeaseLimit.objects.create(group=tight, max_active_leases=1)
    tight.user_set.add(engineer)
    pool = factories.pool_with_ready_vms(2)
    services.checkout(user=engineer, pools=[pool])
    with pytest.raises(services.LeaseLimitReached, match="Your group interns"):
        services.checkout(user=engineer, pools=[pool])


def test_group_lease_limits_are_editable_in_the_admin():
    # The URL conf discovers the admin modules (settings: SimpleAdminConfig); reversing loads it.
    assert reverse("admin:leases_groupleaselimit_change", args=[1]).startswith("/admin/leases/")
    assert admin.site.is_registered(GroupLeaseLimit)


@pytest.mark.django_db
def test_group_limit_message_reaches_the_page(client, engineer):
    _team(0, engineer)
    pool = factories.pool_with_ready_vms(1)
    client.force_login(engineer)
    response = client.post(f"/pools/{pool.name}/checkout", follow=True)
    assert b"Your group storage-team has 0 active leases; its limit is 0." in response.content
    assert not Lease.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_checkouts_by_one_group_never_exceed_its_limit():
    members = [User.objects.create_user(f"member{i}") for i in range(12)]
    _team(3, *members)
    pool = factories.pool_with_ready_vms(12)
    barrier = threading.Barrier(len(members))
    outcomes: list[str] = []
    lock = threading.Lock()

    def member_checks_out(user: User) -> None:
        try:
            barrier.wait()
            try:
                services.checkout(user=user, pools=[pool])
                outcome = "ok"
            except services.LeaseLimitReached:
                outcome = "limited"
            except Exception as exc:  # anything else is a bug
                outcome = repr(exc)
            with lock:
                outcomes.append(outcome)
        finally:
            connection.close()

    threads = [threading.Thread(target=member_checks_out, args=(u,)) for u in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["limited"] * 9 + ["ok"] * 3
    assert Lease.objects.active().count() == 3
