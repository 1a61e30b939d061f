"""The job runner against a real Redis and a real RQ worker (in-process, burst mode)."""

from __future__ import annotations

import time
from contextlib import suppress
from datetime import timedelta

import django_rq
import pytest
from django.db import OperationalError, connection, transaction
from django.utils import timezone
from rq import SimpleWorker

from apps.audit.models import AuditEvent
from apps.audit.services import record
from apps.core.errors import Conflict
from apps.firstboot.models import KeyDelivery
from apps.jobs import runner
from apps.jobs.models import Job
from apps.leases.models import Lease, VMTask
from apps.pools.models import VMState
from tests import factories
from tests.live import other_session

pytestmark = pytest.mark.django_db(transaction=True)


@runner.handler("test.echo", queue="default")
def echo(job: runner.JobContext, *, word: str) -> None:
    job.log(f"said {word}")
    record("test.echo", message=word)


@runner.handler("test.explode", queue="default")
def explode(job: runner.JobContext) -> None:
    raise RuntimeError("template gone")


def cut_off_lost(job: Job, reason: str) -> None:
    cut_off_calls.append(("lost", reason))


def cut_off_failed(job: Job, reason: str) -> None:
    cut_off_calls.append(("failed", reason))


cut_off_calls: list[tuple[str, str]] = []


@runner.handler("test.cut_off", queue="default", on_lost=cut_off_lost, on_failure=cut_off_failed)
def cut_off(job: runner.JobContext, *, then_raise: bool, mid_statement: bool = False) -> None:
    """Its database connection is dropped under it (PostgreSQL restarted, failed over)."""
    with suppress(OperationalError), connection.cursor() as cursor:  # the session ends: so it says
        cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    if mid_statement:
        Job.objects.filter(pk=job.job.pk).update(log="never written")  # fails: the connection is gone
    if then_raise:
        raise RuntimeError("vCenter said no")


def work_off() -> None:
    queue = django_rq.get_queue("default")
    SimpleWorker([queue], connection=queue.connection).work(burst=True)


def test_job_is_pushed_only_after_commit_and_records_its_outcome(redis_conn):
    with transaction.atomic():
        job = runner.enqueue("test.echo", word="hello")
        assert django_rq.get_queue("default").count == 0  # not before commit
    assert django_rq.get_queue("default").count == 1
    work_off()
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.rq_id == runner.rq_job_id(job)  # written by the worker's claim
    assert "said hello" in job.log
    assert job.started_at <= job.finished_at
    assert AuditEvent.objects.get(action="test.echo").actor_name == "system"


def test_rolled_back_transaction_enqueues_nothing(redis_conn):
    with pytest.raises(ValueError), transaction.atomic():
        runner.enqueue("test.echo", word="lost")
        raise ValueError
    assert django_rq.get_queue("default").count == 0
    assert not Job.objects.exists()


def test_failure_is_recorded_with_the_reason(redis_conn):
    job = runner.enqueue("test.explode")
    work_off()
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error == "RuntimeError: template gone"


@runner.handler("test.refused", queue="default")
def refused(job: runner.JobContext) -> None:
    raise Conflict("a VM named 'debian-12-DC0_C1' is in the way; rename or remove it")


def test_a_fault_named_for_people_is_logged_as_its_message_and_a_crash_with_its_traceback(redis_conn, caplog):
    refusal, crash = runner.enqueue("test.refused"), runner.enqueue("test.explode")
    with caplog.at_level("WARNING", logger="apps.jobs.runner"):
        work_off()
    [said] = [r for r in caplog.records if r.name == "apps.jobs.runner" and f"Job {refusal.pk} " in r.getMessage()]
    assert said.levelname == "WARNING" and said.exc_info is None
    assert "is in the way; rename or remove it" in said.getMessage()
    [crashed] = [r for r in caplog.records if r.name == "apps.jobs.runner" and f"Job {crash.pk} " in r.getMessage()]
    assert crashed.levelname == "ERROR" and crashed.exc_info is not None
    refusal.refresh_from_db()
    assert refusal.status == Job.Status.FAILED and "Traceback" in refusal.log  # the job's own log keeps it


def test_a_job_delivered_twice_runs_once(redis_conn):
    job = runner.enqueue("test.echo", word="once")
    work_off()
    assert runner.run(job.pk) == "already taken"
    assert AuditEvent.objects.filter(action="test.echo").count() == 1


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="No job handler"):
        runner.enqueue("no.such.kind")


