"""Contract tests for vmpooler's on-demand, disk, snapshot, poolreset and config-undo routes."""

from __future__ import annotations

import pytest

from apps.api.models import PoolOverride
from apps.jobs.models import Job
from apps.leases import services as leases
from apps.leases.models import Lease, OnDemandRequest, VMTask
from apps.pools.models import VM, Pool, VMState
from tests import factories
from tests.api.conftest import auth_client

pytestmark = pytest.mark.django_db
JSON = "application/json"


@pytest.fixture
def leased(engineer, debian):
    [lease] = leases.checkout(user=engineer, pools=[debian])
    VM.objects.filter(pk=lease.vm_id).update(moid="vm-42")
    return lease


# --- disks and snapshots ---------------------------------------------------------------------


def test_disk_is_queued_for_the_owner(api, leased):
    response = api.post(f"/api/v3/vm/{leased.vm.name}/disk/8")
    assert response.status_code == 202
    assert response.json() == {"ok": True, leased.vm.name: {"disk": "+8gb"}}
    task = VMTask.objects.get()
    assert (task.kind, task.disk_gb, task.status) == ("disk", 8, "queued")
    assert Job.objects.filter(kind="leases.vm_task", object_id=str(task.pk)).exists()


@pytest.mark.parametrize("size", ["0", "4096", "big", "-1"])
def test_disk_size_is_validated(api, leased, size):
    response = api.post(f"/api/v3/vm/{leased.vm.name}/disk/{size}")
    assert response.status_code == 400 and response.json()["ok"] is False
    assert not VMTask.objects.exists()


@pytest.mark.parametrize("path", ["disk/8", "snapshot", "snapshot/abc"])
def test_only_the_owner_changes_a_vm(client, other_token, leased, path):
    url = f"/api/v3/vm/{leased.vm.name}/{path}"
    assert client.post(url).status_code == 401
    assert auth_client(other_token).post(url).status_code == 403
    assert auth_client(other_token).post(f"/api/v3/vm/nope/{path}").status_code == 404
    assert not VMTask.objects.exists()


def test_admin_may_snapshot_anyones_vm(admin_token, leased):
    assert auth_client(admin_token).post(f"/api/v3/vm/{leased.vm.name}/snapshot").status_code == 202


def test_snapshot_then_revert_and_get_vm_shows_them(api, leased):
    response = api.post(f"/api/v3/vm/{leased.vm.name}/snapshot")
    assert response.status_code == 202
    snap = response.json()[leased.vm.name]["snapshot"]
    assert len(snap) == 32
    assert api.post(f"/api/v3/vm/{leased.vm.name}/snapshot/not-a-snapshot").status_code == 404
    response = api.post(f"/api/v3/vm/{leased.vm.name}/snapshot/{snap}")
    assert response.status_code == 202 and response.json() == {"ok": True}
    api.post(f"/api/v3/vm/{leased.vm.name}/disk/20")
    VMTask.objects.update(status=VMTask.Status.DONE)
    data = api.get(f"/api/v3/vm/{leased.vm.name}").json()[leased.vm.name]
    assert data["snapshots"] == [snap] and data["disk"] == ["+20gb"]


# --- on-demand ---------------------------------------------------------------------------------


def test_ondemand_create_poll_and_delete(api, debian):
    response = api.post("/api/v3/ondemandvm", {"debian-12": "2"}, content_type=JSON)
    assert response.status_code == 201
    request_id = response.json()["request_id"]
    assert response.json()["ok"] is True and OnDemandRequest.objects.get(request_id=request_id).wanted == {
        "debian-12": 2}
    poll = api.get(f"/api/v3/ondemandvm/{request_id}")
    assert poll.status_code == 202
    assert poll.json() == {"ok": True, "request_id": request_id, "ready": False,
                           "debian-12": {"ready": "0", "pending": "2"}}
    assert api.delete(f"/api/v3/ondemandvm/{request_id}").json() == {"ok": True}
    assert OnDemandRequest.objects.get(request_id=request_id).status == "cancelled"
    gone = api.get(f"/api/v3/ondemandvm/{request_id}")
    assert gone.status_code == 200 and gone.json()["ready"] is False and "cancelled" in gone.json()["message"]
    assert api.delete(f"/api/v3/ondemandvm/{request_id}").status_code == 200  # idempotent


