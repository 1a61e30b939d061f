"""Contract tests for the native API (/api/v1/) and its OpenAPI schema."""

from __future__ import annotations

from datetime import timedelta

import pytest

from apps.leases.models import Lease
from tests.api.conftest import auth_client

pytestmark = pytest.mark.django_db


def _checkout(api, *pools, **extra):
    return api.post("/api/v1/leases", {"pools": list(pools), **extra}, content_type="application/json")


def test_openapi_schema_is_openapi_3_and_needs_auth(client, api):
    assert client.get("/api/v1/openapi.json").status_code == 401
    schema = api.get("/api/v1/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert "/api/v1/leases" in schema["paths"]


def test_docs_page_lists_operations(client, engineer):
    client.force_login(engineer)
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert "/api/v1/leases" in response.content.decode()


def test_anonymous_is_401_json(client, debian):
    response = client.get("/api/v1/pools")
    assert response.status_code == 401 and response.json()["ok"] is False


def test_pools_list_and_detail(api, debian):
    pools = api.get("/api/v1/pools").json()
    assert pools[0]["name"] == "debian-12" and pools[0]["ready"] == 3
    assert api.get("/api/v1/pools/debian-12").json()["size"] == 2
    missing = api.get("/api/v1/pools/nope")
    assert missing.status_code == 404 and missing.json()["error"]


def test_templates_list(api, debian):
    assert api.get("/api/v1/templates").json()[0]["status"] == "ready"


def test_checkout_extend_tag_return(api, debian):
    response = _checkout(api, "debian-12", tags={"ci": "job-1"}, lifetime_hours=1)
    assert response.status_code == 201
    [lease] = response.json()
    assert lease["pool"] == "debian-12" and lease["tags"] == {"ci": "job-1"}
    lease_id = lease["id"]
    extended = api.post(f"/api/v1/leases/{lease_id}/extend", {"hours": 2}, content_type="application/json")
    assert extended.status_code == 200
    row = Lease.objects.get(pk=lease_id)
    assert row.expires_at - row.started_at == timedelta(hours=3)
    tagged = api.put(f"/api/v1/leases/{lease_id}/tags", {"tags": {"b": "2"}}, content_type="application/json")
    assert tagged.json()["tags"] == {"ci": "job-1", "b": "2"}
    assert [x["id"] for x in api.get("/api/v1/leases").json()] == [lease_id]
    assert api.get(f"/api/v1/vms/{lease['vm']}").json()["lease_id"] == lease_id
    returned = api.delete(f"/api/v1/leases/{lease_id}")
    assert returned.status_code == 200 and returned.json()["ended_at"]
    assert api.delete(f"/api/v1/leases/{lease_id}").status_code == 409


def test_checkout_is_all_or_nothing(api, debian, centos):
    response = _checkout(api, "centos-9", "centos-9")
    assert response.status_code == 503 and response.json()["ok"] is False
    assert not Lease.objects.exists()
    assert _checkout(api, "nope").status_code == 404


@pytest.mark.parametrize("body", [{"pools": []}, {"pools": "x"}, {}, {"pools": ["debian-12"], "lifetime_hours": -1},
                                  {"pools": ["debian-12"], "tags": {"bad key": "x"}}])
def test_checkout_with_invalid_body_is_400(api, debian, body):
    response = api.post("/api/v1/leases", body, content_type="application/json")
    assert response.status_code == 400 and response.json()["ok"] is False


def test_bad_json_is_400(api, debian):
    response = api.post("/api/v1/leases", "{oops", content_type="application/json")
    assert response.status_code == 400 and response.json()["ok"] is False


def test_other_users_leases_are_404_and_admin_may_act(api, other_token, admin_token, debian):
    lease_id = _checkout(api, "debian-12").json()[0]["id"]
    other = auth_client(other_token)
    assert other.get(f"/api/v1/leases/{lease_id}").status_code == 404
    assert other.delete(f"/api/v1/leases/{lease_id}").status_code == 404
    assert other.get("/api/v1/leases").json() == []
    admin = auth_client(admin_token)
    assert [x["id"] for x in admin.get("/api/v1/leases?all=true").json()] == [lease_id]
    assert admin.delete(f"/api/v1/leases/{lease_id}").status_code == 200


def test_native_api_is_rate_limited(api, settings, debian):
    settings.VMPORTAL_API_RATE_LIMIT_PER_TOKEN = 1
    assert api.get("/api/v1/pools").status_code == 200
    response = api.get("/api/v1/pools")
    assert response.status_code == 429 and int(response["Retry-After"]) >= 1


def test_ondemand_create_get_list_cancel(api, other_token, debian):
    response = api.post("/api/v1/ondemand", {"pools": ["debian-12", "debian-12"], "request_id": "build-9"},
                        content_type="application/json")
    assert response.status_code == 201
    body = response.json()
    assert body["request_id"] == "build-9" and body["status"] == "queued" and body["wanted"] == {"debian-12": 2}
    assert body["percent"] == 0 and body["vms"] == [] and body["lease_ids"] == []
    assert api.get("/api/v1/ondemand/build-9").json()["step"] == "queued"
    assert [r["request_id"] for r in api.get("/api/v1/ondemand").json()] == ["build-9"]
    assert auth_client(other_token).get("/api/v1/ondemand/build-9").status_code == 404
    assert auth_client(other_token).get("/api/v1/ondemand").json() == []
    cancelled = api.delete("/api/v1/ondemand/build-9")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert api.delete("/api/v1/ondemand/build-9").status_code == 409


@pytest.mark.parametrize("body, status", [({"pools": []}, 400), ({"pools": ["nope"]}, 404),
                                          ({"pools": ["debian-12"] * 11}, 403),
                                          ({"pools": ["debian-12"], "request_id": "a b"}, 400)])
def test_ondemand_bad_input(api, debian, body, status):
    response = api.post("/api/v1/ondemand", body, content_type="application/json")
    assert response.status_code == status and response.json()["ok"] is False


def test_disk_and_snapshot_tasks(api, other_token, debian):
    from apps.pools.models import VM

    lease = _checkout(api, "debian-12").json()[0]
    VM.objects.filter(name=lease["vm"]).update(moid="vm-7")
    disk = api.post(f"/api/v1/leases/{lease['id']}/disks", {"size_gb": 16}, content_type="application/json")
    assert disk.status_code == 202 and disk.json()["kind"] == "disk" and disk.json()["status"] == "queued"
    snap = api.post(f"/api/v1/leases/{lease['id']}/snapshots")
    assert snap.status_code == 202
    snap_id = snap.json()["snapshot"]
    assert api.post(f"/api/v1/leases/{lease['id']}/snapshots/{snap_id}/revert").status_code == 202
    assert api.post(f"/api/v1/leases/{lease['id']}/snapshots/other/revert").status_code == 404
    assert [t["kind"] for t in api.get(f"/api/v1/leases/{lease['id']}/tasks").json()] == ["disk", "snapshot",
                                                                                            "revert"]
    assert auth_client(other_token).post(f"/api/v1/leases/{lease['id']}/snapshots").status_code == 404
    assert api.post(f"/api/v1/leases/{lease['id']}/disks", {"size_gb": 0},
                    content_type="application/json").status_code == 400
