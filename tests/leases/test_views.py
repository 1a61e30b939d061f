"""Lease pages for owner / other engineer / admin / anonymous."""

from __future__ import annotations

import pytest
from django.urls import reverse

from apps.leases import services
from apps.leases.models import Lease, OnDemandRequest
from apps.pools.models import VMState
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def lease(engineer):
    pool = factories.pool(name="deb")
    factories.vm(pool, state=VMState.READY, ip_address="10.20.0.7", hostname="deb-1.lab")
    [lease] = services.checkout(user=engineer, pools=[pool])
    return lease


def test_checkout_button_leases_and_shows_the_address(client, engineer):
    pool = factories.pool(name="deb")
    factories.vm(pool, state=VMState.READY, ip_address="10.20.0.9")
    client.force_login(engineer)
    response = client.post(reverse("checkout", args=["deb"]), follow=True)
    assert response.status_code == 200
    assert b"ssh root@10.20.0.9" in response.content
    assert Lease.objects.get().user == engineer


def test_boosted_checkout_answers_with_the_lease_page_and_its_address(client, engineer, django_assert_max_num_queries):
    """Home's boosted Check out: the page itself, no redirect to follow; the form without
    JavaScript (no HX-Boosted) still gets the redirect."""
    pool = factories.pool(name="deb")
    factories.vm(pool, state=VMState.READY, ip_address="10.20.0.9", hostname="deb-1.lab")
    factories.vm(pool, state=VMState.READY, ip_address="10.20.0.10", hostname="deb-2.lab")
    client.force_login(engineer)
    with django_assert_max_num_queries(13):  # the checkout's, then the page's: each thing read once
        response = client.post(reverse("checkout", args=["deb"]), headers={"HX-Request": "true", "HX-Boosted": "true"})
    lease = Lease.objects.get()
    assert response.status_code == 200
    assert response["HX-Push-Url"] == reverse("lease-detail", args=[lease.pk])
    assert f"ssh root@{lease.vm.ip_address}".encode() in response.content
    assert f"{lease.vm.name} is yours until".encode() in response.content
    assert client.get(reverse("lease-detail", args=[lease.pk])).content.count(b"is yours until") == 0  # shown once

    plain = client.post(reverse("checkout", args=["deb"]))
    second = Lease.objects.latest("pk")
    assert plain.status_code == 302 and plain["Location"] == reverse("lease-detail", args=[second.pk])


def test_checkout_of_an_empty_pool_queues_an_on_demand_request(client, engineer):
    factories.pool(name="deb")
    client.force_login(engineer)
    response = client.post(reverse("checkout", args=["deb"]), follow=True)
    req = OnDemandRequest.objects.get()
    assert response.redirect_chain[-1][0] == reverse("ondemand-detail", args=[req.request_id])
    assert b"deb has no ready VM right now" in response.content
    assert req.user == engineer and req.wanted == {"deb": 1} and req.status == "queued"
    assert not Lease.objects.exists()


def test_checkout_of_a_failing_empty_pool_explains(client, engineer):
    factories.pool(name="deb", health="failing", health_reason="NoDiskSpace on ds1.")
    client.force_login(engineer)
    response = client.post(reverse("checkout", args=["deb"]), follow=True)
    assert b"cannot be made for you" in response.content and b"NoDiskSpace on ds1." in response.content
    assert not OnDemandRequest.objects.exists()


def test_checkout_needs_post(client, engineer):
    factories.pool(name="deb")
    client.force_login(engineer)
    assert client.get(reverse("checkout", args=["deb"])).status_code == 405


@pytest.mark.parametrize("who, status", [("owner", 200), ("admin", 200), ("other", 404), ("anonymous", 302)])
def test_lease_page_visibility(client, lease, engineer, other_engineer, admin_user, who, status):
    user = {"owner": engineer, "admin": admin_user, "other": other_engineer, "anonymous": None}[who]
    if user:
        client.force_login(user)
    response = client.get(reverse("lease-detail", args=[lease.pk]))
    assert response.status_code == status
    if status == 200:
        assert b"10.20.0.7" in response.content


@pytest.mark.parametrize("who, ends", [("owner", True), ("admin", True), ("other", False), ("anonymous", False)])
def test_return_permissions(client, lease, engineer, other_engineer, admin_user, who, ends):
    user = {"owner": engineer, "admin": admin_user, "other": other_engineer, "anonymous": None}[who]
    if user:
        client.force_login(user)
    client.post(reverse("lease-return", args=[lease.pk]))
    lease.refresh_from_db()
    assert (lease.ended_at is not None) == ends


@pytest.mark.parametrize("who, extended", [("owner", True), ("admin", True), ("other", False)])
def test_extend_permissions(client, lease, engineer, other_engineer, admin_user, who, extended):
    client.force_login({"owner": engineer, "admin": admin_user, "other": other_engineer}[who])
    before = lease.expires_at
    client.post(reverse("lease-extend", args=[lease.pk]), {"hours": "1"})
    lease.refresh_from_db()
    assert (lease.expires_at > before) == extended


def test_extend_with_a_bad_value_explains(client, lease, engineer):
    client.force_login(engineer)
    response = client.post(reverse("lease-extend", args=[lease.pk]), {"hours": "999"}, follow=True)
    assert b"Choose how long to extend by" in response.content


def test_my_leases_lists_only_mine(client, lease, other_engineer):
    client.force_login(other_engineer)
    assert lease.vm.name.encode() not in client.get(reverse("my-leases")).content


def test_post_without_csrf_token_is_refused(lease, engineer):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(engineer)
    assert strict.post(reverse("lease-return", args=[lease.pk])).status_code == 403


def test_banner_warns_before_a_lease_expires(client, lease, engineer):
    from datetime import timedelta

    from django.utils import timezone

    client.force_login(engineer)
    assert b"expiry-banner" not in client.get(reverse("home")).content
    Lease.objects.filter(pk=lease.pk).update(expires_at=timezone.now() + timedelta(minutes=10))
    assert b"expiry-banner" in client.get(reverse("home")).content


def test_ssh_line_uses_the_first_boot_account(client, engineer, lease):
    from apps.firstboot.models import VMSecret

    VMSecret.objects.create(vm=lease.vm, username="ops", password="never-shown-here")
    client.force_login(engineer)
    html = client.get(reverse("lease-detail", args=[lease.pk])).content.decode()
    assert "ssh ops@10.20.0.7" in html and "never-shown-here" not in html
