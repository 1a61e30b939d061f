"""vmpooler v3 compatibility: the routes, request and response shapes of vmpooler's API.

vmpooler's "hostname" is our VM.name, handed out as <name>.<domain> (the pool's domain, or
VMPORTAL_API_DOMAIN). The reads vmpooler serves without a token are public here too unless
VMPORTAL_API_PUBLIC_READS is off; everything else needs a token, only a lease's owner or
an admin may change or return it, config changes need an admin, and nothing returns
credentials.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from apps.api import auth, tokens
from apps.api import services as api_services
from apps.api.decorators import api_view
from apps.api.http import ApiError, as_hours, json_body, ok, strict_int
from apps.api.metrics import CHECKOUT_SECONDS
from apps.api.models import ApiToken, PoolOverride
from apps.core.errors import VmPortalError
from apps.core.permissions import is_admin
from apps.leases import ondemand, vmtasks
from apps.leases import services as leases
from apps.leases import tags as lease_tags
from apps.leases.models import Lease, OnDemandRequest
from apps.pools.models import VM, Pool, VMState
from apps.pools.selectors import NoSuchPool, pool_named, pools_named, pools_with_counts

STATE_NAMES = {
    VMState.CLONING: "pending", VMState.BOOTING: "pending", VMState.READY: "ready", VMState.LEASED: "running",
    VMState.DESTROYING: "destroyed", VMState.DESTROYED: "destroyed", VMState.FAILED: "destroyed",
}


def _count(value: object, what: str) -> int:
    return strict_int(value, what)


def _fqdn(name: str, pool: Pool | None) -> str:
    domain = (pool.domain if pool else "") or settings.VMPORTAL_API_DOMAIN
    return f"{name}.{domain}" if domain else name


def _short(hostname: str) -> str:
    # vmpooler's hostname_shorten: clients send back the FQDN they were given.
    return hostname.split(".", 1)[0]


def _serving(names: set[str]) -> dict[str, list[Pool]]:
    """The pools behind each name: the pool of that name, else the enabled pools that have it
    as an alias; 404 naming those that are neither."""
    serving: dict[str, list[Pool]] = {p.name: [p] for p in Pool.objects.select_related("template")
                                      .filter(name__in=names)}
    aliases = names - set(serving)
    if aliases:  # a pool's own name wins over an alias (the model keeps them apart anyway)
        for pool in Pool.objects.select_related("template").filter(enabled=True).exclude(aliases=""):
            for alias in set(pool.alias_list) & aliases:
                serving.setdefault(alias, []).append(pool)
    if unknown := names - set(serving):
        raise NoSuchPool(unknown)
    return serving


def _pick(wanted: Counter, *, prefer_ready: bool) -> list[tuple[str, Pool]]:
    """One (requested name, pool) per VM wanted. An alias's pool is drawn by weight among
    those with a ready VM left (for checkouts), or among all of them."""
    serving = _serving(set(wanted))
    ready: Counter = Counter()
    shared = [p.pk for pools in serving.values() if len(pools) > 1 for p in pools]
    if prefer_ready and shared:
        ready.update(dict(VM.objects.filter(pool_id__in=shared, state=VMState.READY, on_demand=False)
                          .values_list("pool_id").annotate(n=Count("pk"))))
    picked = []
    for name, count in wanted.items():
        pools = serving[name]
        for _ in range(count):
            candidates = [p for p in pools if ready[p.pk] > 0] or pools
            # Not a secret, only a spread of load: the weighted draw of vmpooler's aliases.
            pool = random.choices(candidates, weights=[p.alias_weight for p in candidates])[0]  # noqa: S311
            ready[pool.pk] -= 1
            picked.append((name, pool))
    return picked


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
    limit = settings.VMPORTAL_MAX_VMS_PER_CHECKOUT
    if not wanted or total < 1 or total > limit or min(wanted.values()) < 1:
        raise ApiError(f"Ask for between 1 and {limit} VMs, at least one from each pool named.")
    picked = _pick(wanted, prefer_ready=True)
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
    names = _names_in(pools)
    if len(names) > settings.VMPORTAL_MAX_VMS_PER_CHECKOUT:
        raise ApiError(f"Ask for at most {settings.VMPORTAL_MAX_VMS_PER_CHECKOUT} VMs.")
    return _checkout(request, Counter(names))


def _find_vm(hostname: str) -> VM:
    hostname = _short(hostname)
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


vm_pools = api_view()({"POST": _checkout_path})
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


# --- on-demand requests ------------------------------------------------------------------


def _ondemand(request: HttpRequest, wanted: Counter, request_id: str = "") -> HttpResponse:
    total = sum(wanted.values())
    if not wanted or min(wanted.values()) < 1:
        raise ApiError("Ask for at least one VM from each pool named.")
    if total > settings.VMPORTAL_ONDEMAND_MAX_PER_REQUEST:
        raise ApiError(f"Ask for at most {settings.VMPORTAL_ONDEMAND_MAX_PER_REQUEST} VMs on demand.", 403)
    picked = _pick(wanted, prefer_ready=False)
    req = ondemand.request_vms(user=request.user, pools=[pool for _, pool in picked],
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
    if settings.VMPORTAL_API_PUBLIC_READS:
        # vmpooler's clients poll without a token: knowing the request id is enough to read it.
        req = OnDemandRequest.objects.filter(request_id=request_id).first()
        if req is None:
            raise ApiError("No such on-demand request.", 404)
    else:
        req = ondemand.get_request_for(request.user, request_id)
    facts = ondemand.describe(req)
    body: dict = {"request_id": req.request_id, "ready": req.status == OnDemandRequest.Status.READY}
    if req.status == OnDemandRequest.Status.READY:
        pools = {p.name: p for p in Pool.objects.filter(name__in=facts["pools"])}
        for name, pool in facts["pools"].items():
            body[name] = {"hostname": [_fqdn(host, pools.get(name)) for host in pool["hostnames"]]}
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
_ondemand_request = api_view(public=("GET",))({"GET": _ondemand_status, "DELETE": _ondemand_delete})
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
    # "ok" beside the entry, as vmpooler: vmfloaty treats an answer without it as an error.
    return ok({raw: {"user": token.user.get_username(), **_token_info(token), "vms": {"running": list(running)}}})


def _token_delete(request: HttpRequest, raw: str) -> HttpResponse:
    if auth.basic_user(request) is None:
        return auth.basic_refusal(request)
    tokens.revoke_token(user=request.user, token=tokens.find_token(raw))
    return ok()


token_item = api_view(auth_by="handler")({"GET": _token_status, "DELETE": _token_delete})


# --- status and statistics ------------------------------------------------------------


STATUS_VIEWS = ("capacity", "queue", "clone", "boot", "pools")


def _alias(pool: Pool) -> dict:
    # vmpooler shows "alias" only for pools that have one.
    return {"alias": pool.alias_list} if pool.alias_list else {}


def _status(request: HttpRequest) -> HttpResponse:
    views = set(request.GET["view"].split(",")) if request.GET.get("view") else set(STATUS_VIEWS)
    pools = list(pools_with_counts())
    empty = [p.name for p in pools if p.enabled and p.size and not p.ready_count]
    body: dict = {"status": {"ok": not empty, "message": f"Found {len(empty)} empty pools." if empty
                             else "Battle station fully armed and operational."}}
    if empty:
        body["status"]["empty"] = empty
    ready = sum(p.ready_count for p in pools)
    if "capacity" in views:
        total = sum(p.size for p in pools)
        body["capacity"] = {"current": ready, "total": total,
                            "percent": round(100 * ready / total, 1) if total else 0}
    if "queue" in views:
        pending = sum(p.booting_count for p in pools)
        running = sum(p.leased_count for p in pools)
        requested = sum(r.total for r in OnDemandRequest.objects.filter(
            status__in=(OnDemandRequest.Status.QUEUED, OnDemandRequest.Status.PROVISIONING)))
        body["queue"] = {"requested": requested, "pending": pending,
                         "cloning": VM.objects.filter(state=VMState.CLONING).count(),
                         "booting": VM.objects.filter(state=VMState.BOOTING).count(), "ready": ready,
                         "running": running, "completed": VM.objects.filter(state=VMState.DESTROYING).count(),
                         "total": ready + pending + running}
    today = timezone.localdate()
    for kind in ("clone", "boot"):
        if kind in views:
            body[kind] = _task_metrics(kind, today, today)[today]
    if "pools" in views:
        last_boot = dict(VM.objects.filter(ready_at__isnull=False).values_list("pool_id")
                         .annotate(last=Max("ready_at")))
        body["pools"] = {p.name: {"ready": p.ready_count, "running": p.leased_count, "pending": p.booting_count,
                                  "max": p.size, "lastBoot": last_boot[p.pk].isoformat() if p.pk in last_boot else "",
                                  **_alias(p)} for p in pools}
    return ok(body)


def _durations(seconds: list[float]) -> dict:
    total = round(sum(seconds), 2)
    return {"average": round(total / len(seconds), 1) if seconds else 0, "min": round(min(seconds, default=0), 2),
            "max": round(max(seconds, default=0), 2), "total": total}


def _task_times(kind: str, start: date, end: date) -> dict[date, dict[str, list]]:
    """Per day and pool, the seconds each clone or boot took (None: not ready yet). A clone
    counts the day it started, a boot the day its VM became ready; both last from clone start
    to ready, since vmportal does not time the clone apart from the boot."""
    field = "created_at" if kind == "clone" else "ready_at"
    days: dict[date, dict[str, list]] = {start + timedelta(days=n): defaultdict(list)
                                         for n in range((end - start).days + 1)}
    rows = (VM.objects.filter(**{f"{field}__date__gte": start, f"{field}__date__lte": end})
            .values_list(field, "created_at", "ready_at", "pool__name"))
    for at, created, ready_at, pool in rows:
        day = days.get(timezone.localdate(at))
        if day is not None:
            day[pool or ""].append((ready_at - created).total_seconds() if ready_at else None)
    return days


def _metrics(by_pool: dict[str, list]) -> dict:
    """vmpooler's task metrics: {count: {total, pool}, duration: {average, min, max, total, pool}}."""
    every = [t for times in by_pool.values() for t in times]
    named = {p: t for p, t in by_pool.items() if p}
    return {"count": {"total": len(every), "pool": {p: {"total": len(t)} for p, t in named.items()}},
            "duration": {**_durations([t for t in every if t is not None]),
                         "pool": {p: _durations([x for x in t if x is not None]) for p, t in named.items()}}}


