"""GET /api/v1/leases a page at a time (issue 14): `limit` and `after`, a Link header to the next
page, every active lease exactly once across the pages, in a bounded number of queries."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.leases.models import Lease
from apps.pools.models import VMState
from tests import factories
from tests.api.conftest import auth_client, token_for

pytestmark = pytest.mark.django_db


def _leases(pool, user, n: int, *, ended: bool = False) -> list[int]:
    now = timezone.now()
    made = []
    for i in range(n):
        vm = factories.vm(pool, state=VMState.DESTROYED if ended else VMState.LEASED)
        made.append(Lease.objects.create(vm=vm, pool=pool, user=user, expires_at=now + timedelta(hours=n - i),
                                         ended_at=now if ended else None).pk)
    return made


def _walk(client, url: str) -> list[list[int]]:
    """Follows the Link header from the first page to the last; the ids of each page."""
    pages = []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content
        pages.append([lease["id"] for lease in response.json()])
        link = response.headers.get("Link")
        if link:
            assert link.endswith('>; rel="next"') and link.startswith("<http://testserver/api/v1/leases?")
            url = link[1:link.index(">")].removeprefix("http://testserver")
        else:
            url = ""
        assert len(pages) < 20, "the Link header never stops"
    return pages


@pytest.fixture
def pool(db):
    return factories.pool(name="debian-12", size=0)


def test_an_admin_walks_every_active_lease_exactly_once(pool, admin_user, engineer, other_engineer):
    mine = _leases(pool, engineer, 4)
    theirs = _leases(pool, other_engineer, 3)
    _leases(pool, engineer, 2, ended=True)
    admin = auth_client(token_for(admin_user))
    pages = _walk(admin, "/api/v1/leases?all=true&limit=3")
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for page in pages for i in page] == sorted(mine + theirs)


def test_a_last_page_that_is_full_has_no_link(pool, engineer):
    _leases(pool, engineer, 4)
    api = auth_client(token_for(engineer))
    assert [len(p) for p in _walk(api, "/api/v1/leases?limit=2")] == [2, 2]
    assert api.get("/api/v1/leases?limit=4").headers.get("Link") is None


def test_extending_a_lease_mid_walk_moves_nothing(pool, engineer):
    ids = _leases(pool, engineer, 5)
    api = auth_client(token_for(engineer))
    first = api.get("/api/v1/leases?limit=2")
    seen = [lease["id"] for lease in first.json()]
    # The first lease of the walk now expires last, and one not yet seen ends.
    Lease.objects.filter(pk=seen[0]).update(expires_at=timezone.now() + timedelta(days=3))
    Lease.objects.filter(pk=ids[3]).update(ended_at=timezone.now())
    rest = _walk(api, first.headers["Link"][1:first.headers["Link"].index(">")].removeprefix("http://testserver"))
    assert seen + [i for page in rest for i in page] == [i for i in ids if i != ids[3]]


def test_default_page_is_100_and_a_person_sees_only_their_own(pool, engineer, other_engineer):
    _leases(pool, other_engineer, 2)
    ids = _leases(pool, engineer, 101)
    api = auth_client(token_for(engineer))
    response = api.get("/api/v1/leases?all=true")  # all=true is an admin's; others get their own
    assert [lease["id"] for lease in response.json()] == ids[:100]
    assert f"after={ids[99]}" in response.headers["Link"] and "all=true" in response.headers["Link"]
    assert [lease["id"] for lease in api.get(f"/api/v1/leases?after={ids[99]}").json()] == [ids[100]]


def test_a_page_shows_each_lease_as_a_single_lease_does(pool, engineer):
    [lease_id] = _leases(pool, engineer, 1)
    Lease.objects.filter(pk=lease_id).update(note="ci", tags={"job": "7"})
    api = auth_client(token_for(engineer))
    [listed] = api.get("/api/v1/leases").json()
    assert listed == api.get(f"/api/v1/leases/{lease_id}").json()
    assert listed["user"] == engineer.username and listed["pool"] == "debian-12" and listed["tags"] == {"job": "7"}


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "after=-1", "after=x"])
def test_bad_paging_is_400_naming_the_parameter(pool, engineer, query):
    response = auth_client(token_for(engineer)).get(f"/api/v1/leases?{query}")
    assert response.status_code == 400 and response.json()["ok"] is False
    assert response.json()["detail"][0]["loc"][-1] == query.split("=")[0]


def test_a_page_costs_the_same_queries_for_30_leases_as_for_3(pool, admin_user, engineer):
    admin = auth_client(token_for(admin_user))

    def count() -> int:
        admin.get("/api/v1/leases?all=true")
        with CaptureQueriesContext(connection) as ctx:
            assert len(admin.get("/api/v1/leases?all=true").json()) == Lease.objects.active().count()
        return len(ctx.captured_queries)

    _leases(pool, engineer, 3)
    few = count()
    _leases(factories.pool(), admin_user, 27)
    assert count() == few


def test_schema_documents_paging(api):
    operation = api.get("/api/v1/openapi.json").json()["paths"]["/api/v1/leases"]["get"]
    params = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert params["limit"]["default"] == 100 and params["limit"]["maximum"] == 1000
    assert params["after"]["minimum"] == 0
    assert "Link" in operation["responses"]["200"]["headers"]
    assert "after" in operation["description"]
