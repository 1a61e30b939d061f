from __future__ import annotations

import pytest
from django.urls import reverse

from tests import factories

pytestmark = pytest.mark.django_db


def test_anonymous_home_redirects_to_login(client):
    response = client.get(reverse("home"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_login_page_is_public_and_sign_in_works(client, engineer):
    assert client.get(reverse("login")).status_code == 200
    response = client.post(reverse("login"), {"username": engineer.username, "password": "pw-engineer"})
    assert response.status_code == 302
    assert client.get(reverse("home")).status_code == 200


def test_wrong_password_says_so(client, engineer):
    response = client.post(reverse("login"), {"username": engineer.username, "password": "nope"})
    assert response.status_code == 200
    assert b"did not match" in response.content


def test_home_lists_enabled_pools_with_counts(client, engineer):
    shown = factories.pool(name="debian-pool", size=3)
    factories.vm(shown, state="ready")
    factories.vm(shown, state="booting")
    factories.pool(name="hidden-pool", enabled=False)
    client.force_login(engineer)
    response = client.get(reverse("home"))
    body = response.content.decode()
    assert "debian-pool" in body and "hidden-pool" not in body
    pool = response.context["pools"].get(name="debian-pool")
    assert (pool.ready_count, pool.booting_count, pool.leased_count) == (1, 1, 0)


def test_htmx_poll_gets_only_the_rows(client, engineer):
    factories.pool(name="p1")
    client.force_login(engineer)
    response = client.get(reverse("home"), headers={"HX-Request": "true"})
    assert b"<html" not in response.content and b"p1" in response.content


def test_logout_is_a_post(client, engineer):
    client.force_login(engineer)
    assert client.post(reverse("logout")).status_code == 302
    assert client.get(reverse("home")).status_code == 302


def test_healthz_is_public(client):
    assert client.get(reverse("healthz")).json() == {"status": "ok"}


ADMIN_MODELS = [
    "inventory/vcenter", "inventory/datacenter", "inventory/cluster", "inventory/host",
    "inventory/hostloadsample", "inventory/datastore", "inventory/network", "inventory/folder",
    "inventory/inventoryvm", "pools/template", "pools/pool", "pools/vm", "leases/lease",
    "jobs/job", "audit/auditevent",
]


@pytest.mark.parametrize("model", ADMIN_MODELS)
def test_every_model_is_in_the_admin_for_admins_only(client, admin_user, engineer, model):
    admin_user.is_superuser = True
    admin_user.save()
    url = f"/admin/{model}/"
    client.force_login(engineer)
    assert client.get(url).status_code == 302
    client.force_login(admin_user)
    assert client.get(url).status_code == 200


def test_vcenter_admin_never_renders_the_password(client, admin_user):
    admin_user.is_superuser = True
    admin_user.save()
    vc = factories.vcenter(password="do-not-show-me")
    client.force_login(admin_user)
    response = client.get(f"/admin/inventory/vcenter/{vc.pk}/change/")
    assert response.status_code == 200
    assert b"do-not-show-me" not in response.content


def test_vcenter_admin_keeps_the_password_when_left_empty(client, admin_user):
    admin_user.is_superuser = True
    admin_user.save()
    vc = factories.vcenter(password="keep-me")
    client.force_login(admin_user)
    response = client.post(f"/admin/inventory/vcenter/{vc.pk}/change/", {
        "name": vc.name, "host": "vc.example.com", "username": "u", "password": "",
        "task_limit": 5, "enabled": "on",
    })
    assert response.status_code == 302
    vc.refresh_from_db()
    assert (vc.host, vc.password) == ("vc.example.com", "keep-me")


def test_audit_admin_is_read_only(client, admin_user):
    from apps.audit import services as audit

    admin_user.is_superuser = True
    admin_user.save()
    event = audit.record("pool.resize")
    client.force_login(admin_user)
    page = client.get(f"/admin/audit/auditevent/{event.pk}/change/")
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert client.post(f"/admin/audit/auditevent/{event.pk}/delete/").status_code == 403
