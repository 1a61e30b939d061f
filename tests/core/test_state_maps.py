"""Every stateful model moves through transition() along its own map, with its badge colours
beside it: jobs (whose rows are their own history), VM tasks, key deliveries, vCenters."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.apps import apps as django_apps
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.core.models import StateChange
from apps.core.states import IllegalTransition
from apps.firstboot.jobs import keys_not_added
from apps.firstboot.models import KeyDelivery
from apps.inventory.models import VCenter
from apps.inventory.status import mark_reachable, mark_unreachable
from apps.jobs import runner
from apps.jobs.models import Job
from apps.leases import vmtasks
from apps.leases.models import Lease, OnDemandRequest, VMTask
from apps.pools import manager, reconfigure
from apps.pools.models import Pool, VMState
from tests import factories

pytestmark = pytest.mark.django_db

STATEFUL = [
    (Job, "status", Job.TRANSITIONS, Job.BADGE),
    (VMTask, "status", VMTask.TRANSITIONS, VMTask.BADGE),
    (KeyDelivery, "state", KeyDelivery.TRANSITIONS, KeyDelivery.BADGE),
    (VCenter, "status", VCenter.TRANSITIONS, VCenter.BADGE),
    (OnDemandRequest, "status", OnDemandRequest.TRANSITIONS, OnDemandRequest.BADGE),
    (Pool, "health", Pool.HEALTH_TRANSITIONS, Pool.HEALTH_BADGE),
]


def history(obj) -> list[tuple[str, str, str]]:
    rows = StateChange.objects.filter(model=obj._meta.label_lower, object_id=obj.pk).order_by("id")
    return [(r.old, r.new, r.reason) for r in rows]


@pytest.mark.parametrize(("model", "field", "transitions", "badge"), STATEFUL, ids=lambda v: getattr(v, "__name__", ""))
def test_each_stateful_model_has_a_map_and_a_badge_for_every_state(model, field, transitions, badge):
    states = {value for value, _ in model._meta.get_field(field).choices}
    assert set(transitions) == states
    assert set(badge) == states
    assert all(targets <= states for targets in transitions.values())


def test_every_status_field_of_every_model_moves_through_a_move_method():
    # A new status field without its map and move method would slip past transition().
    for model in django_apps.get_models():
        for field in model._meta.concrete_fields:
            if field.choices and field.name in ("status", "state", "health"):
                move = "move_to" if field.name != "health" else "move_health"
                assert hasattr(model, move), f"{model._meta.label}.{field.name} has no {move}()"


def test_a_job_moves_only_along_its_map_and_writes_no_history_row():
    job = Job.objects.create(kind="test.noop", status=Job.Status.SUCCEEDED)
    with pytest.raises(IllegalTransition, match="succeeded → running is not allowed"):
        job.move_to(Job.Status.RUNNING)
    queued = Job.objects.create(kind="test.noop")
    with CaptureQueriesContext(connection) as queries:
        queued.move_to(Job.Status.RUNNING, started_at=timezone.now())
    assert len(queries) == 1  # the runner's claim stays one UPDATE
    assert queued.status == Job.Status.RUNNING
    assert not StateChange.objects.exists()


@runner.handler("test.noop", queue="default")
def noop(job: runner.JobContext) -> None:
    pass


def test_a_job_delivered_twice_runs_once():
    job = Job.objects.create(kind="test.noop")
    assert runner.run(job.pk) == "succeeded"
    assert runner.run(job.pk) == "already taken"
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.started_at and job.finished_at


def test_a_reaped_job_whose_heartbeat_came_meanwhile_is_left_running():
    beat = timezone.now() - timedelta(hours=1)
    job = Job.objects.create(kind="test.noop", status=Job.Status.RUNNING, started_at=beat, heartbeat_at=beat)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now())  # it beat after the reaper read it
    with pytest.raises(Exception, match="no longer running"):
        job.move_to(Job.Status.FAILED, where={"heartbeat_at": beat}, error="lost")
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING


def a_lease(user) -> Lease:
    pool = factories.pool()
    vm = factories.vm(pool, state=VMState.LEASED, moid="vm-42")
    now = timezone.now()
    return Lease.objects.create(vm=vm, pool=pool, user=user, started_at=now, expires_at=now + timedelta(hours=1))


def test_a_vm_task_gets_one_outcome_and_its_history_says_which(engineer):
    task = VMTask.objects.create(lease=a_lease(engineer), kind=VMTask.Kind.SNAPSHOT, snapshot="s1")
    assert vmtasks.finish(task) is True
    late = VMTask.objects.get(pk=task.pk)
    assert vmtasks.finish(VMTask.objects.get(pk=task.pk), "too late") is False
    late.refresh_from_db()
    assert (late.status, late.error, late.badge) == (VMTask.Status.DONE, "", "ok")
    assert history(task) == [("queued", "done", "")]


def test_a_lost_key_delivery_is_failed_once_and_recorded(engineer):
    lease = a_lease(engineer)
    delivery = KeyDelivery.objects.create(lease=lease)
    job = Job(kind="firstboot.add_keys", args={"lease_id": lease.pk})
    keys_not_added(job, "the worker stopped")
    keys_not_added(job, "again")  # a second hook finds nothing pending
    delivery.refresh_from_db()
    assert delivery.state == KeyDelivery.State.FAILED and delivery.detail.endswith("the worker stopped")
    assert history(delivery) == [("pending", "failed", "")]
    # Keys a late worker did put in are said so; nothing else undoes the verdict.
    with pytest.raises(IllegalTransition):
        delivery.move_to(KeyDelivery.State.SKIPPED)
    delivery.move_to(KeyDelivery.State.DONE, detail="1 key(s) in place (1 new)")
    assert delivery.badge == "ok"


def test_vcenter_status_is_the_last_look_recorded_once_per_change_even_from_a_stale_copy():
    vc = factories.vcenter()
    watcher_copy = VCenter.objects.get(pk=vc.pk)  # a watcher holds its row for hours
    mark_unreachable(vc, "connection refused")
    mark_unreachable(watcher_copy, "timed out")  # its copy still says unknown
    vc.refresh_from_db()
    assert (vc.status, vc.status_reason, vc.badge) == ("unreachable", "timed out", "bad")
    mark_reachable(watcher_copy)
    mark_reachable(watcher_copy)
    vc.refresh_from_db()
    assert (vc.status, vc.status_reason, vc.badge) == ("reachable", "", "ok")
    assert history(vc) == [("unknown", "unreachable", "connection refused"), ("unreachable", "reachable", "")]


def test_pool_health_moves_are_recorded_and_staying_degraded_is_not_a_move():
    pool = factories.pool(max_tries=3)
    for n in (1, 2):
        vm = factories.vm(pool, state=VMState.CLONING)
        manager.record_clone_failure(vm, f"disk full {n}", permanent=False)
    pool.refresh_from_db()
    assert (pool.health, pool.consecutive_failures, pool.health_badge) == ("degraded", 2, "warn")
    assert pool.health_reason.startswith("Clone failed (disk full 2)")
    manager.record_clone_failure(factories.vm(pool, state=VMState.CLONING), "disk full 3", permanent=False)
    manager.record_clone_failure(factories.vm(pool, state=VMState.CLONING), "disk full 4", permanent=False)
    pool.refresh_from_db()
    assert (pool.health, pool.consecutive_failures, pool.health_badge) == ("failing", 4, "bad")
    assert "last: disk full 3" in pool.health_reason  # the first reason stands
    manager.record_clone_success(factories.vm(pool, state=VMState.READY))  # failing ends only by a reset
    pool.refresh_from_db()
    assert pool.health == "failing"
    reconfigure.reset(pool_id=pool.pk)
    pool.refresh_from_db()
    assert (pool.health, pool.health_reason, pool.consecutive_failures) == ("ok", "", 0)
    assert [(old, new) for old, new, _ in history(pool)] == [("ok", "degraded"), ("degraded", "failing"),
                                                              ("failing", "ok")]
    with pytest.raises(IllegalTransition):
        Pool.objects.get(pk=pool.pk).move_health("unknown")


def test_an_outage_degrades_a_pool_once_and_its_end_restores_it():
    pool = factories.pool()
    manager.record_unreachable(pool.pk, "connection refused")
    manager.record_unreachable(pool.pk, "timed out")
    pool.refresh_from_db()
    assert pool.health == "degraded" and "timed out" in pool.health_reason and pool.unreachable_since
    assert manager.record_reachable(vcenter_id=pool.template.vcenter_id) == 1
    pool.refresh_from_db()
    assert (pool.health, pool.unreachable_since) == ("ok", None)
    assert [(old, new) for old, new, _ in history(pool)] == [("ok", "degraded"), ("degraded", "ok")]
