"""vmpooler v3 compatibility: the routes, request and response shapes of vmpooler's API.

vmpooler's "hostname" is our VM.name. Where vmpooler is unsafe we are not: every route
needs a token, only a lease's owner or an admin may change or return it, config changes
need an admin, and nothing returns credentials.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from django.conf import settings
from django.db.models import Avg, Count, F, Max, Min, Sum
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from apps.api import auth, tokens
from apps.api import services as api_services
from apps.api.decorators import api_view
from apps.api.http import ApiError, json_body, ok
from apps.api.metrics import CHECKOUT_SECONDS
from apps.api.models import ApiToken, PoolOverride
from apps.leases import ondemand, vmtasks
from apps.leases import services as leases
from apps.leases import tags as lease_tags
from apps.leases.models import Lease, OnDemandRequest
from apps.leases.services import is_admin
from apps.pools.models import VM, Pool, VMState
from apps.pools.selectors import pools_with_counts

STATE_NAMES = {
    VMState.CLONING: "pending", VMState.BOOTING: "pending", VMState.READY: "ready", VMState.LEASED: "running",
    VMState.DESTROYING: "destroyed", VMState.DESTROYED: "destroyed", VMState.FAILED: "destroyed",
}


def _hours(delta: timedelta) -> float:
    return round(delta.total_seconds() / 3600, 2)


def _count(value: object, what: str) -> int:
    try:
        n = int(str(value))
    except ValueError:
        raise ApiError(f"{what}: {str(value)[:32]!r} is not a whole number.") from None
    return n


def _pools_named(wanted: Counter) -> dict[str, Pool]:
    """The pools ``wanted`` names, by name; 404 naming any that do not exist."""
    pools = {p.name: p for p in Pool.objects.select_related("template").filter(name__in=wanted)}
    unknown = sorted(set(wanted) - set(pools))
    if unknown:
        raise ApiError(f"No such pool: {', '.join(unknown)}.", 404)
    return pools


def _api_lifetime() -> timedelta | None:
    hours = settings.VMPORTAL_API_DEFAULT_LIFETIME_HOURS
    return timedelta(hours=hours) if hours else None


def _wanted_in(body: dict) -> Counter:
    """vmpooler's {"pool": "count", …} body as a Counter (counts checked to be whole numbers)."""
    return Counter({str(k): _count(v, str(k)[:64]) for k, v in body.items()})


def _names_in(path: str) -> list[str]:
    """vmpooler's "poolA+poolB+poolA" path segment: one name per VM."""
    return [p for p in path.split("+") if p]


def _checkout(request: HttpRequest, wanted: Counter) -> HttpResponse:
    total = sum(wanted.values())
    limit = settings.VMPORTAL_API_MAX_VMS_PER_REQUEST
    if not wanted or total < 1 or total > limit or min(wanted.values()) < 1:
        raise ApiError(f"Ask for between 1 and {limit} VMs, at least one from each pool named.")
    pools = _pools_named(wanted)
    requested = [pools[name] for name, n in wanted.items() for _ in range(n)]
    try:
        with CHECKOUT_SECONDS.time():
            leased = leases.checkout(user=request.user, pools=requested, lifetime=_api_lifetime(),
                                     note="vmpooler API")
    except leases.PoolEmpty as exc:
        # vmpooler's all-or-nothing answer: nothing was leased, 503.
        raise ApiError(str(exc), 503) from None
    body: dict = {}
    for name in wanted:
        names = [lease.vm.name for lease in leased if lease.pool_id == pools[name].pk]
        body[name] = {"hostname": names[0] if len(names) == 1 else names}
    body["domain"] = settings.VMPORTAL_API_DOMAIN
    return ok(body)


def _list_pools(request: HttpRequest) -> HttpResponse:
    return ok(list(Pool.objects.filter(enabled=True).order_by("name").values_list("name", flat=True)))


def _checkout_body(request: HttpRequest) -> HttpResponse:
    body = json_body(request)
    if not isinstance(body, dict) or not body:
        raise ApiError('Send an object of pool: count, e.g. {"debian-12": "2"}.')
    return _checkout(request, _wanted_in(body))


