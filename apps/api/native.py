"""The native JSON API (/api/v1/), with an OpenAPI 3 schema at /api/v1/openapi.json.

Thin: every write calls the same service as the pages and the vmpooler routes.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI, Query, Schema, Status
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.parser import Parser
from ninja.security import APIKeyHeader, HttpBearer
from pydantic import Field

from apps.api import auth
from apps.api.http import as_hours, is_json, strict_json, unauthorized
from apps.api.metrics import CHECKOUT_SECONDS
from apps.api.models import ApiToken
from apps.core.errors import NotFound, VmPortalError
from apps.leases import ondemand, vmtasks
from apps.leases import services as leases
from apps.leases import tags as lease_tags
from apps.leases.models import Lease, OnDemandRequest, VMTask
from apps.pools.models import VM, Pool, Template, VMState
from apps.pools.selectors import pool_named, pools_named, pools_with_counts


class XAuthToken(APIKeyHeader):
    param_name = "X-AUTH-TOKEN"

    def authenticate(self, request: HttpRequest, key: str | None) -> ApiToken | None:
        return auth.token_user(request)


class Bearer(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        return auth.token_user(request)


def _schema_access(view):
    """The schema for a token holder or a signed-in person (a GET: no CSRF concern)."""

    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        if request.user.is_authenticated or auth.token_user(request) is not None:
            return view(request, *args, **kwargs)
        return unauthorized()

    return wrapped


class NotJson(ValueError):
    pass


class StrictJsonParser(Parser):
    """A body must say it is JSON (a form or text/plain body is refused, never guessed at),
    and be JSON without NaN or Infinity, which json.loads takes and the services would get."""

    def parse_body(self, request: HttpRequest):
        if not is_json(request):
            raise NotJson("Send the body as JSON, with Content-Type: application/json.")
        return strict_json(request.body)


class _CachedSchemaAPI(NinjaAPI):
    """The OpenAPI schema built once per process (every route is registered by the time the URL
    conf is loaded: apps.firstboot.api's by vmportal/urls.py): it took ~200 ms to build for every
    /api/v1/openapi.json and /api/docs/ request."""

    def get_openapi_schema(self, *, path_prefix: str | None = None, path_params: dict | None = None):  # noqa: ANN201
        key = (path_prefix, tuple(sorted((path_params or {}).items())))
        schema = self._schemas.get(key)
        if schema is None:
            schema = self._schemas[key] = super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params)
        return schema

    _schemas: dict = {}


api = _CachedSchemaAPI(
    docs_decorator=_schema_access,
    title="vmportal API", version="1", urls_namespace="api-v1", auth=[XAuthToken(), Bearer()],
    # Swagger UI is on our own page, /api/docs/ (apps.api.views.docs), beside the vmpooler routes
    # and how to get a token, from ninja's static files; ninja's page would add a second copy.
    docs_url=None,
    description="Pools of ready vSphere VMs. Authenticate with an API token (X-AUTH-TOKEN or Bearer).",
    parser=StrictJsonParser(),
)


class ErrorOut(Schema):
    ok: bool = False
    error: str


def _error(request: HttpRequest, message: str, status: int, **extra):
    return api.create_response(request, {"ok": False, "error": message, **extra}, status=status)


@api.exception_handler(VmPortalError)
def _domain_error(request, exc: VmPortalError):
    return _error(request, str(exc), exc.http_status)


@api.exception_handler(NinjaValidationError)
def _validation_error(request, exc: NinjaValidationError):
    return _error(request, "The request is not valid.", 400, detail=exc.errors)


@api.exception_handler(AuthenticationError)
def _auth_error(request, exc):
    response = _error(request, "Authentication required: send an X-AUTH-TOKEN header.", 401)
    response["WWW-Authenticate"] = 'Bearer realm="vmportal"'
    return response


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    if isinstance(exc.__cause__, NotJson):  # ninja turns every parser error into a 400
        return _error(request, str(exc.__cause__), 415)
    if isinstance(exc.__cause__, ValueError) and exc.status_code == 400:
        return _error(request, f"The body is not valid JSON: {exc.__cause__}", 400)
    return _error(request, str(exc), exc.status_code)


@api.exception_handler(Exception)
def _unexpected(request, exc: Exception):
    logging.getLogger(__name__).exception("API request failed: %s %s", request.method, request.path)
    return _error(request, "Internal error; it has been logged.", 500)


ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut, 415: ErrorOut, 503: ErrorOut}
# A lifetime below a minute would round to nothing and silently become the pool's default.
MIN_HOURS = 1 / 60
MAX_HOURS = settings.VMPORTAL_MAX_LEASE_HOURS
MAX_VMS = settings.VMPORTAL_MAX_VMS_PER_CHECKOUT


class PoolOut(Schema):
    name: str
    description: str
    template: str
    os_name: str
    size: int
    ready: int
    booting: int
    leased: int
    enabled: bool
    health: str
    lease_lifetime_hours: float
    lease_max_lifetime_hours: float


class TemplateOut(Schema):
    name: str
    os_name: str
    description: str
    status: str


class LeaseOut(Schema):
    id: int
    vm: str
    pool: str | None
    user: str
    ip_address: str
    hostname: str
    started_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    end_reason: str
    note: str
    tags: dict[str, str]


class VMOut(Schema):
    name: str
    pool: str | None
    state: str
    ip_address: str
    hostname: str
    lease_id: int | None


class CheckoutIn(Schema):
    pools: list[str] = Field(min_length=1, max_length=MAX_VMS, description="One entry per VM; a pool may repeat.")
    lifetime_hours: float | None = Field(default=None, ge=MIN_HOURS, le=MAX_HOURS, allow_inf_nan=False)
    note: str = Field(default="", max_length=1000)
    tags: dict[str, str] = Field(default_factory=dict)


class ExtendIn(Schema):
    hours: float = Field(ge=MIN_HOURS, le=MAX_HOURS, allow_inf_nan=False)


class TagsIn(Schema):
    tags: dict[str, str]


def _pool_out(p: Pool) -> dict:
    return {
        "name": p.name, "description": p.description, "template": p.template.name, "os_name": p.template.os_name,
        "size": p.size, "ready": p.ready_count, "booting": p.booting_count, "leased": p.leased_count,
        "enabled": p.enabled, "health": p.health, "lease_lifetime_hours": as_hours(p.lease_lifetime),
        "lease_max_lifetime_hours": as_hours(p.lease_max_lifetime),
    }


def _lease_out(lease: Lease) -> dict:
    return {
        "id": lease.pk, "vm": lease.vm.name, "pool": lease.pool.name if lease.pool else None,
        "user": lease.user.get_username(), "ip_address": lease.vm.ip_address, "hostname": lease.vm.hostname,
        "started_at": lease.started_at, "expires_at": lease.expires_at, "ended_at": lease.ended_at,
        "end_reason": lease.end_reason, "note": lease.note, "tags": lease.tags,
    }


def _lease(request: HttpRequest, lease_id: int) -> Lease:
    return leases.get_lease_for(request.user, lease_id)


@api.get("/pools", response=list[PoolOut], tags=["pools"])
def list_pools(request):
    return [_pool_out(p) for p in pools_with_counts()]


@api.get("/pools/{name}", response={200: PoolOut, **ERRORS}, tags=["pools"])
def get_pool(request, name: str):
    return _pool_out(pool_named(name, pools_with_counts()))


@api.get("/templates", response=list[TemplateOut], tags=["pools"])
def list_templates(request):
    return list(Template.objects.order_by("name").values("name", "os_name", "description", "status"))


@api.get("/vms/{name}", response={200: VMOut, **ERRORS}, tags=["vms"])
def get_vm(request, name: str):
    vm = VM.objects.select_related("pool").filter(name=name).exclude(state=VMState.DESTROYED).first()
    if vm is None:
        raise NotFound(f"No such VM: {name[:80]}.")
    lease = Lease.objects.active().filter(vm=vm).first()
    return {"name": vm.name, "pool": vm.pool.name if vm.pool else None, "state": vm.state,
            "ip_address": vm.ip_address, "hostname": vm.hostname, "lease_id": lease.pk if lease else None}


# LeaseOut's fields and where each comes from (user: get_username() of the default User).
LEASE_COLUMNS = {"id": "pk", "vm": "vm__name", "pool": "pool__name", "user": "user__username",
                 "ip_address": "vm__ip_address", "hostname": "vm__hostname", "started_at": "started_at",
                 "expires_at": "expires_at", "ended_at": "ended_at", "end_reason": "end_reason", "note": "note",
                 "tags": "tags"}
LEASE_PAGE = 100
MAX_LEASE_PAGE = 1000
NEXT_PAGE = {"Link": {"description": 'The next page, as `<url>; rel="next"`; absent on the last page.',
                      "schema": {"type": "string"}}}


@api.get("/leases", response={200: list[LeaseOut], **ERRORS}, tags=["leases"],
         openapi_extra={"responses": {200: {"headers": NEXT_PAGE}}})
def list_leases(request, response: HttpResponse,
                all: bool = Query(False, description="Everyone's leases: admins only, others get their own."),  # noqa: A002, FBT001 - the query parameter's name
                limit: int = Query(LEASE_PAGE, ge=1, le=MAX_LEASE_PAGE, description="Leases per page."),
                after: int = Query(0, ge=0, description="The last lease id of the page before; 0 for the first.")):
    """Active leases, yours (or, for an admin with `all=true`, everyone's), oldest first, a page
    at a time. Pass the last lease's `id` as `after` for the next page, or follow the `Link`
    header (`rel="next"`), which is there while more remain. Ordered by id, which never changes,
    so a walk through the pages sees every lease once even while leases are extended."""
    qs = Lease.objects.active().filter(pk__gt=after).order_by("pk")
    if not (all and leases.is_admin(request.user)):
        qs = qs.filter(user=request.user)
    # The columns LeaseOut shows, not three model instances per lease: 1,000 of those took
    # ~100 ms to build. One row more than asked tells whether a next page exists, without a COUNT.
    page = [dict(zip(LEASE_COLUMNS, row, strict=True))
            for row in qs.values_list(*LEASE_COLUMNS.values())[:limit + 1]]
    if len(page) > limit:
        page = page[:limit]
        query = request.GET.copy()
        query["after"] = str(page[-1]["id"])
        query["limit"] = str(limit)
        response["Link"] = f'<{request.build_absolute_uri(request.path)}?{query.urlencode()}>; rel="next"'
    return page


def _pools_for(names: list[str]) -> list[Pool]:
    """One pool per entry of ``names`` (a name may repeat); 404 naming any unknown ones."""
    pools = pools_named(names, Pool.objects.select_related("template"))
    return [pools[n] for n in names]


def _lifetime(hours: float | None) -> timedelta | None:
    return None if hours is None else timedelta(hours=hours)


@api.post("/leases", response={201: list[LeaseOut], **ERRORS}, tags=["leases"])
def checkout(request, payload: CheckoutIn):
    pools = _pools_for(payload.pools)
    tags = lease_tags.validate_tags(payload.tags)
    with CHECKOUT_SECONDS.time():
        leased = leases.checkout(user=request.user, pools=pools, lifetime=_lifetime(payload.lifetime_hours),
                                 note=payload.note, tags=tags)
    return Status(201, [_lease_out(lease) for lease in leased])


@api.get("/leases/{lease_id}", response={200: LeaseOut, **ERRORS}, tags=["leases"])
def get_lease(request, lease_id: int):
    return _lease_out(_lease(request, lease_id))


@api.post("/leases/{lease_id}/extend", response={200: LeaseOut, **ERRORS}, tags=["leases"])
def extend_lease(request, lease_id: int, payload: ExtendIn):
    leases.extend(user=request.user, lease_id=lease_id, by=timedelta(hours=payload.hours))
    return _lease_out(_lease(request, lease_id))


@api.put("/leases/{lease_id}/tags", response={200: LeaseOut, **ERRORS}, tags=["leases"])
def tag_lease(request, lease_id: int, payload: TagsIn):
    lease_tags.tag_lease(user=request.user, lease_id=lease_id, tags=payload.tags)
    return _lease_out(_lease(request, lease_id))


@api.delete("/leases/{lease_id}", response={200: LeaseOut, **ERRORS}, tags=["leases"])
def return_lease(request, lease_id: int):
    return _lease_out(leases.return_lease(user=request.user, lease_id=lease_id))


# --- on-demand requests ------------------------------------------------------------------


class OnDemandIn(Schema):
    pools: list[str] = Field(min_length=1, max_length=MAX_VMS, description="One entry per VM; a pool may repeat.")
    request_id: str = Field(default="", max_length=64, description="Your own id for the request (optional).")
    lifetime_hours: float | None = Field(default=None, ge=MIN_HOURS, le=MAX_HOURS, allow_inf_nan=False)
    note: str = Field(default="", max_length=1000)
    tags: dict[str, str] = Field(default_factory=dict)


class OnDemandVMOut(Schema):
    name: str
    pool: str | None
    state: str
    percent: int
    task_progress: int | None


class OnDemandOut(Schema):
    request_id: str
    status: str = Field(description="queued, provisioning, ready, failed or cancelled")
    step: str = Field(description="queued, cloning, booting, ready, failed or cancelled")
    status_reason: str
    percent: int
    wanted: dict[str, int]
    vms: list[OnDemandVMOut]
    lease_ids: list[int]
    created_at: datetime
    finished_at: datetime | None


def _ondemand_out(req: OnDemandRequest, vms: list[VM] | None = None) -> dict:
    facts = ondemand.describe(req, vms)
    return {
        "request_id": req.request_id, "status": req.status, "step": facts["step"],
        "status_reason": req.status_reason, "percent": facts["percent"], "wanted": req.wanted,
        "vms": [{"name": r["vm"].name, "pool": r["vm"].pool.name if r["vm"].pool else None, "state": r["state"],
                 "percent": r["percent"], "task_progress": r["task_progress"]} for r in facts["vms"]],
        "lease_ids": ondemand.lease_ids(req, vms) if req.status == OnDemandRequest.Status.READY else [],
        "created_at": req.created_at, "finished_at": req.finished_at,
    }


@api.post("/ondemand", response={201: OnDemandOut, **ERRORS}, tags=["on-demand"])
def create_ondemand(request, payload: OnDemandIn):
    """Clone VMs for you (when pools have none ready); poll the request until it is ready."""
    pools = _pools_for(payload.pools)
    tags = lease_tags.validate_tags(payload.tags)
    req = ondemand.request_vms(user=request.user, pools=pools, request_id=payload.request_id,
                               lifetime=_lifetime(payload.lifetime_hours), note=payload.note, tags=tags)
    return Status(201, _ondemand_out(req))


@api.get("/ondemand", response=list[OnDemandOut], tags=["on-demand"])
def list_ondemand(request):
    # Every request's VMs, pools and leases in one query, not two queries per request.
    vms = Prefetch("vms", queryset=VM.objects.select_related("pool", "lease").order_by("pk"), to_attr="vm_list")
    requests = OnDemandRequest.objects.filter(user=request.user).prefetch_related(vms)[:100]
    return [_ondemand_out(r, r.vm_list) for r in requests]


@api.get("/ondemand/{request_id}", response={200: OnDemandOut, **ERRORS}, tags=["on-demand"])
def get_ondemand(request, request_id: str):
    return _ondemand_out(ondemand.get_request_for(request.user, request_id))


@api.delete("/ondemand/{request_id}", response={200: OnDemandOut, **ERRORS}, tags=["on-demand"])
def cancel_ondemand(request, request_id: str):
    """Cancel a pending request (what was made is destroyed), or return a ready one's VMs."""
    ondemand.cancel(user=request.user, request_id=request_id)
    return _ondemand_out(ondemand.get_request_for(request.user, request_id))


# --- disks and snapshots -----------------------------------------------------------------


class DiskIn(Schema):
    size_gb: int = Field(ge=1, le=vmtasks.MAX_DISK_GB)


class VMTaskOut(Schema):
    id: int
    kind: str
    disk_gb: int | None
    snapshot: str
    status: str
    error: str
    created_at: datetime
    finished_at: datetime | None


def _task_out(task: VMTask) -> dict:
    return {"id": task.pk, "kind": task.kind, "disk_gb": task.disk_gb, "snapshot": task.snapshot,
            "status": task.status, "error": task.error, "created_at": task.created_at,
            "finished_at": task.finished_at}


@api.get("/leases/{lease_id}/tasks", response={200: list[VMTaskOut], **ERRORS}, tags=["leases"])
def list_vm_tasks(request, lease_id: int):
    return [_task_out(t) for t in _lease(request, lease_id).vm_tasks.all()]


@api.post("/leases/{lease_id}/disks", response={202: VMTaskOut, **ERRORS}, tags=["leases"])
def add_disk(request, lease_id: int, payload: DiskIn):
    return Status(202, _task_out(vmtasks.add_disk(user=request.user, lease_id=lease_id, size_gb=payload.size_gb)))


@api.post("/leases/{lease_id}/snapshots", response={202: VMTaskOut, **ERRORS}, tags=["leases"])
def snapshot(request, lease_id: int):
    return Status(202, _task_out(vmtasks.snapshot(user=request.user, lease_id=lease_id)))


@api.post("/leases/{lease_id}/snapshots/{snapshot_id}/revert", response={202: VMTaskOut, **ERRORS}, tags=["leases"])
def revert(request, lease_id: int, snapshot_id: str):
    return Status(202, _task_out(vmtasks.revert(user=request.user, lease_id=lease_id, snapshot_id=snapshot_id)))
