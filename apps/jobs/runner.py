"""The one job runner: every background job is a Job row plus an RQ job that runs it.

Services call ``enqueue`` inside their transaction; the RQ job is pushed only when that
transaction commits, so a worker never sees a job for a row that was rolled back. When
Redis is down the row stays ``queued`` and ``requeue_lost`` pushes it again later: the
database, not Redis, is the record of what must happen.

Liveness is one rule for every kind: ``run`` beats a heartbeat on the Job row while the
handler runs, and ``reap_lost`` (called by the pool manager's cycle) fails a running Job
whose heartbeat is older than VMPORTAL_JOB_STALE_AFTER seconds, then calls its kind's
``on_lost`` hook to retry or compensate. ``on_failure`` is the same kind of hook for a
handler that raised. Hooks touch only the database (no vSphere) and must be safe to run
twice.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, models, transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce, Concat
from django.utils import timezone
from redis.exceptions import RedisError
from rq.job import JobStatus

from apps.audit.context import SYSTEM, Actor, acting_as
from apps.core.errors import DATABASE_OUTAGES, VmPortalError
from apps.core.redis_client import rq_queue
from apps.core.states import StaleState
from apps.jobs.models import Job

log = logging.getLogger(__name__)

# ``hook(job, reason)``: retry or compensate what a Job that did not finish left behind.
Hook = Callable[[Job, str], None]


@dataclass(frozen=True)
class Handler:
    kind: str
    queue: str
    func: Callable[..., Any]


_handlers: dict[str, Handler] = {}
_on_lost: dict[str, Hook] = {}
_on_failure: dict[str, Hook] = {}


def handler(
    kind: str, *, queue: str = "default", on_lost: Hook | None = None, on_failure: Hook | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``func(job: JobContext, **args)`` as the body of jobs of ``kind``.

    ``on_lost`` runs when the job's worker died (heartbeat stale); ``on_failure`` when the
    handler raised. Without them the Job is only marked failed.
    """

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        _handlers[kind] = Handler(kind=kind, queue=queue, func=func)
        compensate(kind, on_lost=on_lost, on_failure=on_failure)
        return func

    return register


def compensate(*kinds: str, on_lost: Hook | None = None, on_failure: Hook | None = None) -> None:
    """Set the hooks of ``kinds`` where they are defined apart from the handler."""
    for kind in kinds:
        if on_lost is not None:
            _on_lost[kind] = on_lost
        if on_failure is not None:
            _on_failure[kind] = on_failure


def stale_after() -> timedelta:
    return timedelta(seconds=settings.VMPORTAL_JOB_STALE_AFTER)


def heartbeat_every() -> float:
    # Three beats fit in the stale bound, so one slow UPDATE never makes a live job look dead.
    return settings.VMPORTAL_JOB_STALE_AFTER / 3


class JobContext:
    """Handed to a handler: its Job row and a way to add log lines to it."""

    def __init__(self, job: Job):
        self.job = job

    def log(self, message: str) -> None:
        line = f"{timezone.now():%H:%M:%S} {message}\n"
        Job.objects.filter(pk=self.job.pk).update(log=Concat(F("log"), Value(line)))


class Heartbeat:
    """Touches the Job rows every ``heartbeat_every()`` seconds while ``run`` runs the handler
    (or a handler works for jobs it took over; their own ``run`` found them taken)."""

    def __init__(self, *jobs: Job | int):
        self.job_ids = [j if isinstance(j, int) else j.pk for j in jobs]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    Job.objects.filter(pk__in=self.job_ids).update(heartbeat_at=timezone.now())
                except DatabaseError as exc:
                    # A blip must not silence a live job for good: beat again next time.
                    log.warning("Heartbeat of jobs %s not recorded: %s", self.job_ids, exc)
                    connection.close()
                self.stop.wait(heartbeat_every())
        finally:
            connection.close()

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def enqueue(kind: str, *, target: models.Model | None = None, **args: Any) -> Job:
    try:
        h = _handlers[kind]
    except KeyError:
        raise ValueError(f"No job handler is registered for {kind!r}.") from None
    job = Job.objects.create(
        kind=kind,
        queue=h.queue,
        args=args,
        object_type=target._meta.label_lower if target is not None else "",
        object_id=str(target.pk) if target is not None else "",
    )
    transaction.on_commit(lambda: push(job))
    return job


def unfinished(kind: str, target: models.Model) -> models.QuerySet[Job]:
    """The queued or running jobs of ``kind`` for ``target``."""
    return Job.objects.filter(kind=kind, object_type=target._meta.label_lower, object_id=str(target.pk),
                              status__in=(Job.Status.QUEUED, Job.Status.RUNNING))


