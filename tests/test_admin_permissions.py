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
    assert b"<h1>Admins only</h1>" in response.content  # the site's 403 page, with its way back
    assert b'href="/"' in response.content


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


# --- template routes: deploy, detail, derive, copy, builds, capture ---------------------------


@pytest.fixture
def objects(ready_pool):
    from apps.pools.models import TemplateBuild, VMState
    from tests import factories

    build = TemplateBuild.objects.create(
        kind=TemplateBuild.Kind.DERIVE, vcenter=ready_pool.template.vcenter, template_name="web",
        source_template=ready_pool.template, cluster=ready_pool.cluster, vm_name="web", moid="vm-9",
        status=TemplateBuild.Status.READY,
    )
    vm = factories.vm(ready_pool, state=VMState.LEASED, moid="vm-77")
    return {"template": ready_pool.template.pk, "build": build.pk, "vm": vm.pk, "pool": ready_pool}


TEMPLATE_GETS = [("adminui:template-detail", "template"), ("adminui:vm-capture", "vm")]
TEMPLATE_POSTS = [
    ("adminui:template-deploy", None, {"name": "x", "url": "https://example.com/x.ova"}),
    ("adminui:template-derive", "template", {"name": "web2"}),
    ("adminui:template-copy", "template", {"cluster": "1"}),
    ("adminui:template-forget", "template", {}),
    ("adminui:build-capture", "build", {}),
    ("adminui:build-discard", "build", {}),
    ("adminui:vm-capture", "vm", {"name": "snap"}),
]


def _turl(name, key, objects):
    return reverse(name, args=[objects[key]]) if key else reverse(name)


def _nothing_happened():
    from apps.jobs.models import Job
    from apps.pools.models import Template, TemplateBuild

    assert not Job.objects.exists()
    assert Template.objects.count() == 1
    assert TemplateBuild.objects.get().status == "ready"


@pytest.mark.parametrize(("name", "key"), TEMPLATE_GETS)
def test_template_pages_admin_engineer_anonymous(client, admin_user, engineer, objects, name, key):
    url = _turl(name, key, objects)
    assert client.get(url).status_code == 302
    client.force_login(engineer)
    forbidden = client.get(url)
    assert forbidden.status_code == 403 and b"for vmportal admins" in forbidden.content
    client.force_login(admin_user)
    assert client.get(url).status_code == 200


@pytest.mark.parametrize(("name", "key", "data"), TEMPLATE_POSTS)
def test_template_actions_are_refused_to_engineers_and_anonymous(client, engineer, objects, name, key, data):
    url = _turl(name, key, objects)
    anonymous = client.post(url, data)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith(reverse("login"))
    client.force_login(engineer)
    assert client.post(url, data).status_code == 403
    _nothing_happened()


@pytest.mark.parametrize(("name", "key", "data"), TEMPLATE_POSTS)
def test_template_actions_need_a_csrf_token(admin_user, objects, name, key, data):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(_turl(name, key, objects), data).status_code == 403
    _nothing_happened()


def test_capture_link_on_a_lease_page_is_for_admins_only(client, admin_user, engineer, ready_pool):
    from apps.leases import services as leases
    from apps.pools.models import VMState
    from tests import factories

    factories.vm(ready_pool, state=VMState.READY, moid="vm-5")
    [lease] = leases.checkout(user=engineer, pools=[ready_pool])
    capture = reverse("adminui:vm-capture", args=[lease.vm_id]).encode()
    client.force_login(engineer)
    page = client.get(reverse("lease-detail", args=[lease.pk]))
    assert page.status_code == 200 and capture not in page.content
    client.force_login(admin_user)
    assert capture in client.get(reverse("lease-detail", args=[lease.pk])).content