def _task_metrics(kind: str, start: date, end: date) -> dict[date, dict]:
    return {day: _metrics(by_pool) for day, by_pool in _task_times(kind, start, end).items()}


def _tag_metrics(start: date, end: date, only: str | None) -> dict[date, dict]:
    """vmpooler's tag summary: per day, per tag name, how many leases carried each value."""
    days: dict[date, dict] = {start + timedelta(days=n): {} for n in range((end - start).days + 1)}
    for started, tags in Lease.objects.filter(started_at__date__gte=start, started_at__date__lte=end) \
            .exclude(tags={}).values_list("started_at", "tags"):
        day = days.get(timezone.localdate(started))
        if day is None:
            continue
        for key, value in tags.items():
            if only and key != only:
                continue
            counts = day.setdefault(key, {"total": 0})
            counts[str(value)] = counts.get(str(value), 0) + 1
            counts["total"] += 1
    return days


MAX_SUMMARY_DAYS = 366
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _date_range(request: HttpRequest) -> tuple[date, date]:
    today = timezone.localdate()
    parsed = []
    for name in ("from", "to"):
        raw = request.GET.get(name) or today.isoformat()
        try:
            if not DATE.match(raw):
                raise ValueError
            parsed.append(datetime.strptime(raw, "%Y-%m-%d").date())  # noqa: DTZ007 - a calendar day
        except ValueError:
            raise ApiError(f"Invalid date format {raw[:20]!r} for {name}, must match YYYY-MM-DD.") from None
    start, end = parsed
    if end < start:
        raise ApiError("Date range is invalid, 'to' cannot come before 'from'.")
    if start > today:
        raise ApiError("Date range is invalid, 'from' must be in the past.")
    if (end - start).days >= MAX_SUMMARY_DAYS:
        raise ApiError(f"Ask for at most {MAX_SUMMARY_DAYS} days at a time.")
    return start, end