def test_jobs_survive_a_dead_redis_and_are_pushed_again(redis_conn, settings):
    alive = settings.RQ_QUEUES
    settings.RQ_QUEUES = {name: {**conf, "URL": "redis://127.0.0.1:1/0"} for name, conf in alive.items()}
    job = runner.enqueue("test.echo", word="later")  # autocommit: on_commit runs now, Redis refuses
    job.refresh_from_db()
    assert (job.status, job.rq_id) == (Job.Status.QUEUED, "")
    settings.RQ_QUEUES = alive
    assert runner.requeue_lost(older_than=timedelta(0)) == 1
    assert runner.requeue_lost(older_than=timedelta(0)) == 0  # already in Redis: not pushed twice
    work_off()
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED


# ------------------------------------------------------------------ liveness: one rule for every kind

lost_calls: list[tuple[int, str]] = []
failure_calls: list[tuple[int, str]] = []


def remember_lost(job: Job, reason: str) -> None:
    lost_calls.append((job.pk, reason))


def remember_failure(job: Job, reason: str) -> None:
    failure_calls.append((job.pk, reason))


@runner.handler("test.beats", queue="default")
def beats(job: runner.JobContext, *, seconds: float) -> None:
    first = Job.objects.get(pk=job.job.pk).heartbeat_at
    time.sleep(seconds)
    later = Job.objects.get(pk=job.job.pk).heartbeat_at
    job.log(f"beat {first.isoformat()} then {later.isoformat()}")
    assert later > first, "no heartbeat while the handler ran"


@runner.handler("test.hooked", queue="default", on_lost=remember_lost, on_failure=remember_failure)
def hooked(job: runner.JobContext, *, fail: bool = False, lost: bool = False) -> None:
    if lost:  # what the reaper does while a slow worker still runs
        Job.objects.filter(pk=job.job.pk).update(status=Job.Status.FAILED, error="lost")
    if fail:
        raise RuntimeError("vCenter said no")


def running(kind: str, *, silent_for: timedelta, **args) -> Job:
    beat = timezone.now() - silent_for
    return Job.objects.create(kind=kind, args=args, status=Job.Status.RUNNING, started_at=beat, heartbeat_at=beat)


def test_every_job_beats_a_heartbeat_without_asking_for_one(redis_conn, settings):
    settings.VMPORTAL_JOB_STALE_AFTER = 3  # a beat every second
    job = runner.enqueue("test.beats", seconds=2.5)
    work_off()
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error


def test_a_silent_running_job_is_failed_once_and_its_kind_compensates(settings):
    settings.VMPORTAL_JOB_STALE_AFTER = 45
    lost_calls.clear()
    dead = running("test.hooked", silent_for=timedelta(seconds=50))
    alive = running("test.hooked", silent_for=timedelta(seconds=20))
    mute = running("test.echo", silent_for=timedelta(minutes=5), word="x")  # no hook: only failed
    assert runner.reap_lost() == 2
    assert runner.reap_lost() == 0  # one verdict, one compensation
    dead.refresh_from_db()
    alive.refresh_from_db()
    mute.refresh_from_db()
    assert (dead.status, alive.status, mute.status) == (Job.Status.FAILED, Job.Status.RUNNING, Job.Status.FAILED)
    assert dead.error.startswith(f"The worker running test.hooked #{dead.pk} stopped before it finished")
    assert "the bound is 45 s" in dead.error
    assert lost_calls == [(dead.pk, dead.error)]


def test_a_handler_that_raises_runs_its_kinds_failure_hook(redis_conn):
    failure_calls.clear()
    job = runner.enqueue("test.hooked", fail=True)
    work_off()
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert failure_calls == [(job.pk, "RuntimeError: vCenter said no")]


def test_a_job_declared_lost_keeps_that_verdict_when_its_slow_worker_finishes(redis_conn):
    job = runner.enqueue("test.hooked", lost=True)
    work_off()
    job.refresh_from_db()
    assert (job.status, job.error) == (Job.Status.FAILED, "lost")


def test_lost_vm_tasks_and_key_deliveries_fail_with_a_reason(engineer):
    pool = factories.pool()
    vm = factories.vm(pool, state=VMState.LEASED, moid="vm-42")
    now = timezone.now()
    lease = Lease.objects.create(vm=vm, pool=pool, user=engineer, started_at=now, expires_at=now + timedelta(hours=1))
    task = VMTask.objects.create(lease=lease, kind=VMTask.Kind.SNAPSHOT, snapshot="s1")
    delivery = KeyDelivery.objects.get_or_create(lease=lease)[0]
    running("leases.vm_task", silent_for=timedelta(hours=1), task_id=task.pk)
    running("firstboot.add_keys", silent_for=timedelta(hours=1), lease_id=lease.pk)
    assert runner.reap_lost() == 2
    task.refresh_from_db()
    delivery.refresh_from_db()
    assert task.status == VMTask.Status.FAILED and "stopped before it finished" in task.error
    assert delivery.state == KeyDelivery.State.FAILED and "stopped before it finished" in delivery.detail