vm_collection = api_view()({"GET": _list_pools, "POST": _checkout_body})


def _checkout_path(request: HttpRequest, pools: str) -> HttpResponse:
    names = _names_in(pools)
    if len(names) > settings.VMPORTAL_API_MAX_VMS_PER_REQUEST:
        raise ApiError(f"Ask for at most {settings.VMPORTAL_API_MAX_VMS_PER_REQUEST} VMs.")
    return _checkout(request, Counter(names))


def _find_vm(hostname: str) -> VM:
    vm = (
        VM.objects.select_related("pool", "template", "host")
        .filter(name=hostname).exclude(state=VMState.DESTROYED).order_by("-created_at").first()
    )
    if vm is None:
        raise ApiError(f"No such VM: {hostname[:80]}.", 404)
    return vm


def _owned_lease(request: HttpRequest, vm: VM) -> Lease:
    lease = Lease.objects.active().filter(vm=vm).first()
    if lease is None:
        raise ApiError(f"{vm.name} is not checked out.", 404)
    if lease.user_id != request.user.pk and not is_admin(request.user):
        raise ApiError(f"{vm.name} is checked out by someone else.", 403)
    return lease


def _vm_detail(request: HttpRequest, hostname: str) -> HttpResponse:
    vm = _find_vm(hostname)
    lease = Lease.objects.active().filter(vm=vm).first()
    domain = settings.VMPORTAL_API_DOMAIN
    data: dict = {
        "template": vm.pool.name if vm.pool else (vm.template.name if vm.template else ""),
        "state": STATE_NAMES.get(vm.state, "destroyed"),
        "tags": {}, "snapshots": [], "disk": [],
        "ip": vm.ip_address,
        "fqdn": vm.hostname or (f"{vm.name}.{domain}" if domain else vm.name),
        "host": vm.host.name if vm.host else "",
        "migrated": False,
    }
    if lease is not None:
        now = timezone.now()
        data.update(
            lifetime=int(round(_hours(lease.expires_at - lease.started_at))),
            running=_hours(now - lease.started_at),
            remaining=max(0.0, _hours(lease.expires_at - now)),
            start_time=lease.started_at.isoformat(),
            end_time=lease.expires_at.isoformat(),
        )
        # Tags are the lessee's business; the state and addresses are everyone's.
        if lease.user_id == request.user.pk or is_admin(request.user):
            data["tags"] = lease.tags
        data["snapshots"], data["disk"] = vmtasks.snapshots_of(lease), vmtasks.disks_of(lease)
    return ok({vm.name: data, "domain": domain})


def _vm_modify(request: HttpRequest, hostname: str) -> HttpResponse:
    body = json_body(request)
    if not isinstance(body, dict) or not body:
        raise ApiError("Send lifetime and/or tags.", failure=["empty body"])
    unknown = sorted(set(body) - {"lifetime", "tags"})
    if unknown:
        raise ApiError(f"Unknown fields: {', '.join(unknown)}.", failure=[f"unknown field {k}" for k in unknown])
    lease = _owned_lease(request, _find_vm(hostname))
    if "lifetime" in body:
        hours = _count(body["lifetime"], "lifetime")
        if hours < 1:
            raise ApiError("lifetime must be at least 1 hour.", failure=["lifetime must be positive"])
        wanted = lease.started_at + timedelta(hours=hours)
        if wanted <= lease.expires_at:
            raise ApiError(f"The lease already runs {_hours(lease.expires_at - lease.started_at)} hours; "
                           "lifetime can only be extended.", failure=["lifetime can only grow"])
        leases.extend(user=request.user, lease_id=lease.pk, by=wanted - lease.expires_at)
    if "tags" in body:
        lease_tags.tag_lease(user=request.user, lease_id=lease.pk, tags=body["tags"])
    return ok()


def _vm_delete(request: HttpRequest, hostname: str) -> HttpResponse:
    lease = _owned_lease(request, _find_vm(hostname))
    leases.return_lease(user=request.user, lease_id=lease.pk)
    return ok()


vm_pools = api_view()({"POST": _checkout_path})
vm_item = api_view()({"GET": _vm_detail, "PUT": _vm_modify, "DELETE": _vm_delete})


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


