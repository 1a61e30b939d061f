"""Contract tests for the vmpooler v3 routes: shapes and status codes, and who may do what."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from apps.leases.models import Lease
from apps.pools.models import VM, Pool, VMState
from tests.api.conftest import auth_client, ready_pool

pytestmark = pytest.mark.django_db


# --- auth --------------------------------------------------------------------------------

V3_GETS = ["/api/v3/vm", "/api/v3/vm/x", "/api/v3/status", "/api/v3/summary", "/api/v3/poolstat",
           "/api/v3/totalrunning", "/api/v3/config", "/api/v3/ondemandvm/x", "/dashboard/stats/vmpooler/pool"]


@pytest.mark.parametrize("url", V3_GETS)
def test_anonymous_gets_401_json_not_a_login_redirect_when_public_reads_are_off(client, url, settings):
    settings.VMPORTAL_API_PUBLIC_READS = False
    response = client.get(url)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response.json()["ok"] is False and response.json()["error"]
    assert "WWW-Authenticate" in response


def test_session_cookie_is_not_api_auth(client, engineer, debian):
    client.force_login(engineer)
    assert client.post("/api/v3/vm/debian-12").status_code == 401
    assert not Lease.objects.exists()


def test_bearer_token_works_like_x_auth_token(engineer_token, debian):
    from django.test import Client

    response = Client(headers={"Authorization": f"Bearer {engineer_token}"}).get("/api/v3/vm")
    assert response.status_code == 200


def test_v2_is_an_alias_of_v3(api, debian):
    assert api.get("/api/v2/vm").json() == api.get("/api/v3/vm").json()


def test_unknown_api_path_is_json_404(api):
    response = api.get("/api/v3/nothing-here")
    assert response.status_code == 404 and response.json()["ok"] is False


def test_wrong_method_is_json_405(api):
    response = api.patch("/api/v3/vm")
    assert response.status_code == 405 and response.json()["ok"] is False


# --- GET /vm, POST /vm, POST /vm/<pool+pool> -----------------------------------------------


def test_get_vm_lists_pool_names(api, debian, centos):
    response = api.get("/api/v3/vm")
    assert response.status_code == 200
    assert response.json() == ["centos-9", "debian-12"]


def test_post_vm_body_checks_out_from_several_pools(api, engineer, debian, centos, settings):
    settings.VMPORTAL_API_DOMAIN = "vm.example.com"
    response = api.post("/api/v3/vm", {"debian-12": "2", "centos-9": 1}, content_type="application/json")
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True and "domain" not in body  # v3: FQDNs, no separate domain
    assert isinstance(body["debian-12"]["hostname"], list) and len(body["debian-12"]["hostname"]) == 2
    assert all(h.endswith(".vm.example.com") for h in body["debian-12"]["hostname"])
    assert isinstance(body["centos-9"]["hostname"], str) and body["centos-9"]["hostname"].endswith(".vm.example.com")
    assert Lease.objects.active().filter(user=engineer).count() == 3


def test_post_vm_path_checks_out_one_per_mention(api, debian, centos):
    response = api.post("/api/v3/vm/debian-12+debian-12+centos-9")
    assert response.status_code == 200
    body = response.json()
    assert len(body["debian-12"]["hostname"]) == 2
    leased = set(VM.objects.filter(state=VMState.LEASED).values_list("name", flat=True))
    assert set(body["debian-12"]["hostname"]) | {body["centos-9"]["hostname"]} == leased


def test_multi_vm_checkout_is_all_or_nothing_with_503(api, debian, centos):
    response = api.post("/api/v3/vm/debian-12+centos-9+centos-9")
    assert response.status_code == 503
    assert response.json()["ok"] is False
    assert not Lease.objects.exists()
    assert VM.objects.filter(state=VMState.READY).count() == 4


def test_checkout_from_unknown_pool_is_404(api, debian):
    response = api.post("/api/v3/vm/debian-12+nope")
    assert response.status_code == 404 and "nope" in response.json()["error"]
    assert not Lease.objects.exists()


@pytest.mark.parametrize("body", [{"debian-12": "0"}, {"debian-12": "x"}, {"debian-12": "500"}, {}, ["debian-12"]])
def test_post_vm_with_bad_counts_is_400(api, debian, body):
    response = api.post("/api/v3/vm", body, content_type="application/json")
    assert response.status_code == 400 and response.json()["ok"] is False


def test_post_vm_with_bad_json_is_400(api, debian):
    response = api.post("/api/v3/vm", "{not json", content_type="application/json")
    assert response.status_code == 400 and "JSON" in response.json()["error"]


def test_oversized_body_is_413_json(api, debian, settings):
    settings.VMPORTAL_API_MAX_BODY_BYTES = 1024
    body = json.dumps({"debian-12": "1", "x": "y" * 2000})
    response = api.post("/api/v3/vm", body, content_type="application/json")
    assert response.status_code == 413 and response.json()["ok"] is False
    assert not Lease.objects.exists()


# --- GET/PUT/DELETE /vm/<hostname> ---------------------------------------------------------


def _checkout(client, pool="debian-12") -> str:
    response = client.post(f"/api/v3/vm/{pool}")
    assert response.status_code == 200, response.content
    return response.json()[pool]["hostname"]


def test_get_vm_of_a_running_vm(api, debian):
    host = _checkout(api)
    response = api.get(f"/api/v3/vm/{host}")
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True
    vm = body[host]
    assert vm["state"] == "running" and vm["template"] == "debian-12"
    assert {"lifetime", "running", "remaining", "start_time", "end_time", "tags", "ip", "fqdn", "host"} <= set(vm)
    assert vm["lifetime"] == 2 and 1.9 < vm["remaining"] <= 2


def test_get_vm_of_a_ready_vm_and_unknown_vm(api, debian):
    ready = VM.objects.filter(pool=debian).first().name
    assert api.get(f"/api/v3/vm/{ready}").json()[ready]["state"] == "ready"
    assert api.get("/api/v3/vm/ghost").status_code == 404


def test_put_lifetime_extends_the_lease(api, engineer, debian):
    host = _checkout(api)
    response = api.put(f"/api/v3/vm/{host}", {"lifetime": "6"}, content_type="application/json")
    assert response.status_code == 200 and response.json() == {"ok": True}
    lease = Lease.objects.get(vm__name=host)
    assert lease.expires_at - lease.started_at == timedelta(hours=6)


def test_put_lifetime_over_the_pools_maximum_is_400_and_changes_nothing(api, debian):
    host = _checkout(api)
    response = api.put(f"/api/v3/vm/{host}", {"lifetime": "1000"}, content_type="application/json")
    assert response.status_code == 400 and "24 hours" in response.json()["failure"][0]
    assert api.put(f"/api/v3/vm/{host}", {"lifetime": "24"}, content_type="application/json").status_code == 200
    lease = Lease.objects.get(vm__name=host)
    assert lease.expires_at - lease.started_at == Pool.objects.get(name="debian-12").lease_max_lifetime


def test_put_tags_merges_tags(api, debian):
    host = _checkout(api)
    api.put(f"/api/v3/vm/{host}", {"tags": {"a": "1"}}, content_type="application/json")
    api.put(f"/api/v3/vm/{host}", {"tags": {"b": "two"}}, content_type="application/json")
    assert api.get(f"/api/v3/vm/{host}").json()[host]["tags"] == {"a": "1", "b": "two"}


@pytest.mark.parametrize("body", [{"tags": {"bad key!": "x"}}, {"tags": {"k": "<script>"}}, {"tags": "x"},
                                  {"lifetime": "abc"}, {"lifetime": "0"}, {"colour": "red"}, {}])
def test_put_with_invalid_input_is_400(api, debian, body):
    host = _checkout(api)
    response = api.put(f"/api/v3/vm/{host}", body, content_type="application/json")
    assert response.status_code == 400 and response.json()["ok"] is False


def test_put_shorter_lifetime_shrinks_the_lease(api, debian):
    host = _checkout(api)
    api.put(f"/api/v3/vm/{host}", {"lifetime": "6"}, content_type="application/json")
    response = api.put(f"/api/v3/vm/{host}", {"lifetime": "3"}, content_type="application/json")
    assert response.status_code == 200
    lease = Lease.objects.get(vm__name=host)
    assert lease.expires_at - lease.started_at == timedelta(hours=3)


def test_delete_vm_returns_the_lease(api, debian):
    host = _checkout(api)
    response = api.delete(f"/api/v3/vm/{host}")
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert not Lease.objects.active().exists()
    assert api.delete(f"/api/v3/vm/{host}").status_code == 404


def test_delete_of_a_ready_vm_is_404(api, debian):
    ready = VM.objects.filter(pool=debian).first().name
    assert api.delete(f"/api/v3/vm/{ready}").status_code == 404
    assert VM.objects.get(name=ready).state == VMState.READY


# --- ownership: owner / other / admin / anonymous --------------------------------------------


@pytest.mark.parametrize("method,body", [("put", {"lifetime": "6"}), ("put", {"tags": {"a": "b"}}), ("delete", None)])
def test_only_owner_or_admin_may_change_a_vm(client, api, other_token, admin_token, debian, method, body):
    host = _checkout(api)
    kwargs = {"data": body, "content_type": "application/json"} if body else {}
    url = f"/api/v3/vm/{host}"
    assert getattr(client, method)(url, **kwargs).status_code == 401  # anonymous
    assert getattr(auth_client(other_token), method)(url, **kwargs).status_code == 403  # other
    assert Lease.objects.active().filter(vm__name=host).exists()
    assert getattr(auth_client(admin_token), method)(url, **kwargs).status_code == 200  # admin
    if method == "put":
        assert getattr(api, method)(url, **kwargs).status_code in (200, 400)  # owner (400: no longer than 6 h)


def test_tags_of_others_are_hidden(api, other_token, debian):
    host = _checkout(api)
    api.put(f"/api/v3/vm/{host}", {"tags": {"job": "secret-project"}}, content_type="application/json")
    body = auth_client(other_token).get(f"/api/v3/vm/{host}").json()
    assert body[host]["state"] == "running" and body[host]["tags"] == {}


# --- status, summary, poolstat, totalrunning, config ------------------------------------------


def test_status_shape(api, debian, centos):
    _checkout(api, "centos-9")
    body = api.get("/api/v3/status").json()
    assert set(body) >= {"capacity", "queue", "pools", "status"}
    assert body["pools"]["debian-12"] == {"ready": 3, "running": 0, "pending": 0, "max": 2, "lastBoot": ""}
    assert body["pools"]["centos-9"]["running"] == 1
    assert body["status"]["ok"] is False and body["status"]["empty"] == ["centos-9"]
    assert set(body["capacity"]) == {"current", "total", "percent"}


def test_summary_shape(api, debian):
    body = api.get("/api/v3/summary").json()
    assert {"boot", "clone", "tag", "daily"} <= set(body)
    assert body["daily"][0]["clone"]["count"]["total"] == 3


def test_poolstat_filters_by_pool(api, debian, centos):
    body = api.get("/api/v3/poolstat?pool=centos-9").json()
    assert body["pools"] == {"centos-9": {"ready": 1, "max": 2}}


def test_totalrunning(api, debian):
    _checkout(api)
    assert api.get("/api/v3/totalrunning").json()["running"] == 1


def test_config_lists_pools_without_credentials(api, debian):
    response = api.get("/api/v3/config")
    body = response.json()
    assert body["pool_configuration"][0]["name"] == "debian-12"
    text = response.content.decode().lower()
    assert "password" not in text and '"p"' not in text and "username" not in text


def test_config_poolsize_needs_an_admin(api, admin_token, debian):
    body = {"debian-12": "5"}
    assert api.post("/api/v3/config/poolsize", body, content_type="application/json").status_code == 403
    admin = auth_client(admin_token)
    assert admin.post("/api/v3/config/poolsize", body, content_type="application/json").status_code == 201
    assert Pool.objects.get(name="debian-12").size == 5
    assert admin.post("/api/v3/config/poolsize", body, content_type="application/json").status_code == 200
    bad = admin.post("/api/v3/config/poolsize", {"nope": "1"}, content_type="application/json")
    assert bad.status_code == 404


def test_config_poolsize_refuses_a_pool_that_sizes_itself_and_changes_none(admin_token, debian, centos):
    Pool.objects.filter(pk=centos.pk).update(autosize=True, min_size=1, max_size=6)
    admin = auth_client(admin_token)
    response = admin.post("/api/v3/config/poolsize", {"debian-12": "7", "centos-9": "3"},
                          content_type="application/json")
    assert response.status_code == 409
    assert "centos-9 sizes itself (automatic size, 1..6)" in response.json()["error"]
    assert Pool.objects.get(pk=debian.pk).size == debian.size  # all or none: debian-12 kept its size
    assert Pool.objects.get(pk=centos.pk).size == centos.size
    assert admin.post("/api/v3/config/poolsize", {"debian-12": "7"}, content_type="application/json").status_code == 201


def test_config_poolsize_is_audited(admin_token, debian):
    from apps.audit.models import AuditEvent

    auth_client(admin_token).post("/api/v3/config/poolsize", {"debian-12": "4"}, content_type="application/json")
    event = AuditEvent.objects.get(action="pool.resize")
    assert event.before == {"size": 2} and event.after == {"size": 4} and event.actor_name == "alice-admin"


def test_checkout_through_api_is_audited_as_the_token_user(api, debian):
    from apps.audit.models import AuditEvent

    _checkout(api)
    assert AuditEvent.objects.get(action="lease.checkout").actor_name == "bob-engineer"


# --- rate limits ------------------------------------------------------------------------------


def test_rate_limit_per_token_gives_429_with_retry_after(api, other_token, settings, debian):
    settings.VMPORTAL_API_RATE_LIMIT_PER_TOKEN = 3
    for _ in range(3):
        assert api.get("/api/v3/vm").status_code == 200
    response = api.get("/api/v3/vm")
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 60
    assert response.json()["ok"] is False
    assert auth_client(other_token).get("/api/v3/vm").status_code == 200  # another token is not limited


def test_rate_limit_per_ip_counts_anonymous_requests(client, api, settings, debian):
    settings.VMPORTAL_API_RATE_LIMIT_PER_IP = 2
    assert client.get("/api/v3/vm").status_code == 200
    assert client.get("/api/v3/vm").status_code == 200
    response = api.get("/api/v3/vm")
    assert response.status_code == 429 and "Retry-After" in response


def test_a_limit_set_to_0_is_not_counted(api, settings, debian):
    from apps.api.guard import KEY_PREFIX
    from apps.core.redis_client import redis_client

    settings.VMPORTAL_API_RATE_LIMIT_PER_IP = 0
    settings.VMPORTAL_API_RATE_LIMIT_PER_TOKEN = 2
    assert api.get("/api/v3/vm").status_code == 200
    keys = {k.decode().split(":")[2] for k in redis_client().scan_iter(f"{KEY_PREFIX}:*")}
    assert keys == {"token"}  # the per-IP counter, off, costs no Redis call
    settings.VMPORTAL_API_RATE_LIMIT_PER_TOKEN = 0
    for _ in range(3):
        assert api.get("/api/v3/vm").status_code == 200  # both off: never refused


def test_ready_pool_helper_builds_ready_vms(db):
    pool = ready_pool("p", ready=2)
    assert pool.vms.filter(state=VMState.READY).count() == 2


@pytest.mark.parametrize("url,body", [("/api/v3/vm", '{"debian-12\\u0000": "1"}'), ("/api/v3/vm/a%00b", ""),
                                      ("/api/v1/leases", '{"pools": ["debian-12"], "note": "\\u0000"}')])
def test_nul_characters_are_refused_with_400(api, debian, url, body):
    response = api.post(url, body, content_type="application/json")
    assert response.status_code == 400 and response.json()["ok"] is False


def test_config_pooltemplate_and_clonetarget_need_an_admin(api, admin_token, debian):
    from apps.pools.models import TemplateCopy, TemplateStatus
    from tests import factories

    vc = debian.cluster.vcenter
    debian13 = factories.template(vc, name="debian-13")
    other_cluster = factories.cluster(vc)
    for cluster in (debian.cluster, other_cluster):  # a retarget needs the template ready there
        TemplateCopy.objects.create(template=debian13, cluster=cluster, moid="vm-13", status=TemplateStatus.READY)
    admin = auth_client(admin_token)
    body = {"debian-12": "Templates/debian-13"}
    assert api.post("/api/v3/config/pooltemplate", body, content_type="application/json").status_code == 403
    assert admin.post("/api/v3/config/pooltemplate", body, content_type="application/json").status_code == 201
    assert admin.post("/api/v3/config/pooltemplate", body, content_type="application/json").status_code == 200
    target = {"debian-12": other_cluster.name}
    assert admin.post("/api/v3/config/clonetarget", target, content_type="application/json").status_code == 201
    pool = Pool.objects.get(name="debian-12")
    assert pool.template.name == "debian-13" and pool.cluster == other_cluster
    missing = admin.post("/api/v3/config/clonetarget", {"debian-12": "nope"}, content_type="application/json")
    assert missing.status_code == 404 and missing.json()["ok"] is False


def test_config_pooltemplate_refuses_a_template_not_ready_in_the_cluster(admin_token, debian):
    from tests import factories

    factories.template(debian.cluster.vcenter, name="debian-14")  # no copy in any cluster
    response = auth_client(admin_token).post(
        "/api/v3/config/pooltemplate", {"debian-12": "debian-14"}, content_type="application/json"
    )
    assert response.status_code == 400 and "has no ready copy in any cluster" in response.json()["error"]
    assert Pool.objects.get(name="debian-12").template_id == debian.template_id
