"""Checkout benchmark: one-click checkout over HTTP against a raw psycopg transaction.

    .venv/bin/python bench/checkout.py [--checkouts 3000] [--clients 16] [--workers 2] [--threads 4]

Non-interactive and self-contained. It (re)creates its own database
(``vmportal_bench_checkout`` on the local PostgreSQL of the tests, or the server of
DATABASE_URL), migrates it, seeds a pool with enough ready VMs for every checkout and 16
signed-in users, starts gunicorn on a free loopback port and then measures, in one run:

- HTTP: ``--clients`` threads POST /pools/<name>/checkout with a session cookie and CSRF
  token (the redirect is not followed), ``--checkouts`` in all, after a warm-up;
- raw psycopg: as many threads, each in a transaction doing the same row lock
  (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1), UPDATE of the VM and INSERT of a lease.

It prints throughput and p50/p99 latency of both, their ratio, the number of VMs leased
more than once (must be 0), counted in the database, and the CPU time gunicorn, the bench
database's PostgreSQL backends and the clients spent per checkout (from /proc). The rates
move with whatever else the machine runs; CPU per checkout hardly does, and on N cores
N x 1000 / (its sum) ms bounds the rate. Everything it starts it stops.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BENCH_DB = "vmportal_bench_checkout"
POOL = "bench"
RAW_POOL = "bench-raw"
USERS = 16
WARMUP = 300
HOST = "127.0.0.1"
TARGET_RATE = 620
TARGET_P99_MS = 50
# A Redis database of its own: checkouts nudge the pool manager, and a demo's manager on
# database 0 must not be sent pool ids from this database.
REDIS_URL = "redis://127.0.0.1:6379/13"


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process group, during the run

    def line(self) -> str:
        return f"{self.rate:.0f}/s, p50 {statistics.median(self.latencies) * 1000:.1f} ms, p99 {self.p99:.1f} ms"

    @property
    def p99(self) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def cpu_line(self) -> str:
        """CPU milliseconds per checkout: on 2 cores, 1000 / (their sum / 2) bounds the rate."""
        if not self.cpu:
            return "CPU per checkout: not measured (no /proc)"
        per = {k: v * 1000 / len(self.latencies) for k, v in self.cpu.items()}
        total = sum(per.values())
        return "CPU per checkout: " + ", ".join(f"{k} {v:.2f} ms" for k, v in per.items()) + \
            f"; sum {total:.2f} ms, so at most {os.cpu_count() * 1000 / total:.0f}/s on {os.cpu_count()} idle cores"


def _cpu_by_group(server_pgid: int | None) -> dict[str, float]:
    """CPU seconds so far of the server's processes, of PostgreSQL's backends serving the
    bench database, and of this process (the clients), read from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    totals = {"server": 0.0, "postgres": 0.0}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # exited while we looked
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if server_pgid is not None and int(fields[2]) == server_pgid:
            totals["server"] += seconds
        elif cmdline.startswith(b"postgres:") and BENCH_DB.encode() in cmdline:
            totals["postgres"] += seconds
    own = os.times()
    totals["clients"] = own.user + own.system
    if server_pgid is None:
        del totals["server"]
    return totals


def prepare_database() -> str:
    """A fresh database of our own, migrated; returns its URL."""
    import psycopg

    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/vmportal")
    parts = urlsplit(base)
    if parts.scheme not in ("postgres", "postgresql"):
        sys.exit(f"bench needs PostgreSQL; DATABASE_URL is {parts.scheme}://...")
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("bench runs against a loopback PostgreSQL only")
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        # Fresh each run: the audit table is append-only, so old rows cannot be cleared.
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    url = urlunsplit(parts._replace(path=f"/{BENCH_DB}"))
    os.environ["DATABASE_URL"] = url
    os.environ["REDIS_URL"] = REDIS_URL
    # The real settings, as gunicorn will use them: sessions must be made by the same engine.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vmportal.settings")
    subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "--verbosity", "0"], check=True, cwd=ROOT)
    return url