# --- on-demand requests ------------------------------------------------------------------


def _ondemand(request: HttpRequest, wanted: Counter, request_id: str = "") -> HttpResponse:
    total = sum(wanted.values())
    if not wanted or min(wanted.values()) < 1:
        raise ApiError("Ask for at least one VM from each pool named.")
    if total > settings.VMPORTAL_ONDEMAND_MAX_PER_REQUEST:
        raise ApiError(f"Ask for at most {settings.VMPORTAL_ONDEMAND_MAX_PER_REQUEST} VMs on demand.", 403)
    pools = _pools_named(wanted)
    req = ondemand.request_vms(user=request.user, pools=[pools[n] for n, k in wanted.items() for _ in range(k)],
                               request_id=request_id, lifetime=_api_lifetime(), note="vmpooler API (on demand)")
    return ok({"request_id": req.request_id}, status=201)


def _ondemand_body(request: HttpRequest) -> HttpResponse:
    body = json_body(request)
    if not isinstance(body, dict) or not body:
        raise ApiError('Send an object of pool: count, e.g. {"debian-12": "2"}, and optionally a request_id.')
    request_id = body.pop("request_id", "")
    if not isinstance(request_id, str):
        raise ApiError("request_id must be a string.")
    return _ondemand(request, _wanted_in(body), request_id)


def _ondemand_path(request: HttpRequest, pools: str) -> HttpResponse:
    return _ondemand(request, Counter(_names_in(pools)))


def _ondemand_status(request: HttpRequest, request_id: str) -> HttpResponse:
    req = ondemand.get_request_for(request.user, request_id)
    facts = ondemand.describe(req)
    body: dict = {"request_id": req.request_id, "ready": req.status == OnDemandRequest.Status.READY}
    if req.status == OnDemandRequest.Status.READY:
        for name, pool in facts["pools"].items():
            body[name] = {"hostname": pool["hostnames"]}
        body["domain"] = settings.VMPORTAL_API_DOMAIN
        return ok(body)
    if req.is_pending:
        for name, pool in facts["pools"].items():
            body[name] = {"ready": str(pool["ready"]), "pending": str(pool["wanted"] - pool["ready"])}
        return ok(body, status=202)
    body["message"] = f"The request was {req.status}: {req.status_reason}".rstrip(": ")
    return ok(body)


def _ondemand_delete(request: HttpRequest, request_id: str) -> HttpResponse:
    req = ondemand.get_request_for(request.user, request_id)
    if req.is_pending or req.status == OnDemandRequest.Status.READY:
        ondemand.cancel(user=request.user, request_id=request_id)
    return ok()


ondemand_collection = api_view()({"POST": _ondemand_body})


def ondemand_item(request: HttpRequest, name: str) -> HttpResponse:
    """/ondemandvm/<x>: POST requests VMs of the pools in x; GET/DELETE act on request x."""
    if request.method == "POST":
        return _ondemand_pools(request, pools=name)
    return _ondemand_request(request, request_id=name)


_ondemand_pools = api_view()({"POST": _ondemand_path})
_ondemand_request = api_view()({"GET": _ondemand_status, "DELETE": _ondemand_delete})
ondemand_item.login_required = False  # type: ignore[attr-defined]
ondemand_item.csrf_exempt = True  # type: ignore[attr-defined]


# --- tokens -------------------------------------------------------------------------


def _token_info(token: ApiToken) -> dict:
    return {
        "name": token.name,
        "created": token.created.isoformat(),
        "last": token.last_used_at.isoformat() if token.last_used_at else "",
        "expires": token.expires_at.isoformat() if token.expires_at else "",
    }


def _token_create(request: HttpRequest) -> HttpResponse:
    body = json_body(request, required=False)
    name = body.get("name", "vmpooler") if isinstance(body, dict) else "vmpooler"
    _, raw = tokens.create_token(user=request.user, name=str(name))
    return ok({"token": raw})


def _token_list(request: HttpRequest) -> HttpResponse:
    # vmpooler keys this by token; we only keep hashes, so by each token's prefix.
    mine = ApiToken.objects.usable().filter(user=request.user)
    return JsonResponse({f"{t.prefix}…": _token_info(t) for t in mine})


