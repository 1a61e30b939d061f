"""Every page and API route at scale: server time and SQL queries per request.

    .venv/bin/python bench/pages.py [--runs 20] [--only SUBSTRING] [--keep]

Creates its own database (``bench_pages`` on the server of DATABASE_URL, default the local
PostgreSQL of the tests; dropped and made again unless ``--keep`` finds it seeded), migrates
it and seeds, in bulk SQL: 100 pools over 4 clusters, 10,000 VMs in every state, ~3,000
active leases, 50 hosts with an hour of load samples, ~11,600 inventory VMs, 50,000 jobs,
200,000 state changes and 1,000,000 audit events over 90 days.

Then requests every GET route of the URL conf (as an admin and as an engineer; the list
pages with their filters, cursors and HTMX partials) through Django's test client, in this
process: one warm-up request that counts SQL queries, then ``--runs`` timed ones. It prints
p50/p95 per route beside the 100 ms target and as a multiple of /healthz measured in the
same run (the cost of the middleware and nothing else), the median CPU time this process spent
on it (its own work, which waiting for a busy machine does not lengthen; PostgreSQL's is not
in it), then the worst routes and the load average the run saw.

Non-interactive; Redis is the one of REDIS_URL (sessions, rate limits, queue pages).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BENCH_DB = "bench_pages"
TARGET_MS = 100.0
AUDIT_ROWS = 1_000_000


def prepare_database(*, keep: bool) -> bool:
    """Point Django at a database of our own, made afresh unless kept; True if it must be seeded."""
    import psycopg

    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/vmportal")
    parts = urlsplit(base)
    if parts.scheme not in ("postgres", "postgresql"):
        sys.exit(f"bench needs PostgreSQL; DATABASE_URL is {parts.scheme}://...")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    seeded = False
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB]).fetchone()
        if exists and keep:
            seeded = True
        else:
            conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{BENCH_DB}"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    # The limiter stays on (its Redis round trip is part of every API call), but high enough
    # that a thousand requests from one address in a minute are all answered.
    os.environ.setdefault("VMPORTAL_API_RATE_LIMIT_PER_IP", "1000000")
    os.environ.setdefault("VMPORTAL_API_RATE_LIMIT_PER_TOKEN", "1000000")

    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    if seeded:
        from apps.audit.models import AuditEvent

        seeded = AuditEvent.objects.filter(pk__gte=AUDIT_ROWS).exists()
    return not seeded


def seed() -> None:
    """The data set of issue 14, in bulk SQL: under a minute on a laptop."""
    from django.conf import settings
    from django.contrib.auth.models import Group, User
    from django.db import connection, transaction

    from apps.inventory.models import Cluster, Datacenter, Folder, Host, VCenter
    from apps.pools.models import Pool, Template, TemplateCopy, TemplateStatus

    started = time.perf_counter()
    with transaction.atomic():
        admin = User.objects.create_user("admin", is_staff=True, is_superuser=True)  # force_login: no password
        group, _ = Group.objects.get_or_create(name=settings.VMPORTAL_ADMIN_GROUP)
        admin.groups.add(group)
        User.objects.create_user("engineer")
        User.objects.bulk_create([User(username=f"user{i:03d}") for i in range(300)])
        vc = VCenter.objects.create(name="vc1", host="127.0.0.1:1", username="u",
                                    status=VCenter.Status.REACHABLE)
        dc = Datacenter.objects.create(vcenter=vc, moid="datacenter-2", name="DC0")
        clusters = [Cluster.objects.create(vcenter=vc, datacenter=dc, moid=f"domain-c{i}", name=f"C{i}")
                    for i in range(4)]
        folder = Folder.objects.create(vcenter=vc, datacenter=dc, moid="group-v1", name="vmportal",
                                       path="DC0/vm/vmportal")
        Host.objects.bulk_create([
            Host(vcenter=vc, datacenter=dc, cluster=clusters[i % 4], moid=f"host-{i}", name=f"esx{i:02d}.example",
                 cpu_capacity_mhz=40_000, memory_capacity_mb=262_144, cpu_usage_mhz=10_000 + 300 * i,
                 memory_usage_mb=100_000 + 1000 * i)
            for i in range(50)
        ])
        templates = [Template.objects.create(vcenter=vc, name=f"tmpl-{i}", os_name="Debian 12",
                                             status=TemplateStatus.READY) for i in range(10)]
        TemplateCopy.objects.bulk_create([
            TemplateCopy(template=t, cluster=c, moid=f"vm-t{t.pk}-{c.pk}", status=TemplateStatus.READY, progress=100)
            for t in templates for c in clusters
        ])
        Pool.objects.bulk_create([
            Pool(name=f"pool-{i:03d}", template=templates[i % 10], cluster=clusters[i % 4], folder=folder, size=50)
            for i in range(100)
        ])
    sql = [
        # 100 VMs per pool: 30 leased, 50 ready, 5 cloning, 3 booting, 2 failed, 10 destroyed.
        """INSERT INTO pools_vm (vcenter_id, pool_id, template_id, cluster_id, host_id, name, state, state_reason,
               state_changed_at, moid, instance_uuid, ip_address, hostname, tries, on_demand, created_at, ready_at,
               destroyed_at, move_note)
           SELECT (SELECT id FROM inventory_vcenter LIMIT 1), p.id, p.template_id, p.cluster_id,
                  (SELECT min(h.id) FROM inventory_host h) + (p.id * 7 + j) % 50,
                  p.name || '-' || lpad(j::text, 3, '0'),
                  CASE WHEN j < 30 THEN 'leased' WHEN j < 80 THEN 'ready' WHEN j < 85 THEN 'cloning'
                       WHEN j < 88 THEN 'booting' WHEN j < 90 THEN 'failed' ELSE 'destroyed' END,
                  CASE WHEN j BETWEEN 88 AND 89 THEN 'clone failed: disk full' ELSE '' END,
                  now() - j * interval '1 minute', 'vm-' || p.id || '-' || j, md5(p.id || '-' || j), '10.0.' || p.id
                  || '.' || j, p.name || '-' || j || '.lab', 0, false, now() - interval '1 day' + j * interval '1 s',
                  CASE WHEN j < 80 THEN now() - interval '20 hours' + j * interval '1 s' END,
                  CASE WHEN j >= 90 THEN now() - interval '1 hour' END, ''
           FROM pools_pool p CROSS JOIN generate_series(0, 99) j""",
        # Active leases of the leased VMs, spread over 300 users (the engineer holds 10), and
        # ended leases of the destroyed ones.
        """INSERT INTO leases_lease (vm_id, pool_id, user_id, started_at, expires_at, ended_at, end_reason, note, tags)
           SELECT v.id, v.pool_id,
                  CASE WHEN row_number() OVER (ORDER BY v.id) <= 10 THEN (SELECT id FROM auth_user
                       WHERE username = 'engineer') ELSE (SELECT min(id) FROM auth_user WHERE username LIKE 'user%')
                       + v.id % 300 END,
                  now() - interval '3 hours', now() + (v.id % 48) * interval '1 hour',
                  CASE WHEN v.state = 'destroyed' THEN now() - interval '1 hour' END,
                  CASE WHEN v.state = 'destroyed' THEN 'returned' ELSE '' END, '', '{}'::jsonb
           FROM pools_vm v WHERE v.state IN ('leased', 'destroyed')""",
        """INSERT INTO inventory_inventoryvm (vcenter_id, datacenter_id, folder_id, host_id, moid, name, synced_at,
               path, power_state, is_template, tools_status, guest_ip, guest_hostname, instance_uuid, marker)
           SELECT v.vcenter_id, (SELECT id FROM inventory_datacenter LIMIT 1),
                  (SELECT id FROM inventory_folder LIMIT 1), v.host_id, v.moid, v.name, now(),
                  'DC0/vm/vmportal/' || v.name, 'poweredOn', false, 'toolsOk',
                  v.ip_address, v.hostname, v.instance_uuid, 'vmportal:' || v.id
           FROM pools_vm v WHERE v.state <> 'destroyed'
           UNION ALL
           SELECT (SELECT id FROM inventory_vcenter LIMIT 1), (SELECT id FROM inventory_datacenter LIMIT 1),
                  (SELECT id FROM inventory_folder LIMIT 1), NULL, 'vm-stray-' || i, 'stray-' || lpad(i::text, 4, '0'),
                  now(), 'DC0/vm/vmportal/stray-' || i, 'poweredOff', false, '', '', '', md5('s' || i), ''
           FROM generate_series(1, 2600) i""",
        # An hour of samples every 30 s for 49 hosts (one reports no stats: unknown, never zero).
        """INSERT INTO inventory_hostloadsample (host_id, at, cpu_usage_mhz, memory_usage_mb)
           SELECT h.id, now() - s * interval '30 s', 8000 + (h.id * 37 + s * 11) % 20000,
                  90000 + (h.id * 53 + s * 17) % 100000
           FROM inventory_host h CROSS JOIN generate_series(0, 120) s WHERE h.name <> 'esx49.example'""",
        """INSERT INTO jobs_job (kind, queue, args, status, rq_id, object_type, object_id, attempt, created_at,
               started_at, finished_at, error, log)
           SELECT (ARRAY['clone', 'destroy', 'reconcile', 'purge', 'prepare'])[1 + i % 5], 'clone',
                  jsonb_build_object('vm_id', i), CASE WHEN i % 97 = 0 THEN 'failed' WHEN i > 49980 THEN 'queued'
                  ELSE 'succeeded' END, md5(i::text), 'pools.vm', (i % 10000)::text, 1,
                  now() - (50000 - i) * interval '2 min', now() - (50000 - i) * interval '2 min',
                  now() - (50000 - i) * interval '2 min' + interval '20 s', '', 'cloned\nbooted\n'
           FROM generate_series(1, 50000) i""",
        """INSERT INTO core_statechange (at, model, object_id, field, old, new, reason, actor_name, request_id)
           SELECT now() - (200000 - i) * interval '20 s', 'pools.vm', (SELECT min(id) FROM pools_vm) + i % 10000,
                  'state', 'cloning', 'booting', '', 'system', ''
           FROM generate_series(1, 200000) i""",
        # 1M events over 90 days, oldest first, so ids follow time as they do in use.
        f"""INSERT INTO audit_auditevent (at, actor_id, actor_name, action, target_type, target_id, target_repr,
               pool_id, before, after, message, request_id)
           SELECT now() - interval '90 days' + i * (interval '90 days' / {AUDIT_ROWS}),
                  NULL, CASE WHEN i % 83333 = 0 THEN 'auditor' WHEN i % 3 = 0 THEN 'system'
                             ELSE 'user' || lpad((i % 300)::text, 3, '0') END,
                  (ARRAY['lease.checkout', 'lease.return', 'lease.extend', 'vm.clone', 'vm.destroy', 'pool.reconfigure',
                         'lease.expire', 'vm.ready'])[1 + i % 8],
                  'pools.vm', (i % 10000)::text, 'pool-' || lpad((i % 100)::text, 3, '0') || '-' || (i % 100),
                  (SELECT min(id) FROM pools_pool) + i % 100,
                  CASE WHEN i % 8 = 5 THEN jsonb_build_object('size', 40) END,
                  CASE WHEN i % 8 = 5 THEN jsonb_build_object('size', 50) END,
                  CASE WHEN i % 8 = 3 THEN 'clone of pool-' || (i % 100) || ' took ' || (i % 90) || ' s' ELSE '' END,
                  md5(i::text)
           FROM generate_series(1, {AUDIT_ROWS}) i""",  # noqa: S608 - a constant of ours
        "ANALYZE",
    ]
    with connection.cursor() as cursor:
        for statement in sql:
            cursor.execute(statement)
    from apps.api import tokens
    from apps.leases.models import OnDemandRequest

    engineer = User.objects.get(username="engineer")
    OnDemandRequest.objects.bulk_create([
        OnDemandRequest(request_id=f"req-{i}", user=engineer if i < 5 else admin, wanted={"pool-001": 1},
                        status=OnDemandRequest.Status.READY if i % 2 else OnDemandRequest.Status.FAILED)
        for i in range(200)
    ])
    tokens.create_token(user=admin, name="bench")
    print(f"seeded in {time.perf_counter() - started:.1f} s")


# -- routes -------------------------------------------------------------------------------


def _walk(patterns, prefix=()):
    from django.urls import URLPattern, URLResolver

    for p in patterns:
        if isinstance(p, URLResolver):
            yield from _walk(p.url_patterns, (*prefix, p.pattern))
        elif isinstance(p, URLPattern):
            yield (*prefix, p.pattern)


# Django admin: its index, changelists and the object pages of the big tables are what people
# open; add/delete/history pages of every model would only lengthen the run.
ADMIN_KEEP = re.compile(r"^/admin/(?:[a-z_]+/[a-z_]+/(?:1/change/)?)?$")
SKIP = ("/accounts/logout/", "/oidc/", "/admin/logout/", "/admin/password_change/", "/admin/login/",
        "/accounts/login/", "/admin/r/", "/admin/jsi18n/")


def every_path(values: dict[str, object]) -> list[str]:
    """One concrete path per URL pattern, with real ids (as tests/test_redis_down.py)."""
    from django.urls import get_resolver
    from django.urls.resolvers import RoutePattern

    paths = set()
    for parts in _walk(get_resolver().url_patterns):
        path = ""
        for part in parts:
            text = str(part)
            if isinstance(part, RoutePattern):
                text = re.sub(r"<(?:(\w+):)?(\w+)>", lambda m: str(values.get(m.group(2), "1")), text)
            else:
                if "(?P" in text:
                    continue
                text = text.lstrip("^").replace("/?$", "/").rstrip("$")
            path += text
        paths.add("/" + path)
    kept = []
    for path in sorted(paths):
        if path.startswith(SKIP):
            continue
        if path.startswith("/admin/") and not ADMIN_KEEP.match(path):
            continue
        kept.append(path)
    return kept


def variants(values: dict[str, object]) -> list[tuple[str, dict[str, str]]]:
    """The list pages as people and dashboards use them: filters, later pages, HTMX polls."""
    from django.utils import timezone

    from apps.audit import selectors as audit
    from apps.audit.models import AuditEvent

    tenth = AuditEvent.objects.order_by("-at", "-id")[50_000]
    hx = {"HTTP_HX_REQUEST": "true"}
    pool_id = values["pool_id"]
    return [
        ("/manage/audit/?actor=user007", {}),
        ("/manage/audit/?action=lease.", {}),
        (f"/manage/audit/?pool={pool_id}", {}),
        ("/manage/audit/?since=2020-01-01&until=2100-01-01", {}),
        ("/manage/audit/?q=took+73", {}),
        ("/manage/audit/?q=user007", {}),
        (f"/manage/audit/?after={audit.encode_cursor(tenth)}", {}),
        (f"/manage/audit/?actor=user007&after={audit.encode_cursor(tenth)}", hx),
        ("/manage/audit/", hx),
        ("/manage/audit/export.csv?actor=user007", {}),
        # A filter with a column sort: a rare actor (12 events), a common one, a pool, an
        # action prefix, today.
        ("/manage/audit/?actor=auditor&sort=action", {}),
        ("/manage/audit/?actor=user007&sort=-target", {}),
        (f"/manage/audit/?pool={pool_id}&sort=action", {}),
        ("/manage/audit/?action=pool.&sort=actor", {}),
        (f"/manage/audit/?since={timezone.localdate().isoformat()}&sort=target", {}),
        ("/manage/", hx),
        ("/manage/health/", hx),
        ("/manage/hosts/", hx),
        ("/manage/templates/", hx),
        (f"/manage/pools/{pool_id}/", hx),
        ("/", hx),
        ("/leases/", hx),
        ("/api/v1/leases?all=true", {}),
        ("/api/v3/summary", {}),
        ("/admin/audit/auditevent/?at__year=2026", {}),
        ("/admin/audit/auditevent/?q=user007", {}),
        ("/admin/pools/vm/?state__exact=ready", {}),
        ("/admin/pools/vm/?q=pool-042", {}),
        ("/admin/leases/lease/?q=user007", {}),
    ]


def _consume(response) -> None:
    """Read what a client waits for: the whole body, or a stream's header and first data row."""
    if response.streaming:
        chunks = iter(response.streaming_content)
        for _ in range(2):
            next(chunks, None)
        response.close()
    else:
        response.content  # noqa: B018 - rendered already; touching it is what a client gets


