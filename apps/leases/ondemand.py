"""On-demand requests: clone VMs for one person when a pool has none ready.

A request names pools and counts. Its job (``leases.ondemand``) clones the VMs outside
the pool's own accounting (``VM.on_demand``), waits for them to boot, and leases them all
to the requester in one transaction. All or nothing, like a checkout: a VM that fails
is retried up to the pool's ``max_tries``; after that the request fails with the reason
and its other VMs are destroyed. The requester may cancel at any time; a cancelled or
failed request leaves nothing behind.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from apps.audit import services as audit
from apps.core.errors import Conflict, NotFound, Unavailable, VmPortalError
from apps.core.permissions import is_admin
from apps.jobs import runner
from apps.jobs.models import Job
from apps.leases.models import Lease, OnDemandRequest
from apps.leases.services import LeaseLimitReached, check_lease_limits, end_lease
from apps.pools.manager import discard_vm
from apps.pools.models import VM, Pool, TemplateStatus, VMState
from apps.pools.selectors import pools_named

REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # fullmatch: "$" would let "abc\n" through
# A request whose job has not beaten its heart for this long has lost its worker.
STALE_AFTER = timedelta(seconds=90)
Status = OnDemandRequest.Status


class OverLimit(VmPortalError):
    http_status = 403


def max_per_request() -> int:
    return settings.VMPORTAL_ONDEMAND_MAX_PER_REQUEST


@transaction.atomic
def request_vms(*, user: User, pools: list[Pool], request_id: str = "",
                lifetime: timedelta | None = None, note: str = "", tags: dict | None = None) -> OnDemandRequest:
    """Queue an on-demand request for one VM per entry of ``pools`` (a pool may repeat)."""
    if not pools:
        raise VmPortalError("Ask for at least one VM.")
    if len(pools) > max_per_request():
        raise OverLimit(f"Ask for at most {max_per_request()} VMs on demand in one request.")
    for pool in {p.pk: p for p in pools}.values():
        if not pool.enabled:
            raise Unavailable(f"Pool {pool.name} is disabled.")
        if pool.health == Pool.Health.FAILING:
            raise Unavailable(f"Pool {pool.name} cannot make VMs right now: {pool.health_reason} "
                              "An admin has to fix it first.")
        if pool.template.status != TemplateStatus.READY:
            raise Unavailable(f"Pool {pool.name}'s template {pool.template.name} is {pool.template.status}, "
                              "not ready.")
    request_id = request_id or uuid.uuid4().hex
    if not REQUEST_ID.fullmatch(request_id):
        raise VmPortalError("request_id: use 1-64 letters, digits, '.', '_' or '-'.")
    if OnDemandRequest.objects.filter(request_id=request_id).exists():
        raise Conflict(f"A request with id {request_id} exists already.")
    # Until delivered, this request's VMs count against the limits as if leased already.
    check_lease_limits(user, len(pools))
    wanted = dict(sorted(Counter(p.name for p in pools).items()))
    req = OnDemandRequest.objects.create(
        request_id=request_id, user=user, wanted=wanted, lifetime=lifetime, note=note, tags=tags or {},
    )
    audit.record("ondemand.request", target=req, pool=pools[0].pk if len(wanted) == 1 else None,
                 after={"request_id": request_id, "wanted": wanted})
    runner.enqueue("leases.ondemand", target=req, request_pk=req.pk)
    return req


def get_request_for(user: User, request_id: str) -> OnDemandRequest:
    req = OnDemandRequest.objects.select_related("user").filter(request_id=request_id).first()
    if req is None or (req.user_id != user.pk and not is_admin(user)):
        raise NotFound("No such on-demand request.")
    return req


@transaction.atomic
def cancel(*, user: User, request_id: str) -> OnDemandRequest:
    """Withdraw a request. Pending: its job stops and destroys what it made. Ready: its
    leases end (the VMs are destroyed), as vmpooler's DELETE /ondemandvm does."""
    req = get_request_for(user, request_id)
    req = OnDemandRequest.objects.select_for_update(no_key=True).get(pk=req.pk)
    if req.status == Status.READY:
        for lease in Lease.objects.active().filter(vm__in=req.vms.all()).select_related("vm").order_by("vm_id"):
            end_lease(lease, reason=Lease.EndReason.RETURNED)
    elif req.is_pending:
        _finish(req, Status.CANCELLED, "Cancelled by the requester." if req.user_id == user.pk
                else f"Cancelled by {user.get_username()}.")
        if not _job_alive(req):
            _discard_unleased(req, "The on-demand request was cancelled.")
    else:
        raise Conflict(f"This request is {req.status} already.")
    audit.record("ondemand.cancel", target=req, before={"status": req.status})
    return req