token_collection = api_view(auth_by="basic")({"POST": _token_create, "GET": _token_list})


def _token_status(request: HttpRequest, raw: str) -> HttpResponse:
    # Knowing the token is the credential here, as in vmpooler (vmfloaty sends no other).
    token = tokens.authenticate(raw)
    if token is None:
        raise ApiError("No such token.", 404)
    running = Lease.objects.active().filter(user=token.user).values_list("vm__name", flat=True)
    return JsonResponse({raw: {"user": token.user.get_username(), **_token_info(token),
                                   "vms": {"running": list(running)}}})


def _token_delete(request: HttpRequest, raw: str) -> HttpResponse:
    if auth.basic_user(request) is None:
        return auth.basic_refusal(request)
    tokens.revoke_token(user=request.user, token=tokens.find_token(raw))
    return ok()


token_item = api_view(auth_by="handler")({"GET": _token_status, "DELETE": _token_delete})


# --- status and statistics ------------------------------------------------------------


def _status(request: HttpRequest) -> HttpResponse:
    pools = list(pools_with_counts())
    ready = sum(p.ready_count for p in pools)
    pending = sum(p.booting_count for p in pools)
    running = sum(p.leased_count for p in pools)
    total = sum(p.size for p in pools)
    empty = [p.name for p in pools if p.enabled and p.size and not p.ready_count]
    durations = _durations()
    return ok({
        "capacity": {"current": ready, "total": total, "percent": round(100 * ready / total, 1) if total else 0},
        "queue": {"pending": pending, "cloning": VM.objects.filter(state=VMState.CLONING).count(),
                  "booting": VM.objects.filter(state=VMState.BOOTING).count(), "ready": ready,
                  "running": running, "completed": VM.objects.filter(state=VMState.DESTROYING).count(),
                  "total": ready + pending + running},
        "boot": {"duration": durations},
        "pools": {p.name: {"ready": p.ready_count, "running": p.leased_count, "pending": p.booting_count,
                           "max": p.size, "alias": []} for p in pools},
        "status": {"ok": not empty, "message": "Battle station fully armed and operational."
                   if not empty else f"Empty pools: {', '.join(empty)}", "empty": empty},
    })


def _durations() -> dict:
    """Seconds from clone start to ready, over VMs that became ready in the last day."""
    since = timezone.now() - timedelta(days=1)
    agg = (VM.objects.filter(ready_at__gte=since)
           .annotate(d=F("ready_at") - F("created_at"))
           .aggregate(avg=Avg("d"), min=Min("d"), max=Max("d"), total=Sum("d"), count=Count("pk")))
    secs = {k: round(agg[k].total_seconds(), 2) if agg[k] else 0 for k in ("avg", "min", "max", "total")}
    return {**secs, "count": agg["count"]}


def _summary(request: HttpRequest) -> HttpResponse:
    today = timezone.now().date()
    clones = VM.objects.filter(created_at__date=today).count()
    boots = VM.objects.filter(ready_at__date=today).count()
    durations = _durations()
    return ok({
        "boot": {"duration": durations, "count": {"total": boots}},
        "clone": {"count": {"total": clones}},
        "tag": {},
        "daily": [{"date": today.isoformat(), "boot": {"count": {"total": boots}},
                   "clone": {"count": {"total": clones}}, "tag": {}}],
    })


def _poolstat(request: HttpRequest) -> HttpResponse:
    names = [n for n in request.GET.get("pool", "").split(",") if n]
    pools = pools_with_counts()
    if names:
        pools = pools.filter(name__in=names)
    return ok({"pools": {p.name: {"ready": p.ready_count, "max": p.size, "alias": []} for p in pools}})


def _totalrunning(request: HttpRequest) -> HttpResponse:
    return ok({"running": Lease.objects.active().count()})


def _config(request: HttpRequest) -> HttpResponse:
    # Names and sizes only: no vCenter, no credentials (vmpooler's /full_config leaked them).
    pools = pools_with_counts()
    return ok({"pool_configuration": [{
        "name": p.name, "template": p.template.name, "size": p.size, "clone_target": p.cluster.name,
        "enabled": p.enabled, "template_ready": p.template.status == "ready",
        "lease_lifetime_hours": _hours(p.lease_lifetime), "lease_max_lifetime_hours": _hours(p.lease_max_lifetime),
    } for p in pools], "status": {"ok": True}})


