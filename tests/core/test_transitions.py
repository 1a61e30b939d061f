"""Every status change goes through transition(): refused when the map forbids it, lost (409)
when someone else moved the row first, and recorded with who or which job made it."""

from __future__ import annotations

import threading
import time

import django_rq
import pytest
from django.db import connection, transaction
from rq import SimpleWorker

from apps.core.context import Actor, acting_as
from apps.core.errors import Conflict, VmPortalError
from apps.core.models import StateChange
from apps.core.states import IllegalTransition, StaleState, TransitionError
from apps.jobs import runner
from apps.jobs.models import Job
from apps.leases import services as leases
from apps.leases.models import OnDemandRequest
from apps.pools.models import VM, TemplateBuild, TemplateCopy, TemplateStatus, VMState
from apps.pools.templates import recovery
from tests import factories
from tests.api.conftest import auth_client, ready_pool, token_for


def history(obj) -> list[tuple[str, str, str]]:
    rows = StateChange.objects.filter(model=obj._meta.label_lower, object_id=obj.pk).order_by("id")
    return [(r.old, r.new, r.reason) for r in rows]


def a_build(status: str, **kw) -> TemplateBuild:
    source = factories.template()
    derived = factories.template(source.vcenter, status=TemplateStatus.PENDING, parent=source, source="derived")
    return TemplateBuild.objects.create(
        kind=TemplateBuild.Kind.DERIVE, vcenter=source.vcenter, template=derived, template_name=derived.name,
        source_template=source, cluster=factories.cluster(source.vcenter), vm_name=derived.name, status=status,
        **kw)


@pytest.mark.django_db
def test_a_transition_error_is_a_domain_conflict():
    assert issubclass(TransitionError, Conflict) and issubclass(TransitionError, VmPortalError)
    assert TransitionError.http_status == 409


@pytest.mark.django_db
def test_illegal_transitions_of_templates_builds_and_requests_are_refused_and_leave_no_trace(engineer):
    template = factories.template(status=TemplateStatus.READY)
    build = a_build(TemplateBuild.Status.CAPTURED)
    request = OnDemandRequest.objects.create(request_id="r1", user=engineer, wanted={"p": 1},
                                             status=OnDemandRequest.Status.READY)
    for obj, new in ((template, TemplateStatus.DEPLOYING), (build, TemplateBuild.Status.CAPTURING),
                     (request, OnDemandRequest.Status.PROVISIONING)):
        before = obj.status
        with pytest.raises(IllegalTransition, match=f"{before} → {new} is not allowed"):
            obj.move_to(new)
        obj.refresh_from_db()
        assert obj.status == before
    assert not StateChange.objects.exists()


@pytest.mark.django_db
def test_a_job_failing_its_template_leaves_one_that_became_ready_meanwhile_alone():
    # A deploy's except-path (or the reaper) used to fail a template from any state.
    template = factories.template(status=TemplateStatus.READY)
    copy = TemplateCopy.objects.create(template=template, cluster=factories.cluster(template.vcenter),
                                       status=TemplateStatus.READY)
    assert recovery.fail_template(template.pk, "late failure", copy_id=copy.pk) is False
    template.refresh_from_db()
    copy.refresh_from_db()
    assert (template.status, copy.status) == (TemplateStatus.READY, TemplateStatus.READY)


@pytest.mark.django_db
def test_the_second_of_two_admins_retrying_a_failed_copy_gets_a_conflict():
    template = factories.template(status=TemplateStatus.READY)
    cluster = factories.cluster(template.vcenter)
    copy = TemplateCopy.objects.create(template=template, cluster=cluster, status=TemplateStatus.FAILED)
    stale = TemplateCopy.objects.get(pk=copy.pk)
    copy.move_to(TemplateStatus.PREPARING)  # the first admin's retry
    with pytest.raises(StaleState, match="no longer failed") as lost:
        stale.move_to(TemplateStatus.PREPARING)
    assert lost.value.current == TemplateStatus.PREPARING
    assert history(copy) == [(TemplateStatus.FAILED, TemplateStatus.PREPARING, "")]


