"""Checking out several VMs from one pool on the home page: all or nothing."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from apps.leases.models import Lease
from apps.pools.models import VM, VMState
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def pool():
    pool = factories.pool(name="deb", size=3)
    for i in range(3):
        factories.vm(pool, state=VMState.READY, ip_address=f"10.20.0.{i + 1}")
    return pool


def test_home_page_offers_the_multi_vm_form(client, engineer, pool):
    client.force_login(engineer)
    content = client.get(reverse("home")).content
    assert b'id="checkout-many"' in content and b'<option value="deb">' in content


def test_checking_out_three_vms_leases_all_and_lists_them(client, engineer, pool):
    client.force_login(engineer)
    response = client.post(reverse("checkout-many"), {"pool": "deb", "count": "3"})
    assert response.status_code == 302 and response["Location"] == reverse("my-leases")
    assert Lease.objects.filter(user=engineer).count() == 3
    page = client.get(response["Location"]).content
    assert all(f"10.20.0.{i}".encode() in page for i in (1, 2, 3))
    assert b"are yours until" in page


def test_asking_for_more_than_are_ready_leases_none(client, engineer, pool):
    VM.objects.filter(pk=VM.objects.first().pk).update(state=VMState.BOOTING)
    client.force_login(engineer)
    response = client.post(reverse("checkout-many"), {"pool": "deb", "count": "3"}, follow=True)
    assert b"Pool deb has 2 ready VMs; 3 requested." in response.content
    assert not Lease.objects.exists()
    assert VM.objects.filter(state=VMState.READY).count() == 2


@pytest.mark.parametrize("data", [{"pool": "deb", "count": "6"}, {"pool": "deb", "count": "0"},
                                  {"pool": "deb", "count": "many"}, {"pool": "nope", "count": "1"}, {}])
def test_bad_requests_explain_and_lease_nothing(client, engineer, pool, data, settings):
    settings.VMPORTAL_MAX_VMS_PER_CHECKOUT = 5
    client.force_login(engineer)
    response = client.post(reverse("checkout-many"), data, follow=True)
    assert b"Choose a pool and between 1 and 5 VMs." in response.content
    assert not Lease.objects.exists()


def test_a_disabled_pool_cannot_be_chosen(client, engineer, pool):
    pool.enabled = False
    pool.save()
    client.force_login(engineer)
    client.post(reverse("checkout-many"), {"pool": "deb", "count": "1"})
    assert not Lease.objects.exists()


def test_the_user_limit_applies_to_the_whole_request(client, engineer, pool, settings):
    settings.VMPORTAL_MAX_LEASES_PER_USER = 2
    client.force_login(engineer)
    response = client.post(reverse("checkout-many"), {"pool": "deb", "count": "3"}, follow=True)
    assert b"the limit is 2" in response.content
    assert not Lease.objects.exists()


def test_anonymous_is_sent_to_sign_in(client, pool):
    response = client.post(reverse("checkout-many"), {"pool": "deb", "count": "1"})
    assert response.status_code == 302 and reverse("login") in response["Location"]
    assert not Lease.objects.exists()


def test_multi_checkout_needs_post_and_a_csrf_token(engineer, pool):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(engineer)
    assert strict.get(reverse("checkout-many")).status_code == 405
    assert strict.post(reverse("checkout-many"), {"pool": "deb", "count": "1"}).status_code == 403
    assert not Lease.objects.exists()