def _config_poolsize(request: HttpRequest) -> HttpResponse:
    body = json_body(request)
    if not isinstance(body, dict) or not body:
        raise ApiError('Send an object of pool: size, e.g. {"debian-12": "5"}.')
    sizes = {str(k): _count(v, str(k)[:64]) for k, v in body.items()}
    pools = {p.name: p.pk for p in Pool.objects.filter(name__in=sizes)}
    unknown = sorted(set(sizes) - set(pools))
    if unknown:
        raise ApiError(f"No such pool: {', '.join(unknown)}.", 404)
    changed = [api_services.set_pool_size(pool_id=pools[n], size=s) for n, s in sizes.items()]
    return ok(status=201 if any(changed) else 200)


def _pool_map(request: HttpRequest, example: str) -> dict[str, str]:
    body = json_body(request)
    if not isinstance(body, dict) or not body or not all(isinstance(v, str) and v for v in body.values()):
        raise ApiError(f"Send an object of pool: {example}.")
    pools = {p.name: p.pk for p in Pool.objects.filter(name__in=[str(k) for k in body])}
    unknown = sorted(set(map(str, body)) - set(pools))
    if unknown:
        raise ApiError(f"No such pool: {', '.join(unknown)}.", 404)
    return {pools[str(k)]: v for k, v in body.items()}


def _config_pooltemplate(request: HttpRequest) -> HttpResponse:
    # vmpooler takes a template path ("dir/tmpl"); ours are named, so the last part is the name.
    changed = [api_services.set_pool_target(pool_id=pk, template_name=v.rsplit("/", 1)[-1])
               for pk, v in _pool_map(request, '"template-name"').items()]
    return ok(status=201 if any(changed) else 200)


def _config_clonetarget(request: HttpRequest) -> HttpResponse:
    changed = [api_services.set_pool_target(pool_id=pk, cluster_name=v)
               for pk, v in _pool_map(request, '"cluster-name"').items()]
    return ok(status=201 if any(changed) else 200)


def _pool_id(name: str) -> int:
    pool_id = Pool.objects.filter(name=name).values_list("pk", flat=True).first()
    if pool_id is None:
        raise ApiError(f"No such pool: {name[:64]}.", 404)
    return pool_id


def _undo_poolsize(request: HttpRequest, pool: str) -> HttpResponse:
    original, current = api_services.undo_override(pool_id=_pool_id(pool), field=PoolOverride.Field.SIZE)
    return ok({"pool_size_before_overrides": original, "pool_size_before_reset": current})


def _undo_pooltemplate(request: HttpRequest, pool: str) -> HttpResponse:
    original, current = api_services.undo_override(pool_id=_pool_id(pool), field=PoolOverride.Field.TEMPLATE)
    return ok({"template_before_overrides": original, "template_before_reset": current})


def _poolreset(request: HttpRequest) -> HttpResponse:
    body = json_body(request)
    if not isinstance(body, dict) or not body:
        raise ApiError('Send an object naming the pools to reset, e.g. {"debian-12": "1"}.')
    ids = [_pool_id(str(name)) for name in body]
    for pool_id in ids:
        api_services.reset_pool(pool_id=pool_id)
    return ok(status=201)


status = api_view()({"GET": _status})
summary = api_view()({"GET": _summary})
poolstat = api_view()({"GET": _poolstat})
totalrunning = api_view()({"GET": _totalrunning})
config = api_view()({"GET": _config})
config_poolsize = api_view(admin=True)({"POST": _config_poolsize})
config_pooltemplate = api_view(admin=True)({"POST": _config_pooltemplate})
config_clonetarget = api_view(admin=True)({"POST": _config_clonetarget})
config_poolsize_undo = api_view(admin=True)({"DELETE": _undo_poolsize})
config_pooltemplate_undo = api_view(admin=True)({"DELETE": _undo_pooltemplate})
poolreset = api_view(admin=True)({"POST": _poolreset})