@pytest.mark.parametrize("died", ["after taking it", "after marking it started"])
def test_a_job_whose_worker_died_before_claiming_it_is_pushed_again(redis_conn, died):
    """kill -9 between RQ's dequeue and run()'s claim: RQ keeps the job in the queue's
    intermediate list (status queued) or as started, for a worker that is gone, and the row
    stays queued. Seen in make demo: a pool whose fill job this was never refilled."""
    job = runner.enqueue("test.echo", word="orphaned")
    queue = django_rq.get_queue(job.queue)
    doomed = SimpleWorker([queue], connection=queue.connection)
    taken, _ = doomed.dequeue_job_and_maintain_ttl(timeout=1)  # to the intermediate list
    if died == "after marking it started":
        doomed.prepare_job_execution(taken, remove_from_intermediate_queue=True)
    assert queue.get_job_position(taken.id) is None  # no worker will be handed it
    assert runner.requeue_lost(older_than=timedelta(0)) == 1
    assert runner.requeue_lost(older_than=timedelta(0)) == 0  # waiting in its queue again: once is enough
    work_off()
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert AuditEvent.objects.filter(action="test.echo").count() == 1


@pytest.mark.parametrize(("then_raise", "status", "hook"), [
    (False, Job.Status.SUCCEEDED, None),
    (True, Job.Status.FAILED, "failed"),  # it failed for a reason of its own, which it knows
])
def test_a_job_whose_connection_was_dropped_records_its_end_on_a_new_one(redis_conn, then_raise, status, hook):
    cut_off_calls.clear()
    job = runner.enqueue("test.cut_off", then_raise=then_raise)
    assert runner.run(job.pk) == status  # not left running for the reaper's bound
    job.refresh_from_db()
    assert job.status == status
    assert job.finished_at is not None
    assert [kind for kind, _ in cut_off_calls] == ([hook] if hook else [])


def test_a_job_the_dropped_connection_broke_is_compensated_as_a_lost_one(redis_conn):
    """What it had recorded is unknown, as when its worker dies: the kind's on_lost hook runs."""
    cut_off_calls.clear()
    job = runner.enqueue("test.cut_off", then_raise=False, mid_statement=True)
    assert runner.run(job.pk) == Job.Status.FAILED
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and job.error.startswith(("OperationalError", "InterfaceError"))
    assert [kind for kind, _ in cut_off_calls] == ["lost"]


def seen_by_others(job: Job, reason: str) -> None:
    """An on_failure hook that records how another session sees the job while it runs."""
    with other_session() as other:
        seen.append(other.execute(f"SELECT status FROM {Job._meta.db_table} WHERE id = %s",  # noqa: S608
                                  [job.pk]).fetchone()[0])


seen: list[str] = []


@runner.handler("test.watched", queue="default", on_failure=seen_by_others)
def watched(job: runner.JobContext) -> None:
    raise RuntimeError("vCenter said no")


def test_a_failed_job_is_seen_ended_only_with_its_compensation(redis_conn):
    """Apart, the pool manager saw a failed fill, started the next, and the failed one's
    hook then left its "cloning" rows to that one, which never looks at them (chaos run)."""
    seen.clear()
    job = runner.enqueue("test.watched")
    assert runner.run(job.pk) == "failed"
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert seen == [Job.Status.RUNNING]  # the hook ran before anyone could see the job failed


def dropped_while_restarting(job: Job, reason: str) -> None:
    """An on_lost hook PostgreSQL drops while it is "restarting" (``drops_left``)."""
    if drops_left:
        drops_left.pop()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    compensated.append(reason)


drops_left: list[int] = []
compensated: list[str] = []


@runner.handler("test.dropped", queue="default", on_lost=dropped_while_restarting)
def dropped(job: runner.JobContext) -> None:
    with suppress(OperationalError), connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    Job.objects.filter(pk=job.job.pk).update(log="never written")  # fails: the connection is gone


def test_a_failure_postgresql_cannot_record_is_left_running_for_the_reaper(redis_conn, settings):
    """Its compensation is not lost: the row stays running, its heartbeat stopped, and the
    reaper fails it and runs the hook once PostgreSQL answers again."""
    settings.VMPORTAL_JOB_STALE_AFTER = 45
    compensated.clear()
    drops_left[:] = [1, 2, 3]  # more than the runner's attempts
    job = runner.enqueue("test.dropped")
    assert runner.run(job.pk) == "failed"
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING  # no attempt committed
    assert compensated == []
    drops_left.clear()  # PostgreSQL is back
    assert runner.reap_lost(now=timezone.now() + timedelta(seconds=60)) == 1
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "stopped before it finished" in job.error
    assert compensated == [job.error]
