"""Host balance at checkout (Pool.balance_hosts): the rule shared with clone placement, and
against vcsim with real rqworker processes: a VM handed out on an overloaded host moves
after the checkout answered, within the per-vCenter migration limit, and nothing moves when
the option is off. Host load is set per host through the simulator (POST /_vcsim/host-stats)
and read by an inventory sync, as the watcher would."""

from __future__ import annotations

import time

import pytest
import requests
from django.test import override_settings
from django.urls import reverse

from apps.inventory.models import Host
from apps.inventory.services import sync_inventory
from apps.jobs.models import Job
from apps.leases.models import Lease
from apps.pools.balance import MIGRATE_JOB
from apps.pools.models import VM, Pool, VMState
from apps.vsphere import operations as ops
from apps.vsphere.placement import NoUsableHost, Thresholds, balance_target, choose_hosts
from apps.vsphere.session import Endpoint, connect
from tests.inventory.test_placement import DS0, DS1, host
from tests.live import GUEST, make_pool, settle, site, worker

# Simulator hosts: 4588 MHz, 4095 MB (tests.inventory.test_placement.host); load = the busier.
LIMITS = Thresholds(overload=0.90, gap=0.25)


def at(name: str, pct: int, **kw):
    return host(name, cpu=int(4588 * pct / 100), mem=100, **kw)


# ----------------------------------------------------------------------- the rule


def test_vm_on_an_overloaded_host_moves_to_the_least_loaded_host_well_under_the_limit():
    hot = at("hot", 95)
    decision = balance_target(hot, [hot, at("busy", 80), at("cool", 40), at("cold", 10)], limits=LIMITS)
    assert decision.target is not None and decision.target.name == "cold"
    assert decision.reason == "hot at 95%, over the 90% limit; cold at 10%"


def test_vm_stays_when_its_host_is_within_the_limit_or_its_load_is_unknown():
    ok, unknown = at("ok", 85), at("unknown", 0, cpu_usage_mhz=None)
    cold = at("cold", 5)
    assert balance_target(ok, [ok, cold], limits=LIMITS).target is None
    assert balance_target(ok, [ok, cold], limits=LIMITS).reason == "ok at 85%, within the 90% limit"
    assert balance_target(unknown, [unknown, cold], limits=LIMITS).reason == "the load of unknown is unknown"
    assert balance_target(None, [cold], limits=LIMITS).reason == "its host is not in the inventory"


def test_vm_stays_when_no_host_is_compatible_and_well_under_the_limit():
    hot = at("hot", 95)
    others = [
        at("near", 70),  # under the limit, but not by the gap: a vMotion would not be worth it
        at("maint", 5, in_maintenance=True),
        at("nostats", 5, memory_usage_mb=None),  # missing stats are unknown, never idle
        at("issue", 5, config_issues=1),
        at("gone", 5, connection_state="disconnected"),
        at("elsewhere", 5, datastore_moids=frozenset({DS1})),
    ]
    decision = balance_target(hot, [hot, *others], datastore_moids=[DS0], limits=LIMITS)
    assert decision.target is None
    for reason in ("no host is at or under 65%", "near: CPU at 70%, over the 65% limit", "maint: in maintenance mode",
                   "nostats: no quick stats (load unknown)", "issue: 1 configuration issue", "gone: disconnected",
                   "elsewhere: the VM's datastore not mounted"):
        assert reason in decision.reason


@override_settings(VMPORTAL_HOST_OVERLOAD_PCT=60, VMPORTAL_HOST_BALANCE_GAP_PCT=10)
def test_clone_placement_and_checkout_balance_read_the_same_thresholds():
    hot, mid, cold = at("hot", 65), at("mid", 52), at("cold", 30)
    with pytest.raises(NoUsableHost, match="CPU at 65%, over the 60% limit"):
        choose_hosts([hot], 1)
    # Burst spread: hosts within the gap (10 points) of the least loaded only.
    assert {h.name for h in choose_hosts([mid, cold, at("cool", 38)], 4)} == {"cold", "cool"}
    assert balance_target(hot, [hot, mid, cold]).target == cold  # 52% is not under 60 - 10
    assert balance_target(hot, [hot, mid]).target is None


# ----------------------------------------------------------------------- against vcsim


