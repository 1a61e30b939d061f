"""vmpooler's /vm routes: checkout by body or path, a VM's details, lifetime and tags, return,
and the disk and snapshot tasks on a leased VM."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from apps.api import auth
from apps.api.decorators import api_view
from apps.api.http import ApiError, as_hours, json_body, ok, unauthorized
from apps.api.metrics import CHECKOUT_SECONDS
from apps.api.vmpooler._common import (
    STATE_NAMES,
    _api_lifetime,
    _count,
    _find_vm,
    _fqdn,
    _names_in,
    _owned_lease,
    _pick,
    _wanted_in,
    pools_join,
)
from apps.core.errors import VmPortalError
from apps.core.permissions import is_admin
from apps.leases import services as leases
from apps.leases import tags as lease_tags
from apps.leases import vmtasks
from apps.leases.models import Lease
from apps.pools.models import Pool


def _checkout(request: HttpRequest, wanted: Counter, pool_rows: list[tuple] | None = None) -> HttpResponse:
    total = sum(wanted.values())
    limit = settings.VMPORTAL_MAX_VMS_PER_CHECKOUT
    if not wanted or total < 1 or total > limit or min(wanted.values()) < 1:
        raise ApiError(f"Ask for between 1 and {limit} VMs, at least one from each pool named.")
    picked = _pick(wanted, prefer_ready=True, rows=pool_rows)
    try:
        with CHECKOUT_SECONDS.time():
            leased = leases.checkout(user=request.user, pools=[pool for _, pool in picked], lifetime=_api_lifetime(),
                                     note="vmpooler API")
    except leases.PoolEmpty as exc:
        # vmpooler's all-or-nothing answer: nothing was leased, 503.
        raise ApiError(str(exc), 503) from None
    by_pool: dict[int, list[Lease]] = defaultdict(list)
    for lease in leased:
        by_pool[lease.pool_id].append(lease)
    hosts: dict[str, list[str]] = defaultdict(list)
    for name, pool in picked:
        hosts[name].append(_fqdn(by_pool[pool.pk].pop(0).vm.name, pool))
    # Keyed by the name asked for (an alias too), FQDNs and no "domain" key, as vmpooler v3:
    # clients append that key's value to each hostname.
    return ok({name: {"hostname": names[0] if len(names) == 1 else names} for name, names in hosts.items()})


def _list_pools(request: HttpRequest) -> HttpResponse:
    return ok(list(Pool.objects.filter(enabled=True).order_by("name").values_list("name", flat=True)))


def _checkout_body(request: HttpRequest) -> HttpResponse:
    body = json_body(request)
    if not isinstance(body, dict) or not body:
        raise ApiError('Send an object of pool: count, e.g. {"debian-12": "2"}.')
    return _checkout(request, _wanted_in(body))


vm_collection = api_view(public=("GET",))({"GET": _list_pools, "POST": _checkout_body})


def _checkout_path(request: HttpRequest, pools: str) -> HttpResponse:
    """Authenticated here (api_view's auth_by="handler"): the pools named are read in the
    token lookup's statement, the hot path of CI's checkouts."""
    names = _names_in(pools)
    too_many = len(names) > settings.VMPORTAL_MAX_VMS_PER_CHECKOUT
    if too_many or not names:
        token, rows = auth.token_user(request), []
    else:
        token, rows = auth.token_user_joined(request, *pools_join(set(names)))
    if token is None:
        return unauthorized()
    if too_many:
        raise ApiError(f"Ask for at most {settings.VMPORTAL_MAX_VMS_PER_CHECKOUT} VMs.")
    return _checkout(request, Counter(names), rows if names else None)


def _vm_detail(request: HttpRequest, hostname: str) -> HttpResponse:
    vm = _find_vm(hostname)
    lease = Lease.objects.active().filter(vm=vm).first()
    data: dict = {
        "template": vm.pool.name if vm.pool else (vm.template.name if vm.template else ""),
        "lifetime": int(round(as_hours(vm.pool.lease_lifetime))) if vm.pool else 0,
        "state": STATE_NAMES.get(vm.state, "destroyed"),
        "tags": {}, "snapshots": [], "disk": [],
        "ip": vm.ip_address,
        "fqdn": _fqdn(vm.name, vm.pool),
        # Not in vmpooler v3's answer: vmfloaty's "query" prints <hostname>.<domain>.
        "domain": (vm.pool.domain if vm.pool else "") or settings.VMPORTAL_API_DOMAIN,
        "host": vm.host.name if vm.host else "",
        "migrated": False,
    }
    if lease is not None:
        now = timezone.now()
        data.update(
            lifetime=int(round(as_hours(lease.expires_at - lease.started_at))),
            running=as_hours(now - lease.started_at),
            remaining=max(0.0, as_hours(lease.expires_at - now)),
            start_time=lease.started_at.isoformat(),
            end_time=lease.expires_at.isoformat(),
        )
        # Tags are the lessee's business; the state and addresses are everyone's.
        if lease.user_id == request.user.pk or is_admin(request.user):
            data["tags"] = lease.tags
        data["snapshots"], data["disk"] = vmtasks.snapshots_of(lease), vmtasks.disks_of(lease)
    return ok({vm.name: data})


def _vm_modify(request: HttpRequest, hostname: str) -> HttpResponse:
    body = json_body(request)
    if not isinstance(body, dict) or not body:
        raise ApiError("Send lifetime and/or tags.", failure=["empty body"])
    unknown = sorted(set(body) - {"lifetime", "tags"})
    if unknown:
        raise ApiError(f"Unknown fields: {', '.join(unknown)}.", failure=[f"unknown field {k}" for k in unknown])
    lease = _owned_lease(request, _find_vm(hostname))
    failure: list[str] = []
    lifetime = _lifetime_in(body, lease, failure) if "lifetime" in body else None
    tags = None
    if "tags" in body:
        try:
            tags = lease_tags.validate_tags(body["tags"])
        except VmPortalError as exc:
            failure.append(str(exc))
    if failure:
        raise ApiError(f"Nothing was changed: {' '.join(failure)}", failure=failure)
    _modify(request, lease.pk, lifetime, tags)
    return ok()


def _lifetime_in(body: dict, lease: Lease, failure: list[str]) -> timedelta | None:
    """vmpooler's lifetime: whole hours from checkout, more than the lease has run, at most
    the pool's maximum; a shorter one than now set is allowed."""
    try:
        hours = _count(body["lifetime"], "lifetime")
    except ApiError as exc:
        failure.append(str(exc))
        return None
    cap = lease.pool.lease_max_lifetime if lease.pool else lease.expires_at - lease.started_at
    ran = timezone.now() - lease.started_at
    if hours < 1:
        failure.append(f"lifetime {hours}: give a positive number of hours.")
    elif timedelta(hours=hours) > cap:
        failure.append(f"lifetime {hours}: the most this pool allows is {as_hours(cap):g} hours.")
    elif timedelta(hours=hours) <= ran:
        failure.append(f"lifetime {hours}: the VM has run {as_hours(ran):g} hours already; give more, "
                       "or DELETE it to return it.")
    else:
        return timedelta(hours=hours)
    return None


@transaction.atomic
def _modify(request: HttpRequest, lease_id: int, lifetime: timedelta | None, tags: dict | None) -> None:
    # One transaction: a body with lifetime and tags changes both or neither.
    if lifetime is not None:
        leases.set_lifetime(user=request.user, lease_id=lease_id, lifetime=lifetime)
    if tags:
        lease_tags.tag_lease(user=request.user, lease_id=lease_id, tags=tags)


def _vm_delete(request: HttpRequest, hostname: str) -> HttpResponse:
    lease = _owned_lease(request, _find_vm(hostname))
    leases.return_lease(user=request.user, lease_id=lease.pk)
    return ok()


vm_pools = api_view(auth_by="handler")({"POST": _checkout_path})
vm_item = api_view(public=("GET",))({"GET": _vm_detail, "PUT": _vm_modify, "DELETE": _vm_delete})


def vm_dispatch(request: HttpRequest, name: str) -> HttpResponse:
    """/vm/<x>: POST checks out from the pools in x, the other methods act on VM x."""
    return vm_pools(request, pools=name) if request.method == "POST" else vm_item(request, hostname=name)


vm_dispatch.login_required = False  # type: ignore[attr-defined]
vm_dispatch.csrf_exempt = True  # type: ignore[attr-defined]


# --- disks and snapshots ---------------------------------------------------------------


def _disk(request: HttpRequest, name: str, size: str) -> HttpResponse:
    gb = _count(size.lower().removesuffix("gb"), "disk size")
    if not 1 <= gb <= vmtasks.MAX_DISK_GB:
        raise ApiError(f"A disk must be between 1 and {vmtasks.MAX_DISK_GB} GB.")
    lease = _owned_lease(request, _find_vm(name))
    vmtasks.add_disk(user=request.user, lease_id=lease.pk, size_gb=gb)
    return ok({lease.vm.name: {"disk": f"+{gb}gb"}}, status=202)


def _snapshot(request: HttpRequest, name: str) -> HttpResponse:
    lease = _owned_lease(request, _find_vm(name))
    task = vmtasks.snapshot(user=request.user, lease_id=lease.pk)
    return ok({lease.vm.name: {"snapshot": task.snapshot}}, status=202)


def _revert(request: HttpRequest, name: str, snapshot: str) -> HttpResponse:
    lease = _owned_lease(request, _find_vm(name))
    vmtasks.revert(user=request.user, lease_id=lease.pk, snapshot_id=snapshot)
    return ok(status=202)


vm_disk = api_view()({"POST": _disk})
vm_snapshot = api_view()({"POST": _snapshot})
vm_revert = api_view()({"POST": _revert})