@pytest.mark.django_db
def test_each_transition_writes_one_history_row_with_the_person_who_made_it(engineer):
    pool = factories.pool()
    vm = factories.vm(pool, state=VMState.BOOTING)
    with acting_as(Actor(user_id=engineer.pk, name=engineer.get_username(), request_id="req-1")):
        vm.move_to(VMState.FAILED, state_reason="The guest never answered.")
    [row] = StateChange.objects.all()
    assert (row.model, row.object_id, row.field, row.old, row.new) == ("pools.vm", vm.pk, "state", "booting", "failed")
    assert (row.reason, row.actor_id, row.actor_name, row.request_id, row.job_id) == (
        "The guest never answered.", engineer.pk, engineer.get_username(), "req-1", None)


@pytest.mark.django_db
def test_checkout_records_each_vm_it_leases_with_the_person(engineer):
    pool = ready_pool("hist", ready=3)
    with acting_as(Actor(user_id=engineer.pk, name=engineer.get_username())):
        got = leases.checkout(user=engineer, pools=[pool, pool])
    rows = StateChange.objects.filter(model="pools.vm").order_by("object_id")
    assert sorted(r.object_id for r in rows) == sorted(lease.vm_id for lease in got)
    assert {(r.old, r.new, r.actor_id) for r in rows} == {(VMState.READY, VMState.LEASED, engineer.pk)}


@runner.handler("test.fail_vm", queue="default")
def fail_vm(job: runner.JobContext, *, vm_id: int) -> None:
    VM.objects.get(pk=vm_id).move_to(VMState.FAILED, state_reason="failed by a job")


@pytest.mark.django_db(transaction=True)
def test_a_change_made_by_a_job_names_the_job(redis_conn):
    vm = factories.vm(factories.pool(), state=VMState.BOOTING)
    with transaction.atomic():
        job = runner.enqueue("test.fail_vm", vm_id=vm.pk)
    queue = django_rq.get_queue("default")
    SimpleWorker([queue], connection=queue.connection).work(burst=True)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    [row] = StateChange.objects.filter(model="pools.vm", object_id=vm.pk)
    assert (row.new, row.job_id, row.actor_id, row.actor_name) == (VMState.FAILED, job.pk, None, "system")


def _wait_for_lock_wait(timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND wait_event_type = 'Lock'")
            if cursor.fetchone()[0]:
                return
            time.sleep(0.02)
    raise AssertionError("the API request never waited for the VM's row lock")


@pytest.mark.django_db(transaction=True)
def test_an_api_return_that_loses_a_race_for_its_vm_answers_409_not_500(engineer, redis_conn):
    raw = token_for(engineer)
    [lease] = leases.checkout(user=engineer, pools=[ready_pool("race", ready=1)])
    locked, release, answer = threading.Event(), threading.Event(), {}

    def racer() -> None:  # another writer that holds the VM and moves it first
        try:
            with transaction.atomic():
                vm = VM.objects.select_for_update().get(pk=lease.vm_id)
                locked.set()
                release.wait(30)
                vm.move_to(VMState.DESTROYING, state_reason="Destroyed by an admin.")
        finally:
            connection.close()

    def give_back() -> None:
        try:
            answer["response"] = auth_client(raw).delete(f"/api/v3/vm/{lease.vm.name}")
        finally:
            connection.close()

    threads = [threading.Thread(target=racer), threading.Thread(target=give_back)]
    threads[0].start()
    assert locked.wait(10)
    threads[1].start()
    _wait_for_lock_wait()
    release.set()
    for t in threads:
        t.join(30)
    response = answer["response"]
    assert response.status_code == 409, response.content
    assert "is no longer leased (destroying now)" in response.json()["error"]
    lease.refresh_from_db()
    assert lease.is_active  # the loser's transaction wrote nothing
