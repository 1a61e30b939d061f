"""vmpooler's /config routes: the pool configuration, an admin's size, template and clone
target overrides (and their undo), and /poolreset."""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, HttpResponse

from apps.api import services as api_services
from apps.api.decorators import api_view
from apps.api.http import ApiError, as_hours, json_body, ok
from apps.api.models import PoolOverride
from apps.api.vmpooler._common import (
    _count,
)
from apps.pools.selectors import pool_named, pools_named, pools_with_counts


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
    with transaction.atomic():  # all the sizes or, if one is refused, none
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


config = api_view()({"GET": _config})
config_poolsize = api_view(admin=True)({"POST": _config_poolsize})
config_pooltemplate = api_view(admin=True)({"POST": _config_pooltemplate})
config_clonetarget = api_view(admin=True)({"POST": _config_clonetarget})
config_poolsize_undo = api_view(admin=True)({"DELETE": _undo_poolsize})
config_pooltemplate_undo = api_view(admin=True)({"DELETE": _undo_pooltemplate})
poolreset = api_view(admin=True)({"POST": _poolreset})
