"""Prometheus /metrics.

Counts come from the database and Redis at scrape time (a custom collector), so every web
process reports the same numbers and nothing is lost on restart. Only the checkout
latency histogram is in-process, and so per worker process.

Access: an admin's API token, or a client IP inside VMPORTAL_METRICS_ALLOW_IPS (CIDRs,
for a Prometheus server that cannot hold a token).
"""

from __future__ import annotations

import contextlib
import ipaddress
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db.models import Avg, Count, F
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from apps.api import auth
from apps.api.guard import client_ip
from apps.api.http import error, unauthorized
from apps.core.permissions import is_admin
from apps.core.redis_client import rq_queue
from apps.leases.models import Lease
from apps.pools.models import VM, VMState
from apps.pools.selectors import pools_with_counts

CHECKOUT_SECONDS = Histogram(
    "vmportal_api_checkout_seconds", "Time to answer an API checkout, per worker process.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class DatabaseCollector:
    def collect(self):
        pools = GaugeMetricFamily("vmportal_pool_vms", "VMs of a pool by state.", labels=["pool", "state"])
        size = GaugeMetricFamily("vmportal_pool_size", "Ready VMs a pool is configured to keep.", labels=["pool"])
        for p in pools_with_counts():
            size.add_metric([p.name], p.size)
            pools.add_metric([p.name, "ready"], p.ready_count)
            pools.add_metric([p.name, "booting"], p.booting_count)
            pools.add_metric([p.name, "leased"], p.leased_count)
        yield pools
        yield size

        checkouts = CounterMetricFamily("vmportal_checkouts", "Leases ever started, by pool.", labels=["pool"])
        for row in Lease.objects.values("pool__name").annotate(n=Count("pk")):
            checkouts.add_metric([row["pool__name"] or ""], row["n"])
        yield checkouts

        since = timezone.now() - timedelta(hours=1)
        boot = GaugeMetricFamily("vmportal_clone_to_ready_seconds_avg",
                                 "Mean seconds from clone start to ready, VMs ready in the last hour.",
                                 labels=["pool"])
        for row in (VM.objects.filter(ready_at__gte=since).annotate(d=F("ready_at") - F("created_at"))
                    .values("pool__name").annotate(avg=Avg("d"))):
            boot.add_metric([row["pool__name"] or ""], row["avg"].total_seconds() if row["avg"] else 0)
        yield boot

        failures = GaugeMetricFamily("vmportal_vm_failures", "VMs in the failed state, by reason.",
                                     labels=["pool", "reason"])
        for row in (VM.objects.filter(state=VMState.FAILED).values("pool__name", "state_reason")
                    .annotate(n=Count("pk"))):
            failures.add_metric([row["pool__name"] or "", (row["state_reason"] or "unknown")[:80]], row["n"])
        yield failures

        queues = GaugeMetricFamily("vmportal_queue_depth", "Jobs waiting in each RQ queue.", labels=["queue"])
        for name in settings.RQ_QUEUES:
            with contextlib.suppress(RedisError):  # a scrape without queue depths beats a failed one
                queues.add_metric([name], rq_queue(name).count)
        yield queues


REGISTRY = CollectorRegistry()
REGISTRY.register(DatabaseCollector())
REGISTRY.register(CHECKOUT_SECONDS)


def _allowed_ip(request: HttpRequest) -> bool:
    try:
        ip = ipaddress.ip_address(client_ip(request))
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net, strict=False) for net in settings.VMPORTAL_METRICS_ALLOW_IPS)


@login_not_required
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not _allowed_ip(request):
        if auth.token_user(request) is None:
            return unauthorized()
        if not is_admin(request.user):
            return error("Metrics need an admin's token.", 403)
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