def _task_summary(kind: str, start: date, end: date, only: str | None = None) -> dict:
    times = _task_times(kind, start, end)
    whole: dict[str, list] = defaultdict(list)
    for by_pool in times.values():
        for pool, t in by_pool.items():
            whole[pool].extend(t)

    def pick(metrics: dict) -> dict:  # vmpooler's sub-route key: "count" or "duration"
        return {k: v for k, v in metrics.items() if not only or k == only}

    return {kind: pick(_metrics(whole)),
            "daily": [{"date": day.isoformat(), kind: pick(_metrics(by_pool))} for day, by_pool in times.items()]}


def _tag_summary(start: date, end: date, only: str | None = None) -> dict:
    per_day = _tag_metrics(start, end, only)
    total: dict = {}
    for tags in per_day.values():
        for key, counts in tags.items():
            into = total.setdefault(key, {})
            for value, n in counts.items():
                into[value] = into.get(value, 0) + n
    return {"tag": total, "daily": [{"date": day.isoformat(), "tag": tags} for day, tags in per_day.items()]}


def _summary(request: HttpRequest) -> HttpResponse:
    start, end = _date_range(request)
    boot, clone, tag = _task_summary("boot", start, end), _task_summary("clone", start, end), _tag_summary(start, end)
    daily = [{"date": b["date"], "boot": b["boot"], "clone": c["clone"], "tag": t["tag"]}
             for b, c, t in zip(boot["daily"], clone["daily"], tag["daily"], strict=True)]
    return ok({"boot": boot["boot"], "clone": clone["clone"], "tag": tag["tag"], "daily": daily})