def seed(vms_for_http: int, vms_for_raw: int) -> tuple[list[str], int, int]:
    """Pools with ready VMs and signed-in users; returns session keys and the pool ids."""
    import django

    django.setup()
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User
    from django.utils import timezone
    from django.utils.module_loading import import_string

    from apps.pools.models import VM, VMState
    from tests import factories

    SessionStore = import_string(f"{django.conf.settings.SESSION_ENGINE}.SessionStore")  # noqa: N806
    vcenter = factories.vcenter()
    now = timezone.now()
    pool_ids = []
    for name, count in ((POOL, vms_for_http), (RAW_POOL, vms_for_raw)):
        pool = factories.pool(name=name, size=count, vcenter=vcenter)
        VM.objects.bulk_create(
            VM(pool=pool, vcenter=vcenter, template=pool.template, name=f"{name}-{i}", state=VMState.READY,
               ready_at=now, ip_address=f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
               hostname=f"{name}-{i}.bench")
            for i in range(count)
        )
        pool_ids.append(pool.pk)
    sessions = []
    for i in range(USERS):
        user = User.objects.create_user(f"bench{i}")  # no usable password: signed in via the session
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.save()
        sessions.append(session.session_key)
    from django.db import connection

    connection.close()
    return sessions, pool_ids[0], pool_ids[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_gunicorn(port: int, workers: int, threads: int, max_leases: int) -> subprocess.Popen:
    env = {**os.environ, "VMPORTAL_MAX_LEASES_PER_USER": str(max_leases), "LOG_LEVEL": "WARNING"}
    cmd = [str(Path(sys.executable).parent / "gunicorn"), "vmportal.wsgi", "--bind", f"{HOST}:{port}",
           "--workers", str(workers), "--worker-class", "gthread", "--threads", str(threads),
           "--keep-alive", "30", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"gunicorn exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return proc
        except OSError:
            time.sleep(0.2)
    stop(proc)
    sys.exit("gunicorn did not answer /healthz within 30 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Client:
    """One signed-in browser: a kept-alive connection, its session cookie and CSRF token."""

    def __init__(self, port: int, session_key: str):
        self.port = port
        self.conn = http.client.HTTPConnection(HOST, port, timeout=30)
        self.cookie = f"sessionid={session_key}"
        response = self._send("GET", "/")
        body = response.read().decode()
        if response.status != 200:
            raise RuntimeError(f"GET / answered {response.status}; is the session valid?")
        csrf_cookie = re.search(r"csrftoken=([^;]+)", response.getheader("Set-Cookie") or "")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body)
        if not (csrf_cookie and token):
            raise RuntimeError("no CSRF cookie or token on the home page")
        self.cookie += f"; csrftoken={csrf_cookie.group(1)}"
        self.form = f"csrfmiddlewaretoken={token.group(1)}".encode()

    def _send(self, method: str, path: str, body: bytes | None = None) -> http.client.HTTPResponse:
        headers = {"Cookie": self.cookie, "Host": f"{HOST}:{self.port}"}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                return self.conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # The server closed a kept-alive connection; open a new one once.
                self.conn.close()
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def checkout(self) -> str | None:
        """None on success (a redirect to the lease page), else what went wrong."""
        response = self._send("POST", f"/pools/{POOL}/checkout", self.form)
        response.read()
        location = response.getheader("Location") or ""
        if response.status == 302 and location.startswith("/leases/"):
            return None
        return f"{response.status} {location}"


def run_threads(clients: int, total: int, work, server_pgid: int | None = None) -> Run:
    """``total`` calls of ``work(index)`` spread over ``clients`` threads, timed each."""
    run = Run()
    measure = Path("/proc/self/stat").exists()
    lock = threading.Lock()
    remaining = iter(range(total))
    barrier = threading.Barrier(clients + 1)

    def worker(index: int) -> None:
        call = work(index)
        barrier.wait()
        mine, failed = [], []
        while True:
            with lock:
                if next(remaining, None) is None:
                    break
            started = time.perf_counter()
            error = call()
            elapsed = time.perf_counter() - started
            (failed if error else mine).append(error or elapsed)
        with lock:
            run.latencies.extend(mine)
            run.failures.extend(failed)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    before = _cpu_by_group(server_pgid) if measure else {}
    for t in threads:
        t.join()
    run.seconds = time.perf_counter() - started
    if measure:
        after = _cpu_by_group(server_pgid)
        run.cpu = {k: after[k] - before[k] for k in after}
    return run


def http_run(port: int, sessions: list[str], clients: int, total: int, server_pgid: int) -> Run:
    def make(index: int):
        return Client(port, sessions[index % len(sessions)]).checkout

    return run_threads(clients, total, make, server_pgid)


RAW_LOCK = """SELECT id FROM pools_vm WHERE pool_id = %s AND state = 'ready'
              ORDER BY ready_at, id LIMIT 1 FOR UPDATE SKIP LOCKED"""
RAW_UPDATE = """UPDATE pools_vm SET state = 'leased', state_changed_at = now() WHERE id = %s AND state = 'ready'"""
RAW_INSERT = """INSERT INTO leases_lease (vm_id, pool_id, user_id, started_at, expires_at, end_reason, note, tags)
                VALUES (%s, %s, %s, now(), now() + interval '2 hours', '', '', '{}')"""


def raw_run(url: str, pool_id: int, user_ids: list[int], clients: int, total: int) -> Run:
    import psycopg

    conns = []

    def make(index: int):
        conn = psycopg.connect(url)
        conns.append(conn)  # kept open until measured: a closed backend's CPU time is gone from /proc
        user_id = user_ids[index % len(user_ids)]

        def checkout() -> str | None:
            with conn.transaction():
                row = conn.execute(RAW_LOCK, [pool_id]).fetchone()
                if row is None:
                    return "pool empty"
                conn.execute(RAW_UPDATE, [row[0]])
                conn.execute(RAW_INSERT, [row[0], pool_id, user_id])
            return None

        return checkout

    try:
        return run_threads(clients, total, make)
    finally:
        for conn in conns:
            conn.close()


def double_leases(url: str) -> tuple[int, int, int]:
    """(VMs with more than one lease, leases, VMs in state leased), from the database."""
    import psycopg

    with psycopg.connect(url) as conn:
        doubled = conn.execute(
            "SELECT count(*) FROM (SELECT vm_id FROM leases_lease GROUP BY vm_id HAVING count(*) > 1) d"
        ).fetchone()[0]
        leases = conn.execute("SELECT count(*) FROM leases_lease").fetchone()[0]
        leased = conn.execute("SELECT count(*) FROM pools_vm WHERE state = 'leased'").fetchone()[0]
    return doubled, leases, leased


def clear_nudges() -> None:
    """Drop the reconcile nudges our checkouts queued: no pool manager reads database 13."""
    import redis

    from apps.pools import nudge

    redis.Redis.from_url(REDIS_URL).delete(nudge.KEY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkouts", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=16)
    # As `make demo` runs it (apps/core/management/commands/demo.py); 3 workers measured no faster here.
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)

    load_at_start = os.getloadavg()[0]
    url = prepare_database()
    http_vms = WARMUP + args.checkouts
    sessions, pool_id, raw_pool_id = seed(http_vms, WARMUP + args.checkouts)
    print(f"database {BENCH_DB}: pool {POOL} with {http_vms} ready VMs, {USERS} signed-in users")

    port = free_port()
    # The per-user limit stays on (so its query runs) but high enough for every checkout.
    proc = start_gunicorn(port, args.workers, args.threads, max_leases=http_vms)
    try:
        http_run(port, sessions, args.clients, WARMUP, proc.pid)
        web = http_run(port, sessions, args.clients, args.checkouts, proc.pid)
    finally:
        stop(proc)

    import psycopg

    with psycopg.connect(url) as conn:
        user_ids = [r[0] for r in conn.execute("SELECT id FROM auth_user ORDER BY id")]
    raw_run(url, raw_pool_id, user_ids, args.clients, WARMUP)
    raw = raw_run(url, raw_pool_id, user_ids, args.clients, args.checkouts)

    doubled, leases, leased = double_leases(url)
    clear_nudges()
    print(f"gunicorn gthread, {args.workers} workers x {args.threads} threads; "
          f"{args.checkouts} checkouts after {WARMUP} warm-up; {os.cpu_count()} cores, load average "
          f"{load_at_start:.2f} at start, {os.getloadavg()[0]:.2f} at end (others' work skews the rates)")
    print(f"checkout over HTTP, {args.clients} clients: {web.line()}; failures: {len(web.failures)}")
    print(f"  {web.cpu_line()}")
    print(f"raw psycopg, {args.clients} clients: {raw.line()}; failures: {len(raw.failures)}")
    print(f"  {raw.cpu_line()}")
    print(f"ratio {raw.rate / web.rate:.2f}x; double leases: {doubled} "
          f"(leases {leases}, VMs leased {leased})")
    met = web.rate >= TARGET_RATE and web.p99 <= TARGET_P99_MS
    print(f"target {TARGET_RATE}/s with p99 <= {TARGET_P99_MS} ms: {'met' if met else 'NOT met'}")
    if web.failures:
        print(f"first HTTP failures: {web.failures[:3]}")
    if doubled or web.failures or raw.failures or leases != leased:
        sys.exit(1)


if __name__ == "__main__":
    main()
