"""Bad input on the engineer's pages and the public health check (issue 15)."""

from __future__ import annotations

import pytest
from django.db import OperationalError, connection
from django.urls import reverse

from apps.leases.models import Lease
from apps.pools.models import VMState
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("count", ["٣", "３", "1_0", "21"])
def test_checkout_many_refuses_counts_that_are_not_plain_ascii_or_too_many(client, engineer, count):
    pool = factories.pool(name="deb")
    for _ in range(3):
        factories.vm(pool, state=VMState.READY)
    client.force_login(engineer)
    response = client.post(reverse("checkout-many"), {"pool": "deb", "count": count}, follow=True)
    assert b"Choose a pool and between 1 and 20 VMs." in response.content
    assert not Lease.objects.exists()


def test_home_page_offers_as_many_vms_per_checkout_as_the_setting(client, engineer, settings):
    settings.VMPORTAL_MAX_VMS_PER_CHECKOUT = 7
    factories.pool(name="deb")
    client.force_login(engineer)
    assert b'name="count" type="number" min="1" max="7"' in client.get(reverse("home")).content


def test_healthz_says_the_database_is_down_without_its_error_text(client):
    def refuse(execute, sql, params, many, context):
        raise OperationalError('connection to server at "db.internal" failed: password authentication failed '
                               'for user "vmportal_prod"')

    with connection.execute_wrapper(refuse):
        response = client.get(reverse("healthz"))
    assert response.status_code == 503
    assert response.json() == {"status": "error", "database": "unavailable"}
    assert b"vmportal_prod" not in response.content and b"db.internal" not in response.content