def retry(*, user: User, request_id: str) -> OnDemandRequest:
    """Ask again for what a failed or cancelled request wanted (a new request)."""
    old = get_request_for(user, request_id)
    if old.is_pending or old.status == Status.READY:
        raise Conflict("Only a failed or cancelled request can be retried.")
    pools = pools_named(old.wanted, Pool.objects.select_related("template"))
    return request_vms(user=user, pools=[pools[n] for n, k in old.wanted.items() for _ in range(k)],
                       lifetime=old.lifetime, note=old.note, tags=old.tags)


# ------------------------------------------------------------------ used by the job


def _finish(req: OnDemandRequest, status: str, reason: str = "") -> None:
    req.move_to(status, status_reason=reason, finished_at=timezone.now())


def _discard_unleased(req: OnDemandRequest, reason: str) -> None:
    vms = req.vms.filter(state__in=(VMState.BOOTING, VMState.READY, VMState.FAILED))
    for vm in vms.select_for_update(of=("self",), no_key=True).order_by("pk"):
        discard_vm(vm, reason)
    # VMs still "cloning" have no vSphere VM we know of yet; reconcile times them out
    # (they carry our marker, so a clone that did finish is found and destroyed).


def _job_alive(req: OnDemandRequest) -> bool:
    now = timezone.now()
    return any(job.is_alive(now, STALE_AFTER) for job in runner.unfinished("leases.ondemand", req))


def start(req_pk: int) -> OnDemandRequest | None:
    """The job takes its request: queued → provisioning. None if it was withdrawn."""
    with transaction.atomic():
        req = OnDemandRequest.objects.select_for_update(no_key=True).get(pk=req_pk)
        if req.status != Status.QUEUED:
            return None
        req.move_to(Status.PROVISIONING)
        return req


def is_cancelled(req: OnDemandRequest) -> bool:
    return OnDemandRequest.objects.filter(pk=req.pk, status=Status.CANCELLED).exists()


def add_vms(req: OnDemandRequest, vms: list[VM]) -> None:
    req.vms.add(*vms)


def note(req: OnDemandRequest, text: str) -> None:
    """What a pending request is waiting for (e.g. an unreachable vCenter), for its page and the API."""
    OnDemandRequest.objects.filter(pk=req.pk, status=Status.PROVISIONING).update(status_reason=text)


def set_progress(req: OnDemandRequest, vm: VM, percent: int) -> None:
    OnDemandRequest.objects.filter(pk=req.pk).update(progress={**req.progress, str(vm.pk): percent})
    req.progress[str(vm.pk)] = percent


@transaction.atomic
def deliver(req: OnDemandRequest, ready: list[VM]) -> bool:
    """Lease every ready VM to the requester at once. False if the request was cancelled
    meanwhile (its VMs are then destroyed instead)."""
    req = OnDemandRequest.objects.select_for_update(no_key=True).get(pk=req.pk)
    if req.status != Status.PROVISIONING:
        _discard_unleased(req, f"The on-demand request was {req.status}.")
        return False
    try:
        # The request's VMs already count (pending), and become leases in this transaction:
        # nothing is added. Over only if the limit was lowered or a limited group joined since.
        check_lease_limits(req.user, 0)
    except LeaseLimitReached as exc:
        fail(req, f"Not delivered: {exc}")
        return False
    now = timezone.now()
    for vm in (VM.objects.select_for_update(of=("self",), no_key=True).filter(pk__in=[v.pk for v in ready])
               .select_related("pool").order_by("pk")):
        pool = vm.pool
        duration = min(req.lifetime or pool.lease_lifetime, pool.lease_max_lifetime)
        vm.move_to(VMState.LEASED)
        lease = Lease.objects.create(vm=vm, pool=pool, user=req.user, started_at=now, expires_at=now + duration,
                                     note=req.note, tags=req.tags)
        audit.record("lease.checkout", target=lease, pool=pool.pk,
                     after={"vm": vm.name, "user": req.user.get_username(),
                            "expires_at": lease.expires_at.isoformat(), "request_id": req.request_id})
    _finish(req, Status.READY)
    return True


@transaction.atomic
def fail(req: OnDemandRequest, reason: str) -> None:
    req = OnDemandRequest.objects.select_for_update(no_key=True).get(pk=req.pk)
    if req.is_pending:
        _finish(req, Status.FAILED, reason)
        audit.record("ondemand.failed", target=req, message=reason)
    _discard_unleased(req, f"The on-demand request {req.status}: {reason}")