def rq_job_id(job: Job) -> str:
    return f"vmportal-job-{job.pk}"


def push(job: Job) -> bool:
    """Hand a queued Job to RQ. False (and logged) when Redis cannot be reached."""
    try:
        rq_queue(job.queue).enqueue(
            run, job.pk, job_id=rq_job_id(job), description=f"{job.kind} #{job.pk}"
        )
    except RedisError as exc:
        log.warning("Job %s stays queued: Redis is unavailable (%s).", job.pk, exc)
        return False
    # rq_id is written by the worker's claim in run(), not here: an UPDATE after the push was
    # a write and a commit of its own in every request that queues a job (a browser checkout's
    # first boot: ~4 ms waiting on PostgreSQL's commit under load, py-spy).
    return True


def run(job_id: int) -> str:
    """The RQ entry point. Runs a Job at most once, even if RQ delivers it twice.

    A worker has no requests, whose start and end let Django drop broken connections: here
    each job does it. Its first query checks the connection kept from the last job
    (CONN_HEALTH_CHECKS) and opens a new one if PostgreSQL dropped it meanwhile (a restart,
    a failover, an idle timeout); one that failed during the job is closed after it. Without
    this, a worker whose connection PostgreSQL had dropped failed every job it took, for ever.
    """
    _drop_broken_connection()
    try:
        return _run(job_id)
    finally:
        _drop_broken_connection()


def _drop_broken_connection() -> None:
    if not connection.in_atomic_block:  # run inside a caller's transaction (tests): theirs to keep
        close_old_connections()


def _run(job_id: int) -> str:
    now = timezone.now()
    try:
        # The claim is one conditional UPDATE on the row as it was queued (no read first).
        claim = Job(pk=job_id, status=Job.Status.QUEUED)
        claim.move_to(Job.Status.RUNNING, started_at=now, heartbeat_at=now, rq_id=rq_job_id(claim))
    except StaleState:
        return "already taken"
    job = Job.objects.get(pk=job_id)
    ctx = JobContext(job)
    # Only a still-running row is finished here (move_to from running): a job the reaper
    # already declared lost (and compensated) keeps that verdict, whatever its slow worker
    # says afterwards.
    try:
        with Heartbeat(job), acting_as(Actor(user_id=None, name=SYSTEM.name, job_id=job.pk)):
            _handlers[job.kind].func(ctx, **job.args)
    except Exception as exc:
        if isinstance(exc, VmPortalError):
            # A fault the job met and named for people (a name in the way, vCenter refusing):
            # its message is the news; the traceback still goes to the job's own log below.
            log.warning("Job %s (%s) failed: %s", job.pk, job.kind, failure_reason(exc))
        else:
            log.exception("Job %s (%s) failed", job.pk, job.kind)
        return _fail(job, exc, traceback.format_exc(limit=5)[-4000:])
    return "succeeded" if _recorded(job, lambda: _end(job, Job.Status.SUCCEEDED)) else "lost"


def _fail(job: Job, exc: Exception, tail: str) -> str:
    """Record that the job failed and run its kind's hook, in one transaction.

    One transaction, as the reaper does it: nothing sees the job ended before its
    compensation is in. Apart, the pool manager saw a failed fill, started the next one,
    and the failed one's hook then found a fill running and left its "cloning" rows to it,
    which never looks at them (chaos run: 4 rows stuck, their clones orphaned). And should
    PostgreSQL drop the connection again in between, the hook was lost for good.
    """
    hook = _on_failure.get(job.kind)
    if isinstance(exc, DATABASE_OUTAGES):
        # PostgreSQL dropped the job mid-way: what it had recorded is unknown, as when
        # its worker dies, so its kind compensates as for a lost job (the reaper's hook).
        hook = _on_lost.get(job.kind, hook)
    reason = f"{type(exc).__name__}: {exc}"[:4000]

    def failed(*, compensate: bool) -> None:
        with transaction.atomic(), acting_as(SYSTEM):
            _end(job, Job.Status.FAILED, error=reason, log=Concat(F("log"), Value(tail)))
            if hook and compensate:
                hook(job, failure_reason(exc))

    try:
        _recorded(job, lambda: failed(compensate=True))
    except Exception:
        # The hook itself is broken: the job's end is still recorded, without it.
        log.exception("Compensation of job %s (%s) failed", job.pk, job.kind)
        _recorded(job, lambda: failed(compensate=False))
    return "failed"


def _end(job: Job, status: str, **changes: Any) -> None:
    # From running, whatever an attempt whose transaction then failed set on the instance.
    job.status = Job.Status.RUNNING
    job.move_to(status, finished_at=timezone.now(), **changes)