def measure(client, path: str, headers: dict[str, str], runs: int) -> dict:
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    reset_queries()
    with CaptureQueriesContext(connection) as queries:
        response = client.get(path, **headers)
        _consume(response)
    # Now: the log is read lazily, and every later request clears it (request_started).
    count = len(queries)
    status = response.status_code
    timings, cpu = [], []
    # A route already slower than a second gets fewer runs: its p95 is no closer to target.
    for _ in range(runs if status != 405 else 0):
        started, cpu_started = time.perf_counter(), time.process_time()
        _consume(client.get(path, **headers))
        timings.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - cpu_started) * 1000)
        if timings[0] > 1000 and len(timings) >= 5:
            break
    return {"status": status, "queries": count, "timings": timings, "cpu": cpu}


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--only", default="", help="time only routes containing this")
    parser.add_argument("--keep", action="store_true", help="reuse an already seeded bench_pages database")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)

    if prepare_database(keep=args.keep):
        seed()

    from django.conf import settings
    from django.contrib.auth.models import User
    from django.test import Client

    from apps.api.models import ApiToken
    from apps.api.tokens import create_token
    from apps.audit.models import AuditEvent
    from apps.leases.models import Lease, OnDemandRequest
    from apps.pools.models import Pool

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    admin = User.objects.get(username="admin")
    engineer = User.objects.get(username="engineer")
    pool = Pool.objects.get(name="pool-042")
    lease = Lease.objects.active().filter(user=engineer).order_by("pk").first()
    values = {
        "pool_id": pool.pk, "pool_name": pool.name, "pool": pool.name, "lease_id": lease.pk, "vm_id": lease.vm_id,
        "name": lease.vm.name, "template_id": pool.template_id, "event_id": AuditEvent.objects.order_by("-pk")
        .values_list("pk", flat=True)[500], "request_id": OnDemandRequest.objects.filter(user=engineer).first()
        .request_id, "queue_index": 0, "object_id": 1, "id": engineer.pk, "size": "10", "snapshot": "s1",
        "range_id": 1, "build_id": 1, "key_id": 1, "token_id": ApiToken.objects.first().pk, "route": "pool",
        "key": "pool-042", "raw": "x" * 20, "content_type_id": 1, "rest": "nothing-here",
    }
    plain = [(p, {}) for p in every_path(values)]
    routes = [r for r in [*plain, *variants(values)] if args.only in r[0]]

    results = []
    healthz = {}
    load_before = os.getloadavg()
    for user in (admin, engineer):
        client = Client(raise_request_exception=False)
        client.force_login(user)
        raw = create_token(user=user, name="bench-run")[1]
        auth = {"HTTP_X_AUTH_TOKEN": raw, "HTTP_AUTHORIZATION": f"Bearer {raw}"}
        base = measure(client, "/healthz", {}, args.runs)
        healthz[user.username] = p95(base["timings"])
        for path, headers in routes:
            hdrs = {**headers, **(auth if path.startswith(("/api/", "/dashboard/")) else {})}
            r = measure(client, path, hdrs, args.runs)
            if r["status"] == 405 or not r["timings"]:
                continue
            label = path + ("  [HX]" if "HTTP_HX_REQUEST" in headers else "")
            results.append({"route": label, "user": user.username, **r,
                            "p50": statistics.median(r["timings"]), "p95": p95(r["timings"]),
                            "cpu50": statistics.median(r["cpu"])})

    print(f"\n/healthz p95: admin {healthz['admin']:.1f} ms, engineer {healthz['engineer']:.1f} ms "
          f"(the ratio column is p95 / this)")
    header = (f"{'route':<72} {'user':<8} {'st':>3} {'SQL':>4} {'p50 ms':>8} {'p95 ms':>8} {'x hz':>6} "
              f"{'cpu ms':>7}  target")
    print(header)
    print("-" * len(header))
    for r in results:
        ok = "ok" if r["p95"] <= TARGET_MS else f"OVER {TARGET_MS:.0f} ms"
        print(f"{r['route'][:72]:<72} {r['user'][:8]:<8} {r['status']:>3} {r['queries']:>4} {r['p50']:>8.1f} "
              f"{r['p95']:>8.1f} {r['p95'] / healthz[r['user']]:>6.1f} {r['cpu50']:>7.1f}  {ok}")
    worst = sorted(results, key=lambda r: r["p95"], reverse=True)
    over = [r for r in results if r["p95"] > TARGET_MS]
    print(f"\n{len(results) - len(over)} of {len(results)} route/user pairs at p95 <= {TARGET_MS:.0f} ms; "
          f"worst {args.top}:")
    for r in worst[: args.top]:
        print(f"  {r['p95']:>8.1f} ms p95  {r['cpu50']:>6.1f} ms cpu  {r['queries']:>4} SQL  {r['user']:<8} "
              f"{r['route']}")
    load_after = os.getloadavg()
    print(f"load average (1 min) {load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end, "
          f"{load_after[2]:.1f} over 15 min, on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