def recover_stale() -> int:
    """Fail requests whose job died (worker killed), and clean up after them."""
    failed = 0
    stale = OnDemandRequest.objects.filter(status=Status.PROVISIONING,
                                           created_at__lt=timezone.now() - STALE_AFTER)
    for req in stale:
        if not _job_alive(req):
            fail(req, "The worker making these VMs stopped; retry the request.")
            failed += 1
    # Queued, yet its job is over: the job ended before taking the request and its failure
    # hook did not record that (it raised too). Nothing else will ever start it.
    for req in OnDemandRequest.objects.filter(status=Status.QUEUED):
        if not _job_alive(req):
            error = (Job.objects.filter(kind="leases.ondemand", object_type=req._meta.label_lower,
                                        object_id=str(req.pk)).order_by("-pk").values_list("error", flat=True)
                     .first() or "no job")
            fail(req, f"Its job ended before it started ({error.rstrip('.')}); retry the request.")
            failed += 1
    for req in OnDemandRequest.objects.filter(status__in=(Status.CANCELLED, Status.FAILED),
                                              vms__state__in=(VMState.BOOTING, VMState.READY)).distinct():
        if not _job_alive(req):
            with transaction.atomic():
                _discard_unleased(req, f"The on-demand request {req.status}.")
    return failed


# ------------------------------------------------------------------ for pages and the API

STEPS = ("queued", "cloning", "booting", "ready")


def describe(req: OnDemandRequest, vms: list[VM] | None = None) -> dict:
    """Where a request stands: its step, overall percent, and each VM's state and progress.
    A list of requests passes each one's VMs (with their pool), fetched for all at once."""
    vms = list(req.vms.select_related("pool").order_by("pk")) if vms is None else vms
    current = [vm for vm in vms if vm.state not in (VMState.FAILED, VMState.DESTROYING, VMState.DESTROYED)]
    if req.status == Status.READY:
        current = [vm for vm in vms if vm.state == VMState.LEASED]
    rows, done = [], 0.0
    for vm in current:
        task = req.progress.get(str(vm.pk))
        if vm.state == VMState.CLONING:
            share = 0.05 + 0.45 * (task or 0) / 100
        elif vm.state == VMState.BOOTING:
            share = 0.6
        elif vm.state in (VMState.READY, VMState.LEASED):
            share = 1.0
        else:
            share = 0.0
        done += share
        rows.append({"vm": vm, "state": vm.state, "task_progress": task, "percent": round(100 * share)})
    if req.status == Status.QUEUED:
        step = "queued"
    elif req.status == Status.PROVISIONING:
        step = _making_step(current, req.total)
    else:
        step = req.status
    percent = 100 if req.status == Status.READY else round(100 * done / max(1, req.total))
    by_pool: dict[str, dict] = {}
    for name, count in req.wanted.items():
        mine = [r for r in rows if r["vm"].pool and r["vm"].pool.name == name]
        by_pool[name] = {"wanted": count, "ready": sum(1 for r in mine if r["percent"] == 100),
                         "hostnames": [r["vm"].name for r in mine if r["percent"] == 100]}
    failures = [vm.state_reason for vm in vms if vm.state in (VMState.FAILED, VMState.DESTROYING, VMState.DESTROYED)
                and vm.state_reason]
    step_index = STEPS.index(step) if step in STEPS else -1
    # A failed request marks the step it failed at: no VM yet is the queue, a VM that never got
    # a vSphere id failed cloning, one that did failed booting.
    failed_index = -1
    if req.status == Status.FAILED:
        failed_index = (0 if not vms else 1 if not any(vm.moid for vm in vms) else 2)
    step_states = [(name, "done" if i < step_index or i < failed_index else "now" if i == step_index
                    else "failed" if i == failed_index else "") for i, name in enumerate(STEPS)]
    return {"req": req, "step": step, "steps": STEPS, "step_index": step_index, "step_states": step_states,
            "percent": percent, "vms": rows, "pools": by_pool, "retried": len(failures),
            "last_failure": failures[-1] if failures else ""}


def _making_step(current: list[VM], total: int) -> str:
    """The step of a request whose VMs are being made: the VM rows below it say the same
    (every VM ready, and only the lease is left to write, reads as ready, not booting)."""
    if len(current) < total or any(v.state == VMState.CLONING for v in current):
        return "cloning"
    if any(v.state == VMState.BOOTING for v in current):
        return "booting"
    return "ready"


def lease_ids(req: OnDemandRequest, vms: list[VM] | None = None) -> list[int]:
    """Its VMs' leases; given VMs must come with their lease (select_related("lease"))."""
    if vms is None:
        return list(Lease.objects.filter(vm__in=req.vms.all()).values_list("pk", flat=True))
    leases = [vm.lease for vm in vms if hasattr(vm, "lease")]
    return [lease.pk for lease in sorted(leases, key=lambda lease: lease.started_at, reverse=True)]
