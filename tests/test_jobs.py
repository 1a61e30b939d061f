"""The job runner against a real Redis and a real RQ worker (in-process, burst mode)."""

from __future__ import annotations

from datetime import timedelta

import django_rq
import pytest
from django.db import transaction
from rq import SimpleWorker

from apps.audit.models import AuditEvent
from apps.audit.services import record
from apps.jobs import runner
from apps.jobs.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


@runner.handler("test.echo", queue="default")
def echo(job: runner.JobContext, *, word: str) -> None:
    job.log(f"said {word}")
    record("test.echo", message=word)


@runner.handler("test.explode", queue="default")
def explode(job: runner.JobContext) -> None:
    raise RuntimeError("template gone")


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
