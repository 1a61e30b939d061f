"""Bad input on the admin pages: each value gets a 400 naming the field and its range, and
nothing in the database changes (issue 15)."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.pools.models import Pool
from tests import factories
from tests.pools.test_pool_admin import _create_form, pool_folder

pytestmark = pytest.mark.django_db


def _row(pool) -> dict:
    return {k: v for k, v in Pool.objects.filter(pk=pool.pk).values()[0].items() if k != "updated_at"}


BAD_POOL_VALUES = [
    # (field, value, words the error must contain)
    ("cpus", "99999999999", "less than or equal to 768"),
    ("cpus", "0", "greater than or equal to 1"),
    ("memory_mb", "99999999999", "less than or equal to"),
    ("boot_timeout", "-00:10:00", "positive duration"),
    ("boot_timeout", "0:00:00", "positive duration"),
    ("boot_timeout", "200:00:00", "at most 24:00:00"),
    ("lease_lifetime", "99999:00:00", "at most 8760 hours"),
    ("lease_lifetime", "-01:00:00", "positive duration"),
    ("ready_ttl", "-01:00:00", "positive duration"),
    ("size", "501", "between 0 and 500"),
    ("max_tries", "1000", "less than or equal to 100"),
    ("folder", "", "Choose the VM folder clones go into"),
]


@pytest.mark.parametrize(("field", "value", "words"), BAD_POOL_VALUES)
def test_pool_create_form_refuses_absurd_values_and_creates_nothing(client, admin_user, ready_pool, field, value,
                                                                    words):
    client.force_login(admin_user)
    response = client.post(reverse("adminui:pool-create"), _create_form(ready_pool, **{field: value}))
    assert response.status_code == 400
    assert words in response.content.decode()
    assert not Pool.objects.filter(name="new-pool").exists()
    assert not AuditEvent.objects.exists()


@pytest.mark.parametrize(("field", "value", "words"), BAD_POOL_VALUES)
def test_pool_edit_form_refuses_absurd_values_and_changes_nothing(client, admin_user, ready_pool, field, value,
                                                                  words):
    pool_folder(ready_pool)
    before = _row(ready_pool)
    client.force_login(admin_user)
    data = {f"edit-{k}": v for k, v in _create_form(ready_pool, name=ready_pool.name, **{field: value}).items()}
    response = client.post(reverse("adminui:pool-detail", args=[ready_pool.pk]), data)
    assert response.status_code == 400
    assert words in response.content.decode()
    assert _row(ready_pool) == before
    assert not AuditEvent.objects.exists()


def test_memory_above_the_clusters_largest_host_is_refused_naming_it(client, admin_user, ready_pool):
    factories.host(ready_pool.cluster, memory_capacity_mb=65_536)
    factories.host(ready_pool.cluster, memory_capacity_mb=131_072)
    client.force_login(admin_user)
    response = client.post(reverse("adminui:pool-create"), _create_form(ready_pool, memory_mb="200000"))
    assert response.status_code == 400
    assert f"the largest host of cluster {ready_pool.cluster} has 131072 MB" in response.content.decode()
    response = client.post(reverse("adminui:pool-create"), _create_form(ready_pool, memory_mb="131072"))
    assert response.status_code == 302
    assert Pool.objects.get(name="new-pool").memory_mb == 131_072


def test_a_folder_of_another_vcenter_is_refused(client, admin_user, ready_pool):
    from tests import factories

    other = factories.cluster()
    foreign = pool_folder(factories.pool(cluster=other, template=factories.template(other.vcenter)))
    client.force_login(admin_user)
    response = client.post(reverse("adminui:pool-create"), _create_form(ready_pool, folder=foreign.pk))
    assert response.status_code == 400
    assert f"is not on {ready_pool.cluster.vcenter}" in response.content.decode()
    assert not Pool.objects.filter(name="new-pool").exists()


def test_the_database_refuses_a_negative_boot_timeout_whatever_the_path(ready_pool):
    with pytest.raises(IntegrityError), transaction.atomic():
        Pool.objects.filter(pk=ready_pool.pk).update(boot_timeout=timedelta(minutes=-10))
    with pytest.raises(IntegrityError), transaction.atomic():
        Pool.objects.filter(pk=ready_pool.pk).update(cpus=10_000)
    with pytest.raises(IntegrityError), transaction.atomic():
        Pool.objects.filter(pk=ready_pool.pk).update(lease_max_lifetime=timedelta(minutes=1))


@pytest.mark.parametrize("size", ["10000", "501", "-1", "", "٣"])
def test_reconfigure_refuses_a_size_beyond_the_apis_cap_and_changes_nothing(client, admin_user, ready_pool, size):
    before = _row(ready_pool)
    client.force_login(admin_user)
    data = {"size": size, "template": ready_pool.template_id, "cluster": ready_pool.cluster_id}
    response = client.post(reverse("adminui:pool-reconfigure", args=[ready_pool.pk]), data)
    assert response.status_code == 400
    assert _row(ready_pool) == before
    assert not AuditEvent.objects.exists()
    preview = client.post(reverse("adminui:pool-preview", args=[ready_pool.pk]), data).content.decode()
    assert "Will " not in preview and "msg error" in preview


def test_reconfigure_preview_with_nothing_to_do_says_so_in_plain_words(client, admin_user, ready_pool):
    client.force_login(admin_user)
    data = {"size": ready_pool.size, "template": ready_pool.template_id, "cluster": ready_pool.cluster_id}
    from apps.pools.models import VMState
    from tests import factories

    for _ in range(ready_pool.size):
        factories.vm(ready_pool, state=VMState.READY)
    preview = client.post(reverse("adminui:pool-preview", args=[ready_pool.pk]), data).content.decode()
    assert "No VM will be cloned or destroyed; 0 leased VMs untouched." in preview
    assert "Will no VMs" not in preview


def test_reconfigure_form_sends_invalid_values_to_the_preview(client, admin_user, ready_pool):
    """Without novalidate the browser holds back HTMX's request on an out-of-range size, and
    the old preview ("Will clone 2") stays up (the browser test shows the whole round trip)."""
    client.force_login(admin_user)
    page = client.get(reverse("adminui:pool-detail", args=[ready_pool.pk])).content.decode()
    tag = page[page.index(f'action="{reverse("adminui:pool-reconfigure", args=[ready_pool.pk])}"'):]
    assert "novalidate" in tag[:tag.index(">")]
    assert 'max="500"' in page


FORMULAS = ["=HYPERLINK(\"http://evil.example\",\"x\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\r=1"]


def test_audit_csv_export_neutralises_cells_that_start_a_formula(client, admin_user):
    for text in FORMULAS:
        AuditEvent.objects.create(actor_name="alice", action="token.create", target_repr=text, message=text)
    client.force_login(admin_user)
    response = client.get(reverse("adminui:audit-export"))
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert sorted(r["target"] for r in rows) == sorted(f"'{t}" for t in FORMULAS)
    assert all(r["message"] == r["target"] for r in rows)


def test_the_audit_table_refuses_truncate():
    AuditEvent.objects.create(actor_name="alice", action="pool.create")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        # The test settings allow TRUNCATE so that transactional tests can reset the
        # database; production connections do not set this.
        cursor.execute("SET LOCAL vmportal.allow_audit_truncate = 'off'")
        cursor.execute(f"TRUNCATE {AuditEvent._meta.db_table}")
    assert AuditEvent.objects.count() == 1


def test_vcpus_above_the_clusters_largest_host_are_refused_naming_it(client, admin_user, ready_pool):
    factories.host(ready_pool.cluster, cpu_threads=16)
    factories.host(ready_pool.cluster, cpu_threads=48)
    client.force_login(admin_user)
    response = client.post(reverse("adminui:pool-create"), _create_form(ready_pool, cpus="64"))
    assert response.status_code == 400
    assert f"the largest host of cluster {ready_pool.cluster} has 48 logical CPUs" in response.content.decode()
    assert not Pool.objects.filter(name="new-pool").exists()
    response = client.post(reverse("adminui:pool-create"), _create_form(ready_pool, cpus="48"))
    assert response.status_code == 302
    assert Pool.objects.get(name="new-pool").cpus == 48
