"""A vmpooler client's whole session over real HTTP, against real workers and vcsim.

Written only from vmpooler's API documentation: get a token, check out, extend and tag,
snapshot, revert and add a disk, ask for a VM on demand and poll it, return everything.
"""

from __future__ import annotations

import time

import pytest
import requests

from apps.leases.models import VMTask
from apps.pools.models import VM
from apps.vsphere import operations as ops
from apps.vsphere.session import Endpoint, connect
from tests.live import GUEST, make_pool, settle, site, vms_in_folder, worker

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]


def test_a_vmpooler_client_session(live_server, vcsim_factory, redis_conn, django_user_model):
    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, name="deb", size=2)
    settle(pool)
    django_user_model.objects.create_user("ci-bot", password="s3cret-pw")
    base = f"{live_server.url}/api/v3"

    token = requests.post(f"{base}/token", auth=("ci-bot", "s3cret-pw"), timeout=10).json()["token"]
    http = requests.Session()
    http.headers["X-AUTH-TOKEN"] = token

    got = http.post(f"{base}/vm/deb+deb", timeout=10)
    assert got.status_code == 200, got.text
    hosts = got.json()["deb"]["hostname"]
    assert len(hosts) == 2
    host = hosts[0]
    assert http.put(f"{base}/vm/{host}", json={"lifetime": "4"}, timeout=10).json() == {"ok": True}
    assert http.put(f"{base}/vm/{host}", json={"tags": {"build": "1234"}}, timeout=10).json() == {"ok": True}
    info = http.get(f"{base}/vm/{host}", timeout=10).json()[host]
    assert info["lifetime"] == 4 and info["tags"] == {"build": "1234"} and info["state"] == "running"
    assert info["ip"].startswith("10.30.")

    snap = http.post(f"{base}/vm/{host}/snapshot", timeout=10)
    assert snap.status_code == 202
    snap_id = snap.json()[host]["snapshot"]
    assert http.post(f"{base}/vm/{host}/disk/8", timeout=10).status_code == 202
    assert worker().wait(timeout=120) == 0
    assert http.post(f"{base}/vm/{host}/snapshot/{snap_id}", timeout=10).status_code == 202
    assert worker().wait(timeout=120) == 0
    assert list(VMTask.objects.values_list("status", flat=True)) == ["done"] * 3, \
        list(VMTask.objects.values_list("error", flat=True))
    info = http.get(f"{base}/vm/{host}", timeout=10).json()[host]
    assert info["snapshots"] == [snap_id] and info["disk"] == ["+8gb"]
    with connect(Endpoint.from_vcenter(vc)) as conn:
        moid = VM.objects.get(name=host).moid
        assert [s.name for s in ops.list_snapshots(conn, moid)] == [snap_id]

    made = http.post(f"{base}/ondemandvm", json={"deb": "1"}, timeout=10)
    assert made.status_code == 201
    request_id = made.json()["request_id"]
    poll = http.get(f"{base}/ondemandvm/{request_id}", timeout=10)
    assert poll.status_code == 202 and poll.json()["deb"] == {"ready": "0", "pending": "1"}
    deadline = time.monotonic() + 60
    while poll.status_code == 202 and time.monotonic() < deadline:
        worker().wait(timeout=120)
        poll = http.get(f"{base}/ondemandvm/{request_id}", timeout=10)
    assert poll.status_code == 200 and poll.json()["ready"] is True, poll.text
    [on_demand_host] = poll.json()["deb"]["hostname"]

    running = http.get(f"{base}/token/{token}", timeout=10).json()[token]["vms"]["running"]
    assert sorted(running) == sorted([*hosts, on_demand_host])
    for name in running:
        assert http.delete(f"{base}/vm/{name}", timeout=10).json() == {"ok": True}
    assert requests.delete(f"{base}/token/{token}", auth=("ci-bot", "s3cret-pw"), timeout=10).json() == {"ok": True}
    assert http.get(f"{base}/vm", timeout=10).status_code == 401

    settle(pool)
    left = {v.name for v in vms_in_folder(vc)}
    assert len(left) == 2 and not left & {*hosts, on_demand_host}
