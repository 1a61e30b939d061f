"""Every admin route: admins get the page, engineers a friendly 403, anonymous a login redirect."""

from __future__ import annotations

import pytest
from django.urls import reverse

from apps.audit.models import AuditEvent

pytestmark = pytest.mark.django_db

GET_ROUTES = [
    ("adminui:pools", False), ("adminui:pool-create", False), ("adminui:pool-detail", True),
    ("adminui:audit", False), ("adminui:audit-export", False), ("adminui:audit-detail", "event"),
    ("adminui:hosts", False), ("adminui:templates", False), ("adminui:health", False),
    ("adminui:health-json", False),
]
POST_ROUTES = ["adminui:pool-preview", "adminui:pool-reconfigure", "adminui:pool-drain", "adminui:pool-reset"]


def _url(name, arg, pool, event):
    if arg == "event":
        return reverse(name, args=[event.pk])
    return reverse(name, args=[pool.pk]) if arg else reverse(name)


@pytest.fixture
def event(ready_pool):
    return AuditEvent.objects.create(actor_name="system", action="pool.create", pool_id=ready_pool.pk)


@pytest.mark.parametrize(("name", "arg"), GET_ROUTES)
def test_admin_gets_every_page(client, admin_user, ready_pool, event, name, arg):
    client.force_login(admin_user)
    response = client.get(_url(name, arg, ready_pool, event))
    assert response.status_code == 200


@pytest.mark.parametrize(("name", "arg"), GET_ROUTES)
def test_engineer_gets_a_friendly_403_page(client, engineer, ready_pool, event, name, arg):
    client.force_login(engineer)
    response = client.get(_url(name, arg, ready_pool, event))
    assert response.status_code == 403
    assert b"for vmportal admins" in response.content


@pytest.mark.parametrize(("name", "arg"), GET_ROUTES)
def test_anonymous_is_sent_to_login(client, ready_pool, event, name, arg):
    response = client.get(_url(name, arg, ready_pool, event))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("name", POST_ROUTES)
def test_engineer_cannot_post_admin_actions(client, engineer, ready_pool, name):
    client.force_login(engineer)
    response = client.post(reverse(name, args=[ready_pool.pk]), {"size": 0})
    assert response.status_code == 403
    ready_pool.refresh_from_db()
    assert ready_pool.size == 2


@pytest.mark.parametrize("name", POST_ROUTES)
def test_anonymous_cannot_post_admin_actions(client, ready_pool, name):
    response = client.post(reverse(name, args=[ready_pool.pk]), {"size": 0})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("name", POST_ROUTES)
def test_admin_posts_need_a_csrf_token(admin_user, ready_pool, name):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    response = client.post(reverse(name, args=[ready_pool.pk]), {"size": 0})
    assert response.status_code == 403
    ready_pool.refresh_from_db()
    assert ready_pool.size == 2


def test_manage_link_is_shown_to_admins_only(client, admin_user, engineer):
    client.force_login(engineer)
    assert reverse("adminui:pools").encode() not in client.get(reverse("home")).content
    client.force_login(admin_user)
    assert reverse("adminui:pools").encode() in client.get(reverse("home")).content
