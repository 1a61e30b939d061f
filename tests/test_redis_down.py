"""With Redis unreachable every page and API call works or answers a clear 503, never a 500;
and a logout during the outage holds once Redis is back with its old copy of the session.

"Unreachable" is every Redis user (sessions, RQ queues, rate limits, nudges) pointed at a
port nobody listens on; "back" points them at the test Redis again, which kept whatever
it held before, as a Redis behind a network partition does.
"""

from __future__ import annotations

import re
import socket

import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RoutePattern

from apps.api import tokens
from apps.api.http import is_api_path
from apps.audit.models import AuditEvent
from apps.leases import services as leases
from apps.pools.models import VMState
from tests import factories
from vmportal import sessions

pytestmark = pytest.mark.django_db


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisSwitch:
    def __init__(self, settings, monkeypatch):
        self.settings, self.monkeypatch = settings, monkeypatch
        self.live_url = settings.REDIS_URL
        self.dead_url = f"redis://127.0.0.1:{free_port()}/0"

    def _point_at(self, url: str) -> None:
        self.settings.REDIS_URL = url
        # django_rq reads this very dict (it keeps a reference to it) on every connection.
        for name in self.settings.RQ_QUEUES:
            self.monkeypatch.setitem(self.settings.RQ_QUEUES[name], "URL", url)
        sessions._client.cache_clear()

    def down(self) -> None:
        self._point_at(self.dead_url)

    def back(self) -> None:
        self._point_at(self.live_url)


@pytest.fixture
def redis(settings, monkeypatch, redis_conn):
    switch = RedisSwitch(settings, monkeypatch)
    yield switch
    switch.back()


def _walk(patterns, prefix=()):
    for p in patterns:
        if isinstance(p, URLResolver):
            yield from _walk(p.url_patterns, (*prefix, p.pattern))
        elif isinstance(p, URLPattern):
            yield (*prefix, p.pattern)


def every_url(values: dict[str, object]) -> list[str]:
    """One concrete path per URL pattern, with real ids where the test made the object."""
    paths = set()
    for parts in _walk(get_resolver().url_patterns):
        path = ""
        for part in parts:
            text = str(part)
            if isinstance(part, RoutePattern):
                text = re.sub(r"<(?:(\w+):)?(\w+)>", lambda m: str(values.get(m.group(2), "1")), text)
            else:  # regex routes (django-rq's json/metrics): the plain path they match
                if "(?P" in text:
                    continue
                text = text.lstrip("^").replace("/?$", "/").rstrip("$")
            path += text
        paths.add("/" + path)
    return sorted(paths)


@pytest.fixture
def site(admin_user, engineer):
    pool = factories.pool(name="deb", size=3)
    for _ in range(3):
        factories.vm(pool, state=VMState.READY)
    [lease] = leases.checkout(user=engineer, pools=[pool])
    event = AuditEvent.objects.order_by("pk").last()
    return {
        "pool": pool, "lease": lease,
        "values": {
            "pool_id": pool.pk, "pool_name": pool.name, "pool": pool.name, "lease_id": lease.pk,
            "vm_id": lease.vm_id, "name": lease.vm.name, "template_id": pool.template_id,
            "event_id": event.pk if event else 1, "queue_index": 0, "object_id": 1, "id": engineer.pk,
            "request_id": "no-such-request", "size": "10", "snapshot": "s1", "raw": "x" * 20,
        },
    }


def copy_key(session_key: str) -> str:
    return sessions.SessionStore.cache_key_prefix + session_key


def sweep(users, urls: list[str]) -> dict[tuple[str, str], int]:
    """GET every URL as each user: the status of each."""
    answered = {}
    for user in users:
        client = Client(raise_request_exception=False)
        client.force_login(user)
        for url in urls:
            response = client.get(url)
            answered[(user.username, url)] = response.status_code
            if response.status_code == 503 and is_api_path(url.split("?")[0]):
                assert response["Content-Type"] == "application/json", url
                assert "unavailable" in response.json()["error"].lower(), url
    return answered


@pytest.mark.django_db(transaction=True)  # each request commits, as in production
def test_with_redis_down_no_page_or_api_call_answers_500(redis, site, admin_user, engineer):
    urls = every_url(site["values"])
    assert len(urls) > 100
    # Some third-party pages answer 500 to made-up ids whether Redis is up or not (see the
    # report of this change); what is tested here is what an outage adds.
    baseline = sweep((admin_user, engineer), urls)
    redis.down()
    answered = sweep((admin_user, engineer), urls)
    bad = [(who, "GET", url, status) for (who, url), status in answered.items()
           if status >= 500 and status != 503 and baseline[(who, url)] < 500]
    for user in (admin_user, engineer):
        client = Client(raise_request_exception=False)
        client.force_login(user)
        # The actions people take during an outage: check out, in the browser and from CI.
        token = tokens.create_token(user=user, name="ci")[1]
        for url, kw in [(f"/pools/{site['pool'].name}/checkout", {}),
                        (f"/api/v3/vm/{site['pool'].name}", {"HTTP_X_AUTH_TOKEN": token}),
                        ("/accounts/logout/", {})]:
            response = client.post(url, **kw)
            if response.status_code >= 500 and response.status_code != 503:
                bad.append((user.username, "POST", url, response.status_code))
    assert bad == [], "\n".join(map(str, bad))
    # Most of it simply works: the pages people use read the database.
    for page in ("/", "/leases/", "/manage/", "/manage/health/", f"/leases/{site['lease'].pk}/"):
        assert answered[(admin_user.username, page)] == 200, page
    assert answered[(engineer.username, "/")] == 200
    # What cannot work without Redis says so: the queue dashboard is a 503 page.
    assert answered[(admin_user.username, "/django-rq/")] == 503
    # The checkouts went through: leased VMs, jobs queued in their rows for Redis's return.
    assert site["pool"].vms.filter(state=VMState.LEASED).count() == 3


def test_logout_while_redis_is_down_holds_once_redis_is_back(redis, engineer):
    client = Client(raise_request_exception=False)
    client.force_login(engineer)
    assert client.get("/leases/").status_code == 200  # the session is in Redis now
    key = client.cookies["sessionid"].value
    assert redis.live_url == redis.settings.REDIS_URL
    assert sessions._client().exists(copy_key(key))

    redis.down()
    stale = client.cookies["sessionid"]
    response = client.post("/accounts/logout/")
    assert response.status_code == 302, response.status_code
    assert not Session.objects.filter(session_key=key).exists()

    redis.back()
    assert sessions._client().exists(copy_key(key)), "Redis kept its copy, as after a partition"
    # Another process: it reads the session generation from the database, not from us.
    sessions._generation_seen = ("", float("-inf"))
    client.cookies["sessionid"] = stale.value
    response = client.get("/leases/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_a_session_saved_while_redis_was_down_is_read_after_it_is_back(redis, engineer):
    redis.down()
    client = Client(raise_request_exception=False)
    client.force_login(engineer)
    assert client.get("/leases/").status_code == 200
    redis.back()
    assert client.get("/leases/").status_code == 200


def test_the_generation_row_cannot_be_reached_through_a_cookie(engineer):
    sessions._start_generation()
    client = Client()
    client.cookies["sessionid"] = sessions.GENERATION_KEY
    assert client.get("/leases/").status_code == 302  # not signed in, nothing loaded
    store = sessions.SessionStore(sessions.GENERATION_KEY)
    assert store.session_key is None
    store.flush()
    assert Session.objects.filter(session_key=sessions.GENERATION_KEY).exists()