def load(sim, name: str, pct: int) -> None:
    response = requests.post(f"https://{sim.address}/_vcsim/host-stats", params={"host": name, "cpu": pct, "mem": 5},
                             verify=False, timeout=5)  # noqa: S501 - the simulator's own certificate
    response.raise_for_status()


def calls(sim) -> dict:
    return requests.get(f"https://{sim.address}/_vcsim/calls", verify=False, timeout=5).json()  # noqa: S501


def host_in_vsphere(vm: VM) -> str | None:
    with connect(Endpoint.from_vcenter(vm.vcenter)) as conn:
        return ops.get_vm(conn, vm.moid).host_moid


def load_cluster(sim, vc, cluster_id: int, loads: dict[str, int]) -> None:
    """Every host of the cluster at 80% (loaded, but no target), except those given."""
    for h in Host.objects.filter(cluster_id=cluster_id):
        load(sim, h.name, loads.get(h.name, 80))
    assert sync_inventory(vc).ok


def wait_for(predicate, timeout: float = 60, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.vcsim
@pytest.mark.django_db(transaction=True)
def test_a_vm_on_a_loaded_host_moves_after_a_checkout_that_answered_at_once(
        client, admin_user, vcsim_factory, redis_conn):
    sim = vcsim_factory(*GUEST, "-method-delay", "RelocateVM_Task:2000")
    vc, folder = site(sim)
    pool = make_pool(vc, folder, size=1, balance_hosts=True)
    settle(pool)
    vm = VM.objects.select_related("host").get(pool=pool, state=VMState.READY)
    source = vm.host
    cold = Host.objects.filter(cluster=pool.cluster_id).exclude(pk=source.pk).order_by("name").first()
    load_cluster(sim, vc, pool.cluster_id, {source.name: 95, cold.name: 10})
    running = worker(burst=False)
    try:
        client.force_login(admin_user)
        started = time.monotonic()
        response = client.post(reverse("checkout", args=[pool.name]))
        answered = time.monotonic() - started
        assert response.status_code == 302
        lease = Lease.objects.get(vm=vm)
        page_url = reverse("lease-detail", args=[lease.pk])

        # The checkout answered before the 2 s vMotion could have finished, and the lease
        # page says where the VM is going while it runs.
        assert answered < 1.5, answered
        moving = wait_for(lambda: f"moving to {cold.name}" in (p := client.get(page_url).content.decode()) and p,
                          what="the lease page to say 'moving to'")
        assert '<dd id="vm-host" hx-get=' in moving and source.name in moving

        wait_for(lambda: VM.objects.get(pk=vm.pk).move_note, what="the move to end")
        vm.refresh_from_db()
        assert vm.host_id == cold.pk and host_in_vsphere(vm) == cold.moid
        assert vm.move_note == f"Moved from {source.name} to {cold.name}: {source.name} at 95%, over the 90% limit; " \
                              f"{cold.name} at 10%."
        page = client.get(page_url).content.decode()
        assert "moving to" not in page and f'<dd id="vm-host" >{cold.name} ' in page
        lease.refresh_from_db()
        assert lease.is_active
        assert calls(sim)["RelocateVM_Task"]["total"] == 1
    finally:
        running.terminate()
        running.wait(timeout=30)


@pytest.mark.vcsim
@pytest.mark.django_db(transaction=True)
def test_the_per_vcenter_migration_limit_holds_with_many_checkouts(admin_user, vcsim_factory, redis_conn, monkeypatch):
    monkeypatch.setenv("VMPORTAL_MIGRATIONS_PER_VCENTER", "2")
    sim = vcsim_factory(*GUEST, "-method-delay", "RelocateVM_Task:1500")
    vc, folder = site(sim)
    pool = make_pool(vc, folder, size=8, balance_hosts=True)
    settle(pool)
    vms = list(VM.objects.filter(pool=pool, state=VMState.READY).select_related("host"))
    assert len(vms) == 8
    hosts = Host.objects.filter(cluster=pool.cluster_id).order_by("name")
    cold = min(hosts, key=lambda h: sum(vm.host_id == h.pk for vm in vms))
    load_cluster(sim, vc, pool.cluster_id, {h.name: 10 if h == cold else 95 for h in hosts})
    movable = [vm for vm in vms if vm.host_id != cold.pk]
    requests.post(f"https://{sim.address}/_vcsim/calls/reset", verify=False, timeout=5)  # noqa: S501

    from apps.leases import services
    for _ in range(8):  # eight people, one checkout each
        services.checkout(user=admin_user, pools=[pool])
    workers = [worker() for _ in range(4)]
    assert [w.wait(timeout=120) for w in workers] == [0, 0, 0, 0]

    jobs = Job.objects.filter(kind=MIGRATE_JOB)
    assert jobs.count() == 8 and set(jobs.values_list("status", flat=True)) == {Job.Status.SUCCEEDED}
    relocations = calls(sim)["RelocateVM_Task"]
    assert relocations["max_in_flight"] <= 2  # the limit, across four worker processes
    moved = VM.objects.filter(pk__in=[vm.pk for vm in movable], host=cold)
    assert 1 <= moved.count() == relocations["total"] < len(movable)
    held_back = VM.objects.filter(pk__in=[vm.pk for vm in movable]).exclude(host=cold)
    assert all("(VMPORTAL_MIGRATIONS_PER_VCENTER=2)" in vm.move_note for vm in held_back)
    assert not VM.objects.filter(moving_to__isnull=False).exists()
    assert Lease.objects.filter(ended_at__isnull=True).count() == 8
    for vm in VM.objects.filter(pool=pool):
        assert host_in_vsphere(vm) == vm.host.moid


@pytest.mark.vcsim
@pytest.mark.django_db(transaction=True)
def test_off_by_default_nothing_moves_and_a_failed_move_leaves_the_vm_with_its_reason(
        client, admin_user, vcsim_factory, redis_conn):
    sim = vcsim_factory(*GUEST, "-fail-methods", "RelocateVM_Task", "-fail-rate", "1")
    vc, folder = site(sim)
    off = make_pool(vc, folder, size=1)
    on = Pool.objects.create(name="on", template=off.template, cluster=off.cluster, folder=folder, size=1,
                             balance_hosts=True)
    settle(off)
    settle(on)
    assert not off.balance_hosts
    vms = {p.name: VM.objects.select_related("host").get(pool=p, state=VMState.READY) for p in (off, on)}
    cold = Host.objects.filter(cluster=off.cluster_id).exclude(pk__in=[v.host_id for v in vms.values()]).first()
    load_cluster(sim, vc, off.cluster_id, {**{v.host.name: 95 for v in vms.values()}, cold.name: 10})
    client.force_login(admin_user)
    for p in (off, on):
        assert client.post(reverse("checkout", args=[p.name])).status_code == 302
    assert worker().wait(timeout=120) == 0

    assert not Job.objects.filter(kind=MIGRATE_JOB, object_id=str(vms["deb"].pk)).exists()
    stayed = VM.objects.get(pk=vms["deb"].pk)
    assert stayed.host_id == vms["deb"].host_id and stayed.move_note == ""
    page = client.get(reverse("adminui:pool-detail", args=[off.pk])).content.decode()
    assert '<dd id="pool-balance">off</dd>' in page
    page = client.get(reverse("adminui:pool-detail", args=[on.pk])).content.decode()
    assert '<dd id="pool-balance">on: a VM checked out on a host over 90% moves to one at or under 65%</dd>' in page

    failed = VM.objects.get(pk=vms["on"].pk)
    assert failed.host_id == vms["on"].host_id and failed.moving_to_id is None
    assert failed.move_note.startswith(f"Stays on {vms['on'].host.name}: the move to {cold.name} failed (")
    assert host_in_vsphere(failed) == vms["on"].host.moid
    lease = Lease.objects.get(vm=failed)
    assert lease.is_active
    page = client.get(reverse("lease-detail", args=[lease.pk])).content.decode()
    assert failed.move_note.split(" (")[0] in page and "moving to" not in page
    assert calls(sim)["RelocateVM_Task"]["total"] == 1


@pytest.mark.django_db
@override_settings(VMPORTAL_HOST_OVERLOAD_PCT=80, VMPORTAL_HOST_BALANCE_GAP_PCT=30)
def test_host_load_page_states_the_one_rule_and_its_thresholds(client, admin_user):
    client.force_login(admin_user)
    page = client.get(reverse("adminui:hosts")).content.decode()
    assert "a host over 80% of its CPU or memory gets no new clones" in page
    assert "within 30 points of the least loaded" in page and "to one at or under 50%" in page