def _summary_part(request: HttpRequest, route: str, key: str | None = None) -> HttpResponse:
    start, end = _date_range(request)
    if route in ("boot", "clone"):
        return ok(_task_summary(route, start, end, key))
    if route == "tag":
        return ok(_tag_summary(start, end, key))
    raise ApiError(f"No such summary: {route[:32]!r}; use boot, clone or tag.", 404)


def _poolstat(request: HttpRequest) -> HttpResponse:
    wanted = {n for n in request.GET.get("pool", "").split(",") if n}
    pools = pools_with_counts()
    if wanted:  # names or aliases, as vmpooler
        pools = [p for p in pools if p.name in wanted or wanted & set(p.alias_list)]
    return ok({"pools": {p.name: {"ready": p.ready_count, "max": p.size, **_alias(p)} for p in pools}})


def _dashboard_pool(request: HttpRequest) -> HttpResponse:
    body = {p.name: {"size": p.size, "ready": p.ready_count} for p in pools_with_counts()}
    if request.GET.get("history"):
        # No Graphite here: the history is the one current point, as vmpooler without one.
        for entry in body.values():
            entry["history"] = [entry["ready"]]
    return JsonResponse(body)


def _dashboard_running(request: HttpRequest) -> HttpResponse:
    body: dict = {}
    for p in pools_with_counts():
        major = p.name.split("-", 1)[0]  # vmpooler groups pools by the word before the first '-'
        body.setdefault(major, {"running": 0})["running"] += p.leased_count
    return JsonResponse(body)


def _totalrunning(request: HttpRequest) -> HttpResponse:
    return ok({"running": Lease.objects.active().count()})


def _config(request: HttpRequest) -> HttpResponse:
    # Names and sizes only: no vCenter, no credentials (vmpooler's /full_config leaked them).
    pools = pools_with_counts()
    return ok({"pool_configuration": [{
        "name": p.name, "template": p.template.name, "size": p.size, "clone_target": p.cluster.name,
        "enabled": p.enabled, "template_ready": p.template.status == "ready",
        "lease_lifetime_hours": as_hours(p.lease_lifetime), "lease_max_lifetime_hours": as_hours(p.lease_max_lifetime),
    } for p in pools], "status": {"ok": True}})


def _config_poolsize(request: HttpRequest) -> HttpResponse:
    body = json_body(request)
    if not isinstance(body, dict) or not body:
        raise ApiError('Send an object of pool: size, e.g. {"debian-12": "5"}.')
    sizes = {str(k): _count(v, str(k)[:64]) for k, v in body.items()}
    pools = {name: p.pk for name, p in pools_named(sizes).items()}
    changed = [api_services.set_pool_size(pool_id=pools[n], size=s) for n, s in sizes.items()]
    return ok(status=201 if any(changed) else 200)


def _pool_map(request: HttpRequest, example: str) -> dict[str, str]:
    body = json_body(request)
    if not isinstance(body, dict) or not body or not all(isinstance(v, str) and v for v in body.values()):
        raise ApiError(f"Send an object of pool: {example}.")
    pools = {name: p.pk for name, p in pools_named(map(str, body)).items()}
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
    return pool_named(name).pk


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


status = api_view(public=("GET",))({"GET": _status})
summary = api_view(public=("GET",))({"GET": _summary})
summary_part = api_view(public=("GET",))({"GET": _summary_part})
poolstat = api_view(public=("GET",))({"GET": _poolstat})
totalrunning = api_view(public=("GET",))({"GET": _totalrunning})
dashboard_pool = api_view(public=("GET",))({"GET": _dashboard_pool})
dashboard_running = api_view(public=("GET",))({"GET": _dashboard_running})
config = api_view()({"GET": _config})
config_poolsize = api_view(admin=True)({"POST": _config_poolsize})
config_pooltemplate = api_view(admin=True)({"POST": _config_pooltemplate})
config_clonetarget = api_view(admin=True)({"POST": _config_clonetarget})
config_poolsize_undo = api_view(admin=True)({"DELETE": _undo_poolsize})
config_pooltemplate_undo = api_view(admin=True)({"DELETE": _undo_pooltemplate})
poolreset = api_view(admin=True)({"POST": _poolreset})
