"""Django-admin edits: checked as the pages check them, and audited as the pages' services
audit them (issue 15)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.urls import reverse
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.leases.models import GroupLeaseLimit, Lease
from apps.pools.models import Pool, VMState
from tests import factories
from tests.pools.test_pool_admin import _create_form, pool_folder

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser_client(client):
    client.force_login(User.objects.create_superuser("root", password="pw-root"))
    return client


def _pool_change(pool, **over) -> dict:
    data = _create_form(pool, name=pool.name, size=pool.size, description="", domain="", aliases="",
                        alias_weight=1)
    inline = {"schedules-TOTAL_FORMS": 0, "schedules-INITIAL_FORMS": 0}  # the schedule rows' management form
    return {**data, **inline, **over, "_save": "Save"}


@pytest.mark.parametrize(("field", "value", "words"), [
    ("size", "501", "between 0 and 500"), ("cpus", "99999999999", "less than or equal to 768"),
    ("boot_timeout", "-00:10:00", "positive duration"), ("folder", "", "Choose the VM folder clones go into"),
    ("lease_lifetime", "99999:00:00", "at most 8760 hours"),
])
def test_pool_admin_refuses_what_the_pool_page_refuses(superuser_client, ready_pool, field, value, words):
    pool_folder(ready_pool)
    before = Pool.objects.filter(pk=ready_pool.pk).values().get()
    url = reverse("admin:pools_pool_change", args=[ready_pool.pk])
    assert superuser_client.post(url, _pool_change(ready_pool)).status_code == 302  # the form is complete
    response = superuser_client.post(url, _pool_change(ready_pool, **{field: value}))
    assert response.status_code == 200 and words in response.content.decode()
    assert Pool.objects.filter(pk=ready_pool.pk).values().get() == before
    assert not AuditEvent.objects.exists()


def test_pool_admin_changes_go_through_the_service_and_are_audited(superuser_client, ready_pool):
    pool_folder(ready_pool)
    url = reverse("admin:pools_pool_change", args=[ready_pool.pk])
    response = superuser_client.post(url, _pool_change(ready_pool, size="4"))
    assert response.status_code == 302, response.content.decode()[:3000]
    ready_pool.refresh_from_db()
    assert ready_pool.size == 4
    event = AuditEvent.objects.get(action="pool.reconfigure")
    assert (event.actor_name, event.before, event.after) == ("root", {"size": 2}, {"size": 4})


def test_vcenter_admin_edits_are_audited_and_the_password_never_shown(superuser_client):
    vc = factories.vcenter(password="old-secret")
    data = {"name": vc.name, "host": vc.host, "username": vc.username, "password": "new-secret",
            "insecure": "on", "ca_bundle": "", "thumbprint": "", "task_limit": vc.task_limit, "enabled": "on",
            "_save": "Save"}
    response = superuser_client.post(reverse("admin:inventory_vcenter_change", args=[vc.pk]), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    event = AuditEvent.objects.get(action="vcenter.update")
    assert event.after == {"password": "********", "insecure": True}
    assert event.before == {"password": "********", "insecure": False}
    assert event.actor_name == "root"


def test_folder_purge_switch_in_the_admin_is_audited(superuser_client, ready_pool):
    folder = pool_folder(ready_pool)
    data = {"purge_unknown": "on", "purge_allowlist": "[]", "_save": "Save"}
    response = superuser_client.post(reverse("admin:inventory_folder_change", args=[folder.pk]), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    event = AuditEvent.objects.get(action="folder.update")
    assert (event.before, event.after) == ({"purge_unknown": False}, {"purge_unknown": True})


def test_group_limits_set_in_the_admin_are_audited(superuser_client):
    group = Group.objects.create(name="team-a")
    data = {"group": group.pk, "max_active_leases": "5", "_save": "Save"}
    response = superuser_client.post(reverse("admin:leases_groupleaselimit_add"), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    limit = GroupLeaseLimit.objects.get()
    assert AuditEvent.objects.get(action="group_limit.create").after["max_active_leases"] == 5
    superuser_client.post(reverse("admin:leases_groupleaselimit_delete", args=[limit.pk]), {"post": "yes"})
    assert not GroupLeaseLimit.objects.exists()
    assert AuditEvent.objects.get(action="group_limit.delete").before["max_active_leases"] == 5


def test_lease_expiry_cannot_be_edited_in_the_admin(superuser_client, engineer):
    pool = factories.pool()
    vm = factories.vm(pool, state=VMState.LEASED)
    now = timezone.now()
    lease = Lease.objects.create(vm=vm, pool=pool, user=engineer, started_at=now, expires_at=now + timedelta(hours=2))
    url = reverse("admin:leases_lease_change", args=[lease.pk])
    superuser_client.post(url, {"expires_at_0": "2099-01-01", "expires_at_1": "00:00:00", "_save": "Save"})
    lease.refresh_from_db()
    assert lease.expires_at == now + timedelta(hours=2)
