"""vmpooler's /ondemandvm routes: request VMs made for the caller, poll and cancel the request."""

from __future__ import annotations

from collections import Counter

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from apps.api.decorators import api_view
from apps.api.http import ApiError, json_body, ok
from apps.api.vmpooler._common import (
    _api_lifetime,
    _fqdn,
    _names_in,
    _pick,
    _wanted_in,
)
from apps.leases import ondemand
from apps.leases.models import OnDemandRequest
from apps.pools.models import Pool


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
