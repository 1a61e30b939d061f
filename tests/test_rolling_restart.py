"""Rolling restart behind a reverse proxy: no request and no job lost.

Two web hosts (gunicorn) behind nginx with both as upstreams, two worker hosts (rqworker)
and a pool manager, on one PostgreSQL, Redis and simulator. 32 clients check out and
return VMs through nginx (the vmpooler API) while:

- web host A is reloaded gracefully (SIGHUP to the gunicorn master: new workers start, the
  old ones finish their requests and exit; the listening socket never closes), and
- worker host B is restarted: SIGTERM to its rqworker while it runs a job (RQ's warm
  shutdown finishes that job first), then a new rqworker, as systemd's restart would.

Then: no 5xx other than the API's own clear "no VM ready" 503, no connection error at the
clients or in nginx's error log, the job worker B held at SIGTERM succeeded, every Job row
succeeded and nothing is stuck, and the chaos harness's invariants hold (no VM leaked or
leased twice, no lease lost). ROLLING_SECONDS lengthens the load for a longer measurement.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import close_old_connections, connection
from django.utils import timezone

from apps.api.tokens import create_token
from apps.jobs.models import Job
from apps.vsphere.inventory import fetch_inventory
from apps.vsphere.session import Endpoint, connect
from tests.live import GUEST, make_pool, site

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "chaos"))
from invariants import table, wait_for_recovery  # noqa: E402 - the chaos harness's invariants
from load import Loop  # noqa: E402
from procs import Managed, free_port, wait_for_port  # noqa: E402

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CLIENTS = 32
POOL_SIZE = 16
LOAD_SECONDS = float(os.environ.get("ROLLING_SECONDS", "24"))
# Slow enough that a fill or destroy is in flight when the worker is told to stop.
SIM_DELAYS = "CloneVM_Task:800,Destroy_Task:300,PowerOffVM_Task:100"
ACCESS_LINE = re.compile(r"^(?P<status>\d{3}) (?P<method>\S+) (?P<uri>\S+) (?P<upstream>[^ ]*) "
                         r"(?P<upstream_status>[^ ]*)$")

NGINX_CONF = """\
{user}
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format upstreams '$status $request_method $request_uri $upstream_addr $upstream_status';
    access_log {dir}/nginx-access.log upstreams;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000;
    upstream vmportal {{
        server 127.0.0.1:{port_a} max_fails=1 fail_timeout=5s;
        server 127.0.0.1:{port_b} max_fails=1 fail_timeout=5s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://vmportal;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            # A host that refuses or drops a connection before answering: try the other.
            proxy_next_upstream error timeout;
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


def children(pid: int) -> set[int]:
    """Pids whose parent is ``pid`` (gunicorn's workers)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def nginx_process(base: Path, port: int, upstreams: tuple[int, int]) -> Managed:
    conf = base / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""  # root's workers would run as nobody, who cannot log here
    conf.write_text(NGINX_CONF.format(user=user, dir=base, port=port, port_a=upstreams[0], port_b=upstreams[1]))
    return Managed("nginx", [NGINX, "-c", str(conf), "-p", str(base)], base, supervised=False)


def gunicorn(name: str, port: int, base: Path, env: dict[str, str]) -> Managed:
    return Managed(name, [sys.executable, "-m", "gunicorn", "vmportal.wsgi", "--bind", f"127.0.0.1:{port}",
                          "--workers", "2", "--worker-class", "gthread", "--threads", "4", "--keep-alive", "5",
                          "--graceful-timeout", "30", "--log-level", "warning", "--timeout", "60"],
                   base, env, supervised=False)


def rqworker(name: str, base: Path, env: dict[str, str]) -> Managed:
    return Managed(name, [sys.executable, "manage.py", "rqworker", "clone", "purge", "default",
                          "--worker-class", "rq.SimpleWorker"],
                   base, env, supervised=False)


def running_job(redis_conn, pid: int) -> str | None:
    from rq import Worker

    for w in Worker.all(connection=redis_conn):
        if w.pid == pid:
            return w.get_current_job_id()
    return None


@pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed (tools/ensure-system.sh nginx)")
def test_rolling_restart_of_a_web_and_a_worker_host_loses_no_request_and_no_job(vcsim_factory, redis_conn, settings,
                                                                                 tmp_path):
    started = time.monotonic()
    sim = vcsim_factory(*GUEST, "-method-delay", SIM_DELAYS)
    vc, folder = site(sim, task_limit=8)
    with connect(Endpoint.from_vcenter(vc)) as conn:
        originals = frozenset(rec.moid for rec in fetch_inventory(conn).vms)
    make_pool(vc, folder, name="roll", size=POOL_SIZE)
    tokens = [create_token(user=User.objects.create_user(f"client-{i}"), name="roll")[1] for i in range(CLIENTS)]
    db = connection.settings_dict
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.settings", "SECRET_KEY": settings.SECRET_KEY, "REDIS_URL": settings.REDIS_URL,
        "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/"
                        f"{db['NAME']}",
        "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1", "VMPORTAL_API_RATE_LIMIT_PER_IP": "0",
        "VMPORTAL_API_RATE_LIMIT_PER_TOKEN": "0", "VMPORTAL_TRUSTED_PROXIES": "127.0.0.1",
    }
    ports = (free_port(), free_port())
    proxy_port = free_port()
    web_a, web_b = gunicorn("web-a", ports[0], tmp_path, env), gunicorn("web-b", ports[1], tmp_path, env)
    worker_a, worker_b = rqworker("worker-a", tmp_path, env), rqworker("worker-b", tmp_path, env)
    manager = Managed("poolmanager", [sys.executable, "manage.py", "poolmanager", "--interval", "2"], tmp_path, env,
                      supervised=False)
    proxy = nginx_process(tmp_path, proxy_port, ports)
    procs = [proxy, web_a, web_b, worker_a, worker_b, manager]
    retired: list[Managed] = []
    loop = None

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{(tmp_path / f'{p.name}.log').read_text()[-1500:]}"
                         for p in [*procs, *retired] if (tmp_path / f"{p.name}.log").exists())

    try:
        for p in procs:
            p.start()
        for port, p in ((ports[0], web_a), (ports[1], web_b), (proxy_port, proxy)):
            wait_for_port(port, 60, p.proc)
        snap, took = wait_for_recovery(fault_ended_at=timezone.now(), deadline_s=90, originals=originals,
                                       progress=lambda line: None)
        assert took is not None and snap.pools_full, f"the pool did not fill\n{table('fill', snap, took)}\n{logs()}"

        loop = Loop(proxy_port, tokens, ["roll"], clients=CLIENTS).start()
        load_started = time.monotonic()
        time.sleep(LOAD_SECONDS * 0.25)

        # Web host A: graceful reload. New workers take over; the old ones finish and exit.
        old_workers = children(web_a.pid)
        reload_sent = time.monotonic()
        os.kill(web_a.pid, signal.SIGHUP)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (children(web_a.pid) & old_workers
                                               or len(children(web_a.pid)) < 2):
            time.sleep(0.2)
        reload_took = time.monotonic() - reload_sent
        assert not children(web_a.pid) & old_workers and web_a.alive(), f"web-a did not reload\n{logs()}"

        # Worker host B: warm shutdown while it runs a job, then a new worker.
        deadline = time.monotonic() + 20
        held = None
        while time.monotonic() < deadline and held is None:
            held = running_job(redis_conn, worker_b.pid)
            time.sleep(0.05 if held is None else 0)
        assert held is not None, f"worker-b never ran a job under load\n{logs()}"
        stop_sent = time.monotonic()
        os.kill(worker_b.pid, signal.SIGTERM)
        assert worker_b.proc.wait(timeout=60) == 0, f"worker-b did not stop warmly\n{logs()}"
        warm_stop_took = time.monotonic() - stop_sent
        retired.append(worker_b)
        procs.remove(worker_b)
        worker_b = rqworker("worker-b2", tmp_path, env).start()
        procs.append(worker_b)

        time.sleep(max(0.0, LOAD_SECONDS - (time.monotonic() - load_started)))
        stats = loop.stop()
        load_took = time.monotonic() - load_started
        loop = None
        snap, recovered = wait_for_recovery(fault_ended_at=timezone.now(), deadline_s=90, originals=originals,
                                            errors_5xx=lambda: len(stats.errors_5xx), progress=lambda line: None)
        close_old_connections()

        assert not stats.errors_5xx, stats.errors_5xx[:5]
        assert not stats.transport and not stats.retried, (stats.transport[:5], stats.retried[:5])
        assert not stats.duplicates, stats.duplicates[:5]
        assert stats.checkouts >= CLIENTS and stats.returns == stats.checkouts, stats.summary()
        answers: Counter = Counter()
        upstreams: Counter = Counter()
        for line in (tmp_path / "nginx-access.log").read_text().splitlines():
            m = ACCESS_LINE.match(line)
            assert m, f"unexpected access log line {line!r}"
            status, upstream = int(m["status"]), m["upstream"]
            answers[status] += 1
            upstreams[upstream] += 1
            # nginx's own 502/504 (no upstream answered) would show here even if a client retried.
            assert status < 500 or (status == 503 and m["upstream_status"] == "503"), line
            assert "," not in upstream, f"nginx had to try a second upstream: {line}"
        errors = [line for line in (tmp_path / "nginx-error.log").read_text().splitlines()
                  if re.search(r"\[(error|crit|alert|emerg)\]", line)]
        assert not errors, errors[:5]
        assert set(upstreams) == {f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}"}, upstreams

        held_pk = int(held.rsplit("-", 1)[1])
        assert Job.objects.get(pk=held_pk).status == Job.Status.SUCCEEDED, Job.objects.get(pk=held_pk).error
        jobs = Counter(Job.objects.values_list("status", flat=True))
        assert set(jobs) == {Job.Status.SUCCEEDED}, (jobs, list(Job.objects.exclude(
            status=Job.Status.SUCCEEDED).values_list("kind", "status", "error")[:5]))
        assert recovered is not None and snap.clean, table("after the rolling restart", snap, recovered)
    finally:
        if loop is not None:
            loop.stop()
        for p in reversed(procs):
            p.stop()
    print(f"\nrolling restart: {CLIENTS} clients for {load_took:.0f}s through nginx: {stats.summary()}; "
          f"{sum(answers.values()) / load_took:.0f} requests/s, {stats.checkouts / load_took:.0f} checkouts/s; "
          f"by upstream {dict(upstreams)}; web-a reloaded in {reload_took:.1f}s; worker-b's warm stop took "
          f"{warm_stop_took:.1f}s (job {held} finished); jobs {dict(jobs)}; recovered {recovered:.1f}s after; "
          f"whole test {time.monotonic() - started:.0f}s")
