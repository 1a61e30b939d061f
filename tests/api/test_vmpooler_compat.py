"""vmpooler's clients unchanged: public reads, token status, absolute lifetimes, domains,
aliases, status views, summary ranges and the dashboard's routes (issue 16)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone

from apps.leases.models import Lease, OnDemandRequest
from apps.pools.models import VM, Pool, VMState
from tests.api.conftest import auth_client, ready_pool

pytestmark = pytest.mark.django_db
JSON = "application/json"

PUBLIC_READS = ["/api/v3/vm", "/api/v3/status", "/api/v3/status?view=capacity", "/api/v3/summary",
                "/api/v3/summary/boot", "/api/v3/summary/tag/build", "/api/v3/poolstat?pool=debian-12",
                "/api/v3/totalrunning", "/dashboard/stats/vmpooler/pool", "/dashboard/stats/vmpooler/running"]


def _checkout(client: Client, pool: str = "debian-12") -> str:
    response = client.post(f"/api/v3/vm/{pool}")
    assert response.status_code == 200, response.content
    return response.json()[pool]["hostname"]


# --- public reads --------------------------------------------------------------------------


@pytest.mark.parametrize("url", PUBLIC_READS)
def test_reads_vmpooler_serves_without_a_token_answer_anonymous_clients(client, debian, url):
    response = client.get(url)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"


def test_vm_and_ondemand_reads_are_public_but_writes_need_a_token(client, api, debian):
    host = _checkout(api)
    assert client.get(f"/api/v3/vm/{host}").json()[host]["state"] == "running"
    request_id = api.post("/api/v3/ondemandvm", {"debian-12": "1"}, content_type=JSON).json()["request_id"]
    polled = client.get(f"/api/v3/ondemandvm/{request_id}")
    assert polled.status_code == 202 and polled.json()["debian-12"] == {"ready": "0", "pending": "1"}
    assert client.put(f"/api/v3/vm/{host}", {"lifetime": "3"}, content_type=JSON).status_code == 401
    assert client.delete(f"/api/v3/vm/{host}").status_code == 401
    assert client.post("/api/v3/vm/debian-12").status_code == 401
    assert client.delete(f"/api/v3/ondemandvm/{request_id}").status_code == 401
    assert client.get("/api/v3/config").status_code == 401  # not one of vmpooler's public reads here


def test_public_reads_setting_closes_them(client, api, debian, settings):
    settings.VMPORTAL_API_PUBLIC_READS = False
    for url in PUBLIC_READS:
        assert client.get(url).status_code == 401, url
        assert api.get(url).status_code == 200, url


def test_anonymous_reader_does_not_see_a_lessees_tags(client, api, debian):
    host = _checkout(api)
    api.put(f"/api/v3/vm/{host}", {"tags": {"job": "x"}}, content_type=JSON)
    assert client.get(f"/api/v3/vm/{host}").json()[host]["tags"] == {}


# --- token status ----------------------------------------------------------------------------


def test_token_status_carries_ok_and_the_running_vms(client, api, engineer_token, debian):
    hosts = {_checkout(api), _checkout(api)}
    body = client.get(f"/api/v3/token/{engineer_token}").json()
    assert body["ok"] is True
    entry = body[engineer_token]
    assert entry["user"] == "bob-engineer" and set(entry["vms"]["running"]) == hosts
    assert {"created", "last"} <= set(entry)
    assert client.get("/api/v3/token/not-a-token").status_code == 404


# --- PUT /vm/<host>: absolute lifetime, tags, both or neither ------------------------------------


def _lease(host: str) -> Lease:
    return Lease.objects.get(vm__name=host)


def test_lifetime_equal_to_the_current_one_with_tags_applies_both(api, debian):
    host = _checkout(api)  # a fresh 2-hour lease
    response = api.put(f"/api/v3/vm/{host}", {"lifetime": "2", "tags": {"build": "42"}}, content_type=JSON)
    assert response.status_code == 200 and response.json() == {"ok": True}
    lease = _lease(host)
    assert lease.expires_at - lease.started_at == timedelta(hours=2) and lease.tags == {"build": "42"}


def test_lifetime_can_shrink_down_to_the_hours_already_run(api, debian):
    host = _checkout(api)
    Lease.objects.filter(vm__name=host).update(started_at=timezone.now() - timedelta(hours=3, minutes=30),
                                               expires_at=timezone.now() + timedelta(hours=8))
    assert api.put(f"/api/v3/vm/{host}", {"lifetime": "4"}, content_type=JSON).status_code == 200
    lease = _lease(host)
    assert lease.expires_at - lease.started_at == timedelta(hours=4)
    too_short = api.put(f"/api/v3/vm/{host}", {"lifetime": "3"}, content_type=JSON)
    assert too_short.status_code == 400 and "run 3.5 hours already" in too_short.json()["failure"][0]
    assert api.get(f"/api/v3/vm/{host}").json()[host]["lifetime"] == 4


@pytest.mark.parametrize("body", [{"lifetime": "5", "tags": {"bad key!": "x"}},
                                  {"lifetime": "500", "tags": {"build": "42"}},
                                  {"lifetime": "x", "tags": {"build": "42"}}])
def test_a_body_with_one_bad_half_changes_nothing(api, debian, body):
    host = _checkout(api)
    before = _lease(host)
    response = api.put(f"/api/v3/vm/{host}", body, content_type=JSON)
    assert response.status_code == 400
    assert response.json()["ok"] is False and response.json()["failure"]
    assert "Nothing was changed" in response.json()["error"]
    after = _lease(host)
    assert after.expires_at == before.expires_at and after.tags == {}


def test_pages_extend_still_adds_time_after_an_api_shrink(client, engineer, api, debian):
    host = _checkout(api)
    api.put(f"/api/v3/vm/{host}", {"lifetime": "1"}, content_type=JSON)
    lease = _lease(host)
    client.force_login(engineer)
    assert client.post(f"/leases/{lease.pk}/extend", {"hours": "4"}).status_code == 302
    lease.refresh_from_db()
    assert lease.expires_at - lease.started_at == timedelta(hours=5)


# --- domains ----------------------------------------------------------------------------


def test_hostnames_are_fqdns_of_the_pools_domain_or_the_global_one(api, client, engineer, settings, db):
    settings.VMPORTAL_API_DOMAIN = "vm.example.com"
    ready_pool("debian-12", ready=1, domain="lab.example.net")
    ready_pool("centos-9", ready=1)
    body = api.post("/api/v3/vm", {"debian-12": "1", "centos-9": "1"}, content_type=JSON).json()
    debian_host, centos_host = body["debian-12"]["hostname"], body["centos-9"]["hostname"]
    assert debian_host.endswith(".lab.example.net") and centos_host.endswith(".vm.example.com")
    assert "domain" not in body
    short = debian_host.split(".")[0]
    detail = client.get(f"/api/v3/vm/{debian_host}").json()  # the FQDN is accepted, as vmpooler
    assert detail[short]["fqdn"] == debian_host and detail[short]["domain"] == "lab.example.net"
    assert "domain" not in detail
    assert api.put(f"/api/v3/vm/{debian_host}", {"tags": {"a": "b"}}, content_type=JSON).status_code == 200
    assert api.delete(f"/api/v3/vm/{centos_host}").status_code == 200


def test_ondemand_ready_hostnames_are_fqdns(api, client, engineer, db, settings):
    settings.VMPORTAL_API_DOMAIN = "vm.example.com"
    debian = ready_pool("debian-12", ready=0, domain="lab.example.net")
    request_id = api.post("/api/v3/ondemandvm", {"debian-12": "1"}, content_type=JSON).json()["request_id"]
    req = OnDemandRequest.objects.get()
    vm = VM.objects.create(vcenter=debian.cluster.vcenter, pool=debian, name="debian-12-abc", on_demand=True,
                           state=VMState.LEASED)
    req.vms.add(vm)
    Lease.objects.create(vm=vm, pool=debian, user=engineer, expires_at=timezone.now() + timedelta(hours=2))
    OnDemandRequest.objects.filter(pk=req.pk).update(status="ready")
    body = client.get(f"/api/v3/ondemandvm/{request_id}").json()
    assert body["ready"] is True and body["debian-12"]["hostname"] == ["debian-12-abc.lab.example.net"]
    assert "domain" not in body


def test_a_pool_domain_must_be_a_dns_name(db):
    pool = ready_pool("p", ready=0)
    pool.domain = "not a domain"
    with pytest.raises(ValidationError):
        pool.full_clean()


# --- aliases ---------------------------------------------------------------------------


@pytest.fixture
def aliased(db):
    a = ready_pool("debian-12-a", ready=0, aliases="debian,debian-latest", alias_weight=1)
    b = ready_pool("debian-12-b", ready=2, aliases="debian", alias_weight=3)
    return a, b


def test_checkout_by_alias_takes_from_a_pool_with_ready_vms(api, aliased):
    response = api.post("/api/v3/vm/debian+debian")
    assert response.status_code == 200, response.content
    hosts = response.json()["debian"]["hostname"]
    assert len(hosts) == 2
    assert set(Lease.objects.values_list("pool__name", flat=True)) == {"debian-12-b"}
    assert api.post("/api/v3/vm", {"debian-latest": "1"}, content_type=JSON).status_code == 503  # a is empty


def test_checkout_by_alias_spreads_by_weight(api, db, admin_token):
    light = ready_pool("light", ready=12, aliases="shared", alias_weight=1)
    heavy = ready_pool("heavy", ready=12, aliases="shared", alias_weight=20)
    admin = auth_client(admin_token)  # admins have no lease limit
    for _ in range(10):
        assert admin.post("/api/v3/vm/shared").status_code == 200
    taken = Lease.objects.values_list("pool_id", flat=True)
    assert list(taken).count(heavy.pk) >= 6 > list(taken).count(light.pk)  # p(light) = 1/21 per pick


def test_ondemand_by_alias_asks_a_backing_pool(api, aliased):
    from apps.pools.models import TemplateStatus

    for pool in aliased:
        pool.template.status = TemplateStatus.READY
        pool.template.save()
    response = api.post("/api/v3/ondemandvm/debian-latest")
    assert response.status_code == 201, response.content
    assert OnDemandRequest.objects.get().wanted == {"debian-12-a": 1}


def test_aliases_show_in_status_and_poolstat(client, aliased):
    status = client.get("/api/v3/status").json()
    assert status["pools"]["debian-12-a"]["alias"] == ["debian", "debian-latest"]
    assert status["pools"]["debian-12-b"]["alias"] == ["debian"]
    poolstat = client.get("/api/v3/poolstat?pool=debian-latest").json()
    assert poolstat["pools"] == {"debian-12-a": {"ready": 0, "max": 2, "alias": ["debian", "debian-latest"]}}
    assert set(client.get("/api/v3/poolstat?pool=debian").json()["pools"]) == {"debian-12-a", "debian-12-b"}


def test_an_alias_may_not_be_another_pools_name(aliased):
    a, b = aliased
    a.aliases = "debian-12-b"
    with pytest.raises(ValidationError, match="debian-12-b"):
        a.full_clean()


def test_admins_edit_aliases_domain_and_weight_on_the_pool_page(client, admin_user, aliased):
    from django.urls import reverse

    from apps.pools import reconfigure

    a, _ = aliased
    reconfigure.update_pool(pool_id=a.pk, changes={"aliases": "deb", "alias_weight": 5, "domain": "x.example"})
    a.refresh_from_db()
    assert (a.alias_list, a.alias_weight, a.domain) == (["deb"], 5, "x.example")
    client.force_login(admin_user)
    page = client.get(reverse("adminui:pool-detail", args=[a.pk])).content.decode()
    assert 'name="edit-aliases"' in page and 'name="edit-alias_weight"' in page and 'name="edit-domain"' in page


# --- status views, summary ranges, dashboard ---------------------------------------------


def test_status_view_selects_the_sections(client, debian):
    body = client.get("/api/v3/status?view=capacity,pools").json()
    assert set(body) == {"ok", "status", "capacity", "pools"}
    full = client.get("/api/v3/status").json()
    assert {"capacity", "queue", "clone", "boot", "pools", "status"} <= set(full)
    assert {"requested", "pending", "cloning", "booting", "ready", "running", "completed", "total"} \
        == set(full["queue"])
    assert set(full["boot"]) == {"count", "duration"} and full["clone"]["count"]["total"] == 3


def test_summary_from_to_and_sub_routes(client, api, debian):
    host = _checkout(api)
    api.put(f"/api/v3/vm/{host}", {"tags": {"build": "42"}}, content_type=JSON)
    today = timezone.localdate()
    start = (today - timedelta(days=2)).isoformat()
    body = client.get(f"/api/v3/summary?from={start}").json()
    assert [d["date"] for d in body["daily"]] == [(today - timedelta(days=n)).isoformat() for n in (2, 1, 0)]
    assert body["clone"]["count"]["total"] == 3 and body["clone"]["count"]["pool"]["debian-12"] == {"total": 3}
    assert body["tag"] == {"build": {"42": 1, "total": 1}}
    assert set(body["boot"]["duration"]) == {"average", "min", "max", "total", "pool"}
    counts = client.get("/api/v3/summary/clone/count").json()
    assert set(counts["clone"]) == {"count"} and counts["daily"][0]["clone"]["count"]["total"] == 3
    assert client.get("/api/v3/summary/tag/build").json()["tag"] == {"build": {"42": 1, "total": 1}}
    assert client.get("/api/v3/summary/tag/other").json()["tag"] == {}


@pytest.mark.parametrize("query,message", [("from=yesterday", "YYYY-MM-DD"), ("from=2024-02-30", "YYYY-MM-DD"),
                                           ("from=2024-02-02&to=2024-02-01", "'to' cannot come before"),
                                           ("from=2999-01-01&to=2999-01-02", "must be in the past"),
                                           ("from=2000-01-01&to=2020-01-01", "at most 366 days")])
def test_summary_refuses_bad_ranges_with_400(client, debian, query, message):
    response = client.get(f"/api/v3/summary?{query}")
    assert response.status_code == 400 and message in response.json()["error"]


def test_unknown_summary_route_is_404(client, debian):
    assert client.get("/api/v3/summary/nothing").status_code == 404


def test_dashboard_routes_as_vmpoolers_dashboard_reads_them(client, api, debian, centos):
    _checkout(api)
    pools = client.get("/dashboard/stats/vmpooler/pool").json()
    assert pools["debian-12"] == {"size": 2, "ready": 2} and pools["centos-9"] == {"size": 2, "ready": 1}
    history = client.get("/dashboard/stats/vmpooler/pool?history=1").json()
    assert history["debian-12"]["history"] == [2]
    assert client.get("/dashboard/stats/vmpooler/running").json() == {"debian": {"running": 1},
                                                                       "centos": {"running": 0}}


def test_pool_model_keeps_weight_positive(db):
    pool = ready_pool("w", ready=0)
    pool.alias_weight = 0
    with pytest.raises(ValidationError):
        pool.full_clean()
    assert Pool.objects.get(pk=pool.pk).alias_weight == 1