def test_ondemand_by_path_and_with_own_request_id(api, debian, centos):
    response = api.post("/api/v3/ondemandvm/debian-12+centos-9+debian-12")
    assert response.status_code == 201
    req = OnDemandRequest.objects.get(request_id=response.json()["request_id"])
    assert req.wanted == {"centos-9": 1, "debian-12": 2}
    mine = api.post("/api/v3/ondemandvm", {"centos-9": "1", "request_id": "ci-build-77"}, content_type=JSON)
    assert mine.status_code == 201 and mine.json()["request_id"] == "ci-build-77"
    again = api.post("/api/v3/ondemandvm", {"centos-9": "1", "request_id": "ci-build-77"}, content_type=JSON)
    assert again.status_code == 409 and again.json()["ok"] is False


@pytest.mark.parametrize("body, status", [({"debian-12": "11"}, 403), ({"nope": "1"}, 404), ({"debian-12": "x"}, 400),
                                          ({"debian-12": "0"}, 400), ([], 400)])
def test_ondemand_bad_requests(api, debian, body, status):
    response = api.post("/api/v3/ondemandvm", body, content_type=JSON)
    assert response.status_code == status and response.json()["error"]
    assert not OnDemandRequest.objects.exists()


def test_ondemand_needs_a_token_and_is_private_when_public_reads_are_off(client, api, other_token, debian,
                                                                          settings):
    settings.VMPORTAL_API_PUBLIC_READS = False
    assert client.post("/api/v3/ondemandvm", {"debian-12": "1"}, content_type=JSON).status_code == 401
    request_id = api.post("/api/v3/ondemandvm", {"debian-12": "1"}, content_type=JSON).json()["request_id"]
    assert client.get(f"/api/v3/ondemandvm/{request_id}").status_code == 401
    other = auth_client(other_token)
    assert other.get(f"/api/v3/ondemandvm/{request_id}").status_code == 404
    assert other.delete(f"/api/v3/ondemandvm/{request_id}").status_code == 404
    assert OnDemandRequest.objects.get().status == "queued"


def test_ondemand_ready_answer_lists_hostnames(api, engineer, debian):
    request_id = api.post("/api/v3/ondemandvm", {"debian-12": "2"}, content_type=JSON).json()["request_id"]
    req = OnDemandRequest.objects.get()
    vms = [factories.vm(debian, state=VMState.LEASED, on_demand=True) for _ in range(2)]
    req.vms.add(*vms)
    for vm in vms:
        Lease.objects.create(vm=vm, pool=debian, user=engineer, expires_at=vm.created_at)
    OnDemandRequest.objects.filter(pk=req.pk).update(status="ready")
    response = api.get(f"/api/v3/ondemandvm/{request_id}")
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True and sorted(body["debian-12"]["hostname"]) == sorted(vm.name for vm in vms)


# --- poolreset and config undo -----------------------------------------------------------------


def test_poolreset_needs_an_admin_and_rebuilds_ready_vms(api, admin_token, debian):
    Pool.objects.filter(pk=debian.pk).update(health="failing", health_reason="disk full", consecutive_failures=3)
    assert api.post("/api/v3/poolreset", {"debian-12": "1"}, content_type=JSON).status_code == 403
    admin = auth_client(admin_token)
    assert admin.post("/api/v3/poolreset", {"nope": "1"}, content_type=JSON).status_code == 404
    response = admin.post("/api/v3/poolreset", {"debian-12": "1"}, content_type=JSON)
    assert response.status_code == 201 and response.json() == {"ok": True}
    debian.refresh_from_db()
    assert debian.health == "ok" and debian.consecutive_failures == 0
    assert not debian.vms.filter(state=VMState.READY).exists()
    assert debian.vms.filter(state=VMState.DESTROYING).count() == 3


def test_delete_config_poolsize_undoes_the_api_override(api, admin_token, debian):
    admin = auth_client(admin_token)
    original = debian.size
    assert admin.post("/api/v3/config/poolsize", {"debian-12": "7"}, content_type=JSON).status_code == 201
    assert admin.post("/api/v3/config/poolsize", {"debian-12": "9"}, content_type=JSON).status_code == 201
    assert api.delete("/api/v3/config/poolsize/debian-12").status_code == 403
    response = admin.delete("/api/v3/config/poolsize/debian-12")
    assert response.status_code == 200
    assert response.json() == {"ok": True, "pool_size_before_overrides": original, "pool_size_before_reset": 9}
    assert Pool.objects.get(pk=debian.pk).size == original and not PoolOverride.objects.exists()
    # Nothing to undo: the same shape, both values the current size.
    assert admin.delete("/api/v3/config/poolsize/debian-12").json()["pool_size_before_reset"] == original
    assert admin.delete("/api/v3/config/poolsize/nope").status_code == 404
