"""First-boot pages: who may see them, CSRF, validation that explains itself, the password reveal."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.firstboot.models import AddressRange, KeyDelivery, Method, PoolFirstBoot, SSHKey, VMSecret
from apps.leases.models import Lease
from apps.pools.models import VMState
from tests import factories
from tests.firstboot.keys import ED25519, RSA_1024

pytestmark = pytest.mark.django_db


@pytest.fixture
def pool():
    return factories.pool(name="deb", size=2)


@pytest.fixture
def rng():
    return AddressRange.objects.create(name="lab", network="10.40.0.0/24", first="10.40.0.10", last="10.40.0.50",
                                       gateway="10.40.0.1")


@pytest.fixture
def lease(pool, engineer):
    vm = factories.vm(pool, state=VMState.LEASED, moid="vm-1")
    VMSecret.objects.create(vm=vm, username="vmportal", password="S3cretFirstBootPw")
    now = timezone.now()
    return Lease.objects.create(vm=vm, pool=pool, user=engineer, started_at=now,
                                expires_at=now + timezone.timedelta(hours=1))


def admin_routes(pool, rng):
    return [reverse("firstboot:pool", args=[pool.pk]), reverse("firstboot:ranges"),
            reverse("firstboot:range", args=[rng.pk])]


def test_admin_pages_for_admins_only(client, admin_user, engineer, pool, rng):
    for url in admin_routes(pool, rng):
        assert client.get(url).status_code == 302  # anonymous: to the login page
        client.force_login(engineer)
        response = client.get(url)
        assert response.status_code == 403 and b"for vmportal admins" in response.content
        assert client.post(url, {"method": "none"}).status_code == 403
        client.force_login(admin_user)
        assert client.get(url).status_code == 200
        client.logout()


def test_admin_posts_need_csrf(admin_user, pool, rng):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    for url in admin_routes(pool, rng):
        assert client.post(url, {"method": "none"}).status_code == 403
    assert not PoolFirstBoot.objects.exists()


def test_admin_configures_customisation_with_a_range_and_it_is_audited_without_secrets(client, admin_user, pool, rng):
    client.force_login(admin_user)
    response = client.post(reverse("firstboot:pool", args=[pool.pk]), {
        "method": "customization", "os_family": "linux", "domain": "lab.example", "timezone": "UTC",
        "windows_timezone": 85, "address_range": rng.pk, "delivery": "guestinfo", "user_data": "#cloud-config\n",
        "meta_data": "", "admin_username": "vmportal", "authorized_keys": ED25519,
        "guest_username": "ops", "guest_password": "guest-Secret-1",
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    cfg = PoolFirstBoot.objects.get(pool=pool)
    assert cfg.method == Method.CUSTOMIZATION and cfg.address_range == rng and cfg.guest_password == "guest-Secret-1"
    event = AuditEvent.objects.get(action="pool.firstboot_changed")
    assert "guest-Secret-1" not in json.dumps([event.before, event.after, event.message])
    # The stored password is never sent back, and an empty field keeps it.
    page = client.get(reverse("firstboot:pool", args=[pool.pk])).content.decode()
    assert "guest-Secret-1" not in page
    client.post(reverse("firstboot:pool", args=[pool.pk]), {
        "method": "customization", "os_family": "linux", "domain": "lab.example", "timezone": "UTC",
        "windows_timezone": 85, "address_range": rng.pk, "delivery": "guestinfo", "user_data": "#cloud-config\n",
        "admin_username": "vmportal", "guest_username": "ops", "guest_password": "",
    })
    cfg.refresh_from_db()
    assert cfg.guest_password == "guest-Secret-1"


@pytest.mark.parametrize("changes, field, says", [
    ({"user_data": "#cloud-config\nusers: [broken\n"}, "user_data", "not valid YAML"),
    ({"user_data": "#cloud-config\n{% if %}"}, "user_data", "template has an error"),
    ({"meta_data": "- not a mapping"}, "meta_data", "YAML mapping"),
    ({"authorized_keys": RSA_1024}, "authorized_keys", "at least 2048"),
    ({"authorized_keys": "-----BEGIN OPENSSH PRIVATE KEY-----"}, "authorized_keys", "private key"),
    ({"domain": "lab_example"}, "domain", "DNS domain"),
    ({"admin_username": "Root Admin"}, "admin_username", "Linux user name"),
    ({"guest_username": "ops"}, "guest_password", "guest account's password"),
    ({"method": "none", "address_range": "RANGE"}, "address_range", "need a first-boot method"),
    ({"os_family": "windows"}, "os_family", "Sysprep"),
])
def test_bad_configuration_is_explained_not_a_500(client, admin_user, pool, rng, changes, field, says):
    client.force_login(admin_user)
    data = {"method": "cloud_init", "os_family": "linux", "domain": "lab.example", "timezone": "UTC",
            "windows_timezone": 85, "delivery": "guestinfo", "user_data": "#cloud-config\n", "meta_data": "",
            "admin_username": "vmportal", "authorized_keys": "", "guest_username": "", "guest_password": ""}
    data.update({k: (rng.pk if v == "RANGE" else v) for k, v in changes.items()})
    response = client.post(reverse("firstboot:pool", args=[pool.pk]), data)
    assert response.status_code == 400
    assert says in " ".join(response.context["form"].errors.get(field, [])), response.context["form"].errors
    assert not PoolFirstBoot.objects.exists()


def test_a_range_smaller_than_the_pool_is_refused(client, admin_user, rng):
    small = AddressRange.objects.create(name="small", network="10.41.0.0/24", first="10.41.0.10", last="10.41.0.10")
    pool = factories.pool(size=3)
    client.force_login(admin_user)
    response = client.post(reverse("firstboot:pool", args=[pool.pk]), {
        "method": "customization", "os_family": "linux", "domain": "x", "timezone": "UTC", "windows_timezone": 85,
        "address_range": small.pk, "delivery": "guestinfo", "user_data": "#cloud-config\n",
        "admin_username": "vmportal"})
    assert response.status_code == 400 and b"holds 1 addresses but the pool keeps 3" in response.content


def test_address_ranges_are_created_validated_and_kept_while_in_use(client, admin_user, pool, rng):
    client.force_login(admin_user)
    bad = client.post(reverse("firstboot:ranges"), {"name": "x", "network": "10.40.0.0/24", "first": "10.40.0.20",
                                                      "last": "10.40.0.60"})
    assert bad.status_code == 400 and b"overlaps range lab" in bad.content
    good = client.post(reverse("firstboot:ranges"), {"name": "lab2", "network": "10.42.0.0/24",
                                                       "first": "10.42.0.10", "last": "10.42.0.20"})
    assert good.status_code == 302 and AddressRange.objects.filter(name="lab2").exists()
    PoolFirstBoot.objects.create(pool=pool, method=Method.CUSTOMIZATION, address_range=rng)
    client.post(reverse("firstboot:range", args=[rng.pk]), {"delete": "1"})
    assert AddressRange.objects.filter(pk=rng.pk).exists()


def test_ssh_keys_page_adds_validates_and_removes_only_your_keys(client, engineer, other_engineer):
    url = reverse("firstboot:ssh-keys")
    assert client.get(url).status_code == 302
    client.force_login(engineer)
    assert client.get(url).status_code == 200
    assert client.post(url, {"name": "laptop", "public_key": ED25519}).status_code == 302
    again = client.post(url, {"name": "again", "public_key": ED25519})
    assert again.status_code == 400 and b"already added" in again.content
    weak = client.post(url, {"name": "", "public_key": RSA_1024})
    assert weak.status_code == 400 and b"at least 2048" in weak.content
    key = SSHKey.objects.get(user=engineer)
    assert key.fingerprint.startswith("SHA256:")
    client.force_login(other_engineer)
    client.post(reverse("firstboot:ssh-key-delete", args=[key.pk]))
    assert SSHKey.objects.filter(pk=key.pk).exists()  # not theirs
    client.force_login(engineer)
    assert client.get(reverse("firstboot:ssh-key-delete", args=[key.pk])).status_code == 405
    client.post(reverse("firstboot:ssh-key-delete", args=[key.pk]))
    assert not SSHKey.objects.exists()
    events = AuditEvent.objects.filter(action__startswith="sshkey.")
    assert events.count() == 2


def test_password_is_revealed_to_the_lessee_and_admins_only_and_never_audited(
        client, engineer, other_engineer, admin_user, lease):
    url = reverse("firstboot:lease-password", args=[lease.pk])
    page = reverse("lease-detail", args=[lease.pk])
    client.force_login(engineer)
    detail = client.get(page).content.decode()
    assert "Reveal" in detail and "S3cretFirstBootPw" not in detail
    assert client.get(url).status_code == 405
    shown = client.post(url, HTTP_HX_REQUEST="true")
    assert shown.status_code == 200 and b"S3cretFirstBootPw" in shown.content
    assert shown["Cache-Control"] == "no-store"
    client.force_login(other_engineer)
    assert client.post(url).status_code == 404
    client.force_login(admin_user)
    assert b"S3cretFirstBootPw" in client.post(url).content
    client.logout()
    assert client.post(url).status_code == 302
    events = AuditEvent.objects.filter(action="lease.password_revealed")
    assert events.count() == 2
    for event in AuditEvent.objects.all():
        assert "S3cretFirstBootPw" not in json.dumps([event.before, event.after, event.message, event.target_repr])


def test_ended_lease_no_longer_reveals_to_the_lessee(client, engineer, lease):
    Lease.objects.filter(pk=lease.pk).update(ended_at=timezone.now(), end_reason="returned")
    client.force_login(engineer)
    assert client.post(reverse("firstboot:lease-password", args=[lease.pk])).status_code == 404


def test_lease_page_shows_key_delivery(client, engineer, lease):
    KeyDelivery.objects.create(lease=lease, state=KeyDelivery.State.FAILED, detail="InvalidGuestLogin")
    client.force_login(engineer)
    assert b"could not be added: InvalidGuestLogin" in client.get(reverse("lease-detail", args=[lease.pk])).content


def test_native_api_returns_credentials_to_the_lessee_and_admins_only(lease, engineer, other_engineer, admin_user,
                                                                      redis_conn):
    from apps.api import tokens  # noqa: PLC0415

    url = f"/api/v1/leases/{lease.pk}/credentials"

    def as_(user):
        return Client(headers={"X-AUTH-TOKEN": tokens.create_token(user=user, name="t")[1]})

    assert Client().post(url).status_code == 401
    mine = as_(engineer).post(url)
    assert mine.status_code == 200 and mine.json() == {"lease_id": lease.pk, "username": "vmportal",
                                                       "password": "S3cretFirstBootPw"}
    assert as_(other_engineer).post(url).status_code == 404
    assert as_(admin_user).post(url).status_code == 200
    assert as_(engineer).get(url).status_code == 405
    VMSecret.objects.all().delete()
    assert as_(engineer).post(url).status_code == 404