def _recorded(job: Job, record: Callable[[], None]) -> bool:
    """Record a job's end; whether it was recorded. Other exceptions ``record`` raises pass.

    On a new connection if PostgreSQL dropped this one during the job (a restart, a
    failover): else the row stayed running until the reaper's bound and its compensation
    ran then, for a job whose outcome was known. False when the reaper declared the job
    lost first (StaleState: that verdict stands), or when PostgreSQL still does not answer:
    then the row stays running, its heartbeat stopped, and reap_lost fails and compensates
    it after VMPORTAL_JOB_STALE_AFTER.
    """
    try:
        try:
            record()
        except DATABASE_OUTAGES:
            if connection.in_atomic_block or connection.is_usable():
                raise
            connection.close()
            record()
    except StaleState:
        return False
    except DATABASE_OUTAGES as exc:
        log.warning("Job %s (%s) ended but PostgreSQL did not record it (%s); the pool manager will "
                    "compensate it in %s s.", job.pk, job.kind, exc, settings.VMPORTAL_JOB_STALE_AFTER)
        return False
    return True


def failure_reason(exc: BaseException) -> str:
    """What an ``on_failure`` hook is told: a domain error's own message (written for people,
    who read it where the hook records it), else the exception's type and text."""
    return str(exc) if isinstance(exc, VmPortalError) else f"{type(exc).__name__}: {exc}"[:4000]


def reap_lost(*, now: datetime | None = None) -> int:
    """Fail running Jobs whose heartbeat stopped (their worker died) and compensate each.

    The conditional UPDATE and the kind's ``on_lost`` hook share one transaction: one
    reaper wins each Job, and a hook that fails leaves the Job running for the next cycle.
    """
    now = now or timezone.now()
    bound = stale_after()
    lost = Job.objects.filter(status=Job.Status.RUNNING).annotate(
        last_beat=Coalesce("heartbeat_at", "started_at", "created_at")
    ).filter(last_beat__lt=now - bound)
    reaped = 0
    for job in lost.order_by("pk")[:500]:
        last = job.heartbeat_at or job.started_at or job.created_at
        silent, limit = int((now - last).total_seconds()), int(bound.total_seconds())
        reason = (f"The worker running {job.kind} #{job.pk} stopped before it finished "
                  f"(no heartbeat for {silent} s; the bound is {limit} s).")
        try:
            with transaction.atomic(), acting_as(SYSTEM):
                try:
                    job.move_to(Job.Status.FAILED, where={"heartbeat_at": job.heartbeat_at}, finished_at=now,
                                error=reason)
                except StaleState:
                    continue  # it finished, or beat, meanwhile
                if hook := _on_lost.get(job.kind):
                    hook(job, reason)
        except Exception:
            log.exception("Compensation of lost job %s (%s) failed; retried next cycle", job.pk, job.kind)
            continue
        log.warning("%s", reason)
        reaped += 1
    return reaped


def _waiting(queue: Any, rq_job: Any) -> bool:
    """Whether RQ will still hand this job to a worker: in its queue's list, or deferred or
    scheduled. A job a worker took (RQ 2 moves it to the queue's intermediate list, then marks
    it started) is not: if that worker died, RQ keeps it there for a worker that is gone."""
    status = rq_job.get_status(refresh=False)
    if status == JobStatus.QUEUED:
        return queue.get_job_position(rq_job.id) is not None
    return status in (JobStatus.DEFERRED, JobStatus.SCHEDULED)


def requeue_lost(older_than: timedelta = timedelta(seconds=10)) -> int:
    """Push again the queued Jobs that no worker will run: Redis lost them (restart, outage
    at enqueue time), or a worker took one from its queue and died (kill -9, OOM) in the
    moment before run() claimed the row, and the row would wait for ever (seen in make demo:
    a pool whose fill job this was never refilled). A live worker claims the row within
    milliseconds of taking the job, so a row still queued ``older_than`` after it was made
    whose RQ job is not waiting is lost; a second delivery is harmless, since run() claims
    a row once. 10 s, not the 30 it was: work asked for while Redis was down started up to
    half a minute after Redis came back (a chaos run's recovery: 31.5 s against 7 s)."""
    pushed = 0
    cutoff = timezone.now() - older_than
    for job in Job.objects.filter(status=Job.Status.QUEUED, created_at__lt=cutoff).order_by("pk")[:500]:
        queue = rq_queue(job.queue)
        try:
            rq_job = queue.fetch_job(rq_job_id(job))
            if rq_job is not None and _waiting(queue, rq_job):
                continue
        except RedisError:
            return pushed
        pushed += push(job)
    return pushed
