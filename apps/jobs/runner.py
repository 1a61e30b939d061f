"""The one job runner: every background job is a Job row plus an RQ job that runs it.

Services call ``enqueue`` inside their transaction; the RQ job is pushed only when that
transaction commits, so a worker never sees a job for a row that was rolled back. When
Redis is down the row stays ``queued`` and ``requeue_lost`` pushes it again later: the
database, not Redis, is the record of what must happen.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import django_rq
from django.db import connection, models, transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone
from redis.exceptions import RedisError

from apps.audit.context import SYSTEM, acting_as
from apps.jobs.models import Job

log = logging.getLogger(__name__)
HEARTBEAT_EVERY = 15.0  # seconds


@dataclass(frozen=True)
class Handler:
    kind: str
    queue: str
    func: Callable[..., Any]


_handlers: dict[str, Handler] = {}


def handler(kind: str, *, queue: str = "default"):
    """Register ``func(job: JobContext, **args)`` as the body of jobs of ``kind``."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        _handlers[kind] = Handler(kind=kind, queue=queue, func=func)
        return func

    return register


class JobContext:
    """Handed to a handler: its Job row and a way to add log lines to it."""

    def __init__(self, job: Job):
        self.job = job

    def log(self, message: str) -> None:
        line = f"{timezone.now():%H:%M:%S} {message}\n"
        Job.objects.filter(pk=self.job.pk).update(log=Concat(F("log"), Value(line)))

    def heartbeat(self) -> Heartbeat:
        """``with job.heartbeat():`` around long work, so a dead worker can be told apart."""
        return Heartbeat(self.job)


class Heartbeat:
    """Touches the Job row every HEARTBEAT_EVERY seconds while the job lives (Job.is_alive)."""

    def __init__(self, job: Job):
        self.job_id, self.stop = job.pk, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        try:
            while not self.stop.is_set():
                Job.objects.filter(pk=self.job_id).update(heartbeat_at=timezone.now())
                self.stop.wait(HEARTBEAT_EVERY)
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
        django_rq.get_queue(job.queue).enqueue(
            run, job.pk, job_id=rq_job_id(job), description=f"{job.kind} #{job.pk}"
        )
    except RedisError as exc:
        log.warning("Job %s stays queued: Redis is unavailable (%s).", job.pk, exc)
        return False
    Job.objects.filter(pk=job.pk).update(rq_id=rq_job_id(job))
    return True


def run(job_id: int) -> str:
    """The RQ entry point. Runs a Job at most once, even if RQ delivers it twice."""
    claimed = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(
        status=Job.Status.RUNNING, started_at=timezone.now()
    )
    if not claimed:
        return "already taken"
    job = Job.objects.get(pk=job_id)
    ctx = JobContext(job)
    try:
        with acting_as(SYSTEM):
            _handlers[job.kind].func(ctx, **job.args)
    except Exception as exc:
        log.exception("Job %s (%s) failed", job.pk, job.kind)
        Job.objects.filter(pk=job.pk).update(
            status=Job.Status.FAILED,
            finished_at=timezone.now(),
            error=f"{type(exc).__name__}: {exc}"[:4000],
            log=Concat(F("log"), Value(traceback.format_exc(limit=5)[-4000:])),
        )
        return "failed"
    Job.objects.filter(pk=job.pk).update(status=Job.Status.SUCCEEDED, finished_at=timezone.now())
    return "succeeded"


def requeue_lost(older_than: timedelta = timedelta(seconds=30)) -> int:
    """Push again the queued Jobs that Redis lost (restart, outage at enqueue time)."""
    pushed = 0
    cutoff = timezone.now() - older_than
    for job in Job.objects.filter(status=Job.Status.QUEUED, created_at__lt=cutoff).order_by("pk")[:500]:
        queue = django_rq.get_queue(job.queue)
        try:
            if queue.fetch_job(rq_job_id(job)) is not None:
                continue
        except RedisError:
            return pushed
        pushed += push(job)
    return pushed
