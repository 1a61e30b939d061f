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
    assert http.post(f"{base}/vm/deb", timeout=10).status_code == 401  # the revoked token

    settle(pool)
    left = {v.name for v in vms_in_folder(vc)}
    assert len(left) == 2 and not left & {*hosts, on_demand_host}


def test_vmfloatys_requests_replayed_over_http(live_server, vcsim_factory, redis_conn, django_user_model, settings):
    """vmfloaty (floaty) itself cannot be installed here (a Ruby gem; no gem registry), so its
    requests are replayed as it sends them, with or without a token, checking the fields it
    reads: token get, list, status, get, query, modify, get --ondemand (polled without a
    token), token status, list --active, summary, delete --all, token delete."""
    settings.VMPORTAL_API_DOMAIN = "vm.example.com"
    vc, folder = site(vcsim_factory(*GUEST))
    pool = make_pool(vc, folder, name="deb", size=2, aliases="debian")
    pool.domain = "lab.example.net"
    pool.save(update_fields=["domain"])
    settle(pool)
    django_user_model.objects.create_user("ci-bot", password="s3cret-pw")
    base = f"{live_server.url}/api/v3"
    anonymous = requests.Session()

    # floaty token get: POST token with Basic auth.
    token = requests.post(f"{base}/token", auth=("ci-bot", "s3cret-pw"), timeout=10).json()["token"]
    with_token = requests.Session()
    with_token.headers["X-AUTH-TOKEN"] = token

    # floaty list / status / summary: no token; status reads pools' ready, pending, max and status.message.
    assert anonymous.get(f"{base}/vm", timeout=10).json() == ["deb"]
    status = anonymous.get(f"{base}/status", timeout=10).json()
    assert {"ready", "pending", "max"} <= set(status["pools"]["deb"]) and status["pools"]["deb"]["alias"] == ["debian"]
    assert isinstance(status["status"]["message"], str) and "ok" in status["status"]
    assert anonymous.get(f"{base}/summary", timeout=10).status_code == 200

    # floaty get debian=2 (by alias): hostnames already FQDNs, no "domain" for floaty to append.
    got = with_token.post(f"{base}/vm/debian+debian", timeout=10).json()
    assert got.pop("ok") is True and "domain" not in got
    hosts = got["debian"]["hostname"]
    assert len(hosts) == 2 and all(h.endswith(".lab.example.net") for h in hosts)
    short = [h.split(".")[0] for h in hosts]

    # floaty modify <host> --lifetime 2 --tags: one PUT with both, on a fresh 2-hour lease.
    modified = with_token.put(f"{base}/vm/{hosts[0]}", json={"lifetime": "2", "tags": {"build": "7"}}, timeout=10)
    assert modified.json() == {"ok": True}, modified.text

    # floaty get deb --ondemand: POST with the token, then polled without one.
    request_id = with_token.post(f"{base}/ondemandvm/deb", timeout=10).json()["request_id"]
    poll = anonymous.get(f"{base}/ondemandvm/{request_id}", timeout=10)
    deadline = time.monotonic() + 90
    while poll.status_code == 202 and time.monotonic() < deadline:
        worker().wait(timeout=120)
        poll = anonymous.get(f"{base}/ondemandvm/{request_id}", timeout=10)
    assert poll.status_code == 200 and poll.json()["ready"] is True, poll.text
    [on_demand] = poll.json()["deb"]["hostname"]
    assert on_demand.endswith(".lab.example.net")

    # floaty token status, then list --active: token/<t> without a token, "ok" and vms.running,
    # then vm/<host> for each, reading template, running, lifetime, tags and domain.
    status = anonymous.get(f"{base}/token/{token}", timeout=10).json()
    assert status["ok"] is True
    running = status[token]["vms"]["running"]
    assert sorted(running) == sorted([*short, on_demand.split(".")[0]])
    for host in running:
        data = anonymous.get(f"{base}/vm/{host}", timeout=10).json()[host]
        assert data["template"] == "deb" and data["domain"] == "lab.example.net"
        assert isinstance(data["running"], float) and isinstance(data["lifetime"], int)
    assert with_token.get(f"{base}/vm/{short[0]}", timeout=10).json()[short[0]]["tags"] == {"build": "7"}

    # floaty delete --all: token status, then DELETE vm/<host> with the token for each.
    assert anonymous.delete(f"{base}/vm/{running[0]}", timeout=10).status_code == 401
    for host in running:
        assert with_token.delete(f"{base}/vm/{host}", timeout=10).json() == {"ok": True}
    assert anonymous.get(f"{base}/token/{token}", timeout=10).json()[token]["vms"]["running"] == []

    # floaty token delete.
    assert requests.delete(f"{base}/token/{token}", auth=("ci-bot", "s3cret-pw"), timeout=10).json() == {"ok": True}
    assert with_token.post(f"{base}/vm/deb", timeout=10).status_code == 401
    settle(pool)
    left = {v.name for v in vms_in_folder(vc)}
    assert len(left) == 2 and not left & {*short, on_demand.split(".")[0]}
