"""Checkout benchmark: vmpooler API checkouts while the pool refills, against raw psycopg.

    .venv/bin/python bench/checkout.py [--clients 1,16,32] [--checkouts 1500] [--workers 1] [--threads 16]
                                       [--leases-per-user 10] [--browser] [--profile DIR]
                                       [--separate-poolmanager] [--simulator-nice N]

Non-interactive and self-contained, in the README's production shape: it (re)creates its
own database (``vmportal_bench_checkout`` on the local PostgreSQL of the tests, or the
server of DATABASE_URL), starts the vSphere simulator, seeds a pool of a registered
template whose size is the number of ready VMs seeded, and starts gunicorn (gthread, 1x16
as README step 3 runs it on a small host), one clone ``rqworker`` and one for the other
queues hosting the pool manager (``rqworker ... --poolmanager``; ``--separate-poolmanager``:
``manage.py poolmanager`` instead; README step 3's ``rqworkers`` forks the same two
workers from one process, which saves memory, not CPU: here they are processes of their
own so that the CPU of each shows apart): every checkout nudges the pool manager, which starts a
fill job that clones into the simulator while the run goes on (that is how checkout is
used). Workers lower their CPU priority as in production (VMPORTAL_WORKER_NICE, default 10;
set 0 to see the difference). Then, for each client count in ``--clients``:

- HTTP: that many threads POST /api/v3/vm/<pool> with an X-AUTH-TOKEN, ``--checkouts`` in
  all after a warm-up (``--browser``: the page's POST /pools/<pool>/checkout with a session
  cookie and CSRF token instead). Nothing is given back, so a client changes to the next
  user's token after ``--leases-per-user`` checkouts (default 10, the default per-user
  limit, which stays on at that value): each user holds what a real one can. With 0, 16
  users share every checkout, each ends up holding hundreds of leases, and the limit's count
  of them grows through the run (it cost PostgreSQL 0.8 ms a checkout at ~760 leases);
- raw psycopg: as many threads doing the checkout's own SQL (the token lookup, then the
  user's lock and the statement that counts, moves, writes history, lease and audit event,
  sent together in one transaction as the service sends them).

It prints throughput, p50/p99, answers >= 500, other failures, VMs leased twice (counted
in the database, must be 0), and the CPU time per checkout of each process group (from
/proc): gunicorn, pool manager, clone worker, simulator, the bench database's PostgreSQL
backends and the clients; then PostgreSQL's again, by the process each backend serves
(its client's port: "other" is autovacuum). Rates move with whatever else the machine runs
(the load average is printed), and on a shared VM so does the CPU a fixed piece of work
takes: the time of a fixed Python loop is printed at the start and the end (54-100 ms on
this VM within one evening, and the CPU per checkout with it). Compare runs of about the
same figures, or alternate before and after. ``--profile DIR`` records the threads of
gunicorn's workers that hold the GIL (py-spy --gil, a dev dependency; needs root) during
the 16-client run. ``--simulator-nice N`` runs the simulator in a session of its own at
that autogroup priority, as a vCenter on other hardware takes no CPU from the portal's
host; by default it shares the clients' session, as in every earlier figure. Tokens are
seeded as used a moment ago, as CI's in use are, and the warm-up runs as many clients as
gunicorn has threads, so that every thread's connection is open and its statements
prepared before anything is timed. Everything it starts it stops.
"""

from __future__ import annotations

import argparse
import fcntl
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BENCH_DB = "vmportal_bench_checkout"
POOL = "bench"
RAW_POOL = "bench-raw"
USERS = 16
WARMUP = 200
HOST = "127.0.0.1"
TARGET_RATE = 620
TARGET_P99_MS = 50
TARGET_SEQ_P50_MS = 3
TARGET_WEB_CPU_MS = 2
LOG_DIR = ROOT / "var" / "bench-checkout"
# A Redis database of its own: a demo's pool manager on database 0 must not be sent pool
# ids from this database, nor this run's manager a demo's.
REDIS_URL = "redis://127.0.0.1:6379/13"


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process group, during the run

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) * 1000 if self.latencies else float("nan")

    @property
    def p99(self) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan")

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    @property
    def server_errors(self) -> int:
        return sum(1 for f in self.failures if f[:1] == "5")

    def line(self) -> str:
        return (f"{self.rate:6.0f}/s  p50 {self.p50:6.1f} ms  p99 {self.p99:6.1f} ms  5xx {self.server_errors}  "
                f"other failures {len(self.failures) - self.server_errors}")

    def cpu_per(self, backends: bool = False) -> dict[str, float]:
        """CPU milliseconds per checkout of each process group; with ``backends``, of
        PostgreSQL's backends by the group each serves."""
        done = max(1, len(self.latencies))
        return {k.removeprefix("pg:"): v * 1000 / done for k, v in self.cpu.items() if k.startswith("pg:") == backends}

    def cpu_line(self) -> str:
        """CPU milliseconds per checkout: on 2 cores, 1000 / (their sum / 2) bounds the rate."""
        if not self.cpu:
            return "CPU per checkout: not measured (no /proc)"
        per = self.cpu_per()
        split = {k: v for k, v in self.cpu_per(backends=True).items() if v >= 0.005}
        total = sum(per.values())
        line = "CPU ms/checkout: " + ", ".join(f"{k} {v:.2f}" for k, v in per.items()) + \
            f"; sum {total:.2f}, so at most {os.cpu_count() * 1000 / total:.0f}/s on {os.cpu_count()} idle cores"
        if split:
            line += "\n            postgres serving: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(split.items()))
        return line


# Process groups whose CPU is counted, by process group id (set as each is started), and
# single processes by pid (the simulator shares our process group).
GROUPS: dict[str, int] = {}
PIDS: dict[str, int] = {}


def _cpu_by_group() -> dict[str, float]:
    """CPU seconds so far of each started process group, of PostgreSQL's backends serving
    the bench database, and of this process (the clients), read from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    by_pgid = {pgid: name for name, pgid in GROUPS.items()}
    by_pid = {pid: name for name, pid in PIDS.items()}
    totals = {name: 0.0 for name in (*GROUPS, *PIDS)} | {"postgres": 0.0}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # exited while we looked
        seconds = (int(fields[11]) + int(fields[12])) / tick
        name = by_pid.get(int(stat.parent.name)) or by_pgid.get(int(fields[2]))
        if name is not None:
            totals[name] += seconds
        elif cmdline.startswith(b"postgres:") and BENCH_DB.encode() in cmdline:
            totals["postgres"] += seconds
            owner = _backend_client(int(stat.parent.name), cmdline, by_pgid)
            totals[f"pg:{owner}"] = totals.get(f"pg:{owner}", 0.0) + seconds

    own = os.times()
    totals["clients"] = own.user + own.system
    return totals


_CLIENT_OF_BACKEND: dict[tuple[int, int], str] = {}


def _link(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:  # closed since listed (the listing's own descriptor always is)
        return ""


def _backend_client(backend: int, cmdline: bytes, by_pgid: dict[int, str]) -> str:
    """Which counted group (``by_pgid``: names by process group) a PostgreSQL backend
    serves, found by its client's TCP port: "other" for autovacuum and for a client that
    has gone."""
    match = re.search(rb"\((\d+)\)", cmdline)
    if not match:
        return "other"
    port = int(match[1])
    if (backend, port) in _CLIENT_OF_BACKEND:
        return _CLIENT_OF_BACKEND[backend, port]
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    owner = "other"
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            pgid = int((fd_dir.parent / "stat").read_text().rsplit(")", 1)[1].split()[2])
            if fd_dir.parent.name != str(os.getpid()) and pgid not in by_pgid:
                continue
            fds = list(fd_dir.iterdir())
        except OSError:
            continue  # exited, or not ours to look at
        if any(_link(fd) in inodes for fd in fds):
            owner = by_pgid.get(pgid, "clients")
            break
    if owner != "other":
        _CLIENT_OF_BACKEND[backend, port] = owner
    return owner


def calibrate() -> float:
    """CPU milliseconds of a fixed pure-Python loop, the best of 3: the same code takes
    more CPU on a slower moment of a shared host, so compare runs of about the same figure."""
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        total = 0
        for i in range(2_000_000):
            total += i
        best = min(best, (time.process_time() - started) * 1000)
    return best


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
    os.environ.update({
        "DATABASE_URL": url, "REDIS_URL": REDIS_URL, "LOG_LEVEL": "WARNING", "VMPORTAL_VAR_DIR": str(LOG_DIR),
        # The load is the point: no rate limits (vmpooler has none), so no Redis counting either.
        "VMPORTAL_API_RATE_LIMIT_PER_IP": "0", "VMPORTAL_API_RATE_LIMIT_PER_TOKEN": "0",
    })
    # PostgreSQL needs an explicit key (vmportal/settings.py); a throwaway one for the bench.
    os.environ.setdefault("SECRET_KEY", "vmportal-bench-only-not-a-secret")
    # The real settings, as gunicorn will use them: sessions must be made by the same engine.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vmportal.settings")
    subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "--verbosity", "0"], check=True, cwd=ROOT)
    return url


@dataclass
class Seeded:
    sessions: list[str]
    tokens: list[str]
    pool_id: int
    raw_pool_id: int
    per_user: int  # checkouts a client makes with one user before it takes the next; 0: USERS users
    taken: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def credentials(self, index: int) -> Callable[[], int]:
        """Client ``index``'s source of users: a function returning the index of the user
        (into tokens and sessions) to make its next checkout as."""
        if not self.per_user:
            return lambda: index % USERS
        state = {"user": 0, "left": 0}

        def user() -> int:
            if not state["left"]:
                with self.lock:
                    state["user"], self.taken = self.taken, self.taken + 1
                if state["user"] >= len(self.tokens):
                    raise RuntimeError(f"the bench seeded {len(self.tokens)} users, too few for its checkouts")
                state["left"] = self.per_user
            state["left"] -= 1
            return state["user"]

        return user


def seed(sim, vms_for_http: int, vms_for_raw: int, users: int, per_user: int, browser: bool) -> Seeded:
    """A template registered in the simulator, two pools of it, each as large as the ready
    VMs seeded into it (so every checkout leaves a deficit the pool manager refills), and
    ``users`` users, each with an API token (and a session, for ``browser``)."""
    import django

    django.setup()
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User
    from django.utils import timezone
    from django.utils.module_loading import import_string

    from apps.api.models import ApiToken
    from apps.api.tokens import create_token
    from apps.inventory.models import Folder, VCenter
    from apps.inventory.services import sync_inventory
    from apps.pools.models import VM, Pool, VMState
    from apps.pools.templates import register_template

    SessionStore = import_string(f"{django.conf.settings.SESSION_ENGINE}.SessionStore")  # noqa: N806
    vcenter = VCenter.objects.create(name="bench", host=sim.address, username=sim.username, password=sim.password,
                                     insecure=True, task_limit=10)
    assert sync_inventory(vcenter).ok, "the simulator's inventory could not be synced"
    folder = Folder.objects.get(vcenter=vcenter, path="DC0/vm/vmportal")
    template = register_template(vcenter=vcenter, name="debian-12", inventory_path="DC0/vm/Templates/debian-12",
                                 os_name="debian-12", prepare_now=True)
    now = timezone.now()
    pool_ids = []
    for name, count in ((POOL, vms_for_http), (RAW_POOL, vms_for_raw)):
        pool = Pool.objects.create(name=name, template=template, cluster=template.copies.get().cluster,
                                   folder=folder, size=count)
        VM.objects.bulk_create(
            VM(pool=pool, vcenter=vcenter, template=template, name=f"{name}-{i}", state=VMState.READY,
               ready_at=now, ip_address=f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
               hostname=f"{name}-{i}.bench")
            for i in range(count)
        )
        pool_ids.append(pool.pk)
    sessions, tokens = [], []
    for i in range(users):
        user = User.objects.create_user(f"bench{i}")  # no usable password: signed in via the session
        if browser:
            session = SessionStore()
            session[SESSION_KEY] = str(user.pk)
            session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
            session[HASH_SESSION_KEY] = user.get_session_auth_hash()
            session.save()
            sessions.append(session.session_key)
        tokens.append(create_token(user=user, name="bench")[1])
    # Tokens in use, as CI's are: the first call of a token not used for a minute records
    # when it was (apps.api.tokens.LAST_USED_RESOLUTION), which a bench of fresh tokens
    # would otherwise do for every user it moves on to.
    ApiToken.objects.update(last_used_at=timezone.now())
    from django.db import connection

    with connection.cursor() as cursor:
        # Statistics, as a database in service has them (autovacuum analyzes a table after
        # its first changes, a minute in): planned without any, the checkout's statement
        # cost PostgreSQL 1.5 ms rather than 1.0.
        cursor.execute("ANALYZE")
    connection.close()
    return Seeded(sessions, tokens, pool_ids[0], pool_ids[1], per_user)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_group(name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """A process in a process group of its own (so its CPU is counted and it is stopped
    whole), logging to LOG_DIR/<name>.log."""
    with open(LOG_DIR / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    GROUPS[name] = proc.pid
    return proc


def start_gunicorn(port: int, workers: int, threads: int, max_leases: int) -> subprocess.Popen:
    cmd = [str(Path(sys.executable).parent / "gunicorn"), "vmportal.wsgi", "--bind", f"{HOST}:{port}",
           "--workers", str(workers), "--worker-class", "gthread", "--threads", str(threads),
           "--keep-alive", "30", "--log-level", "warning"]
    proc = start_group("gunicorn", cmd, {"VMPORTAL_MAX_LEASES_PER_USER": str(max_leases)})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"gunicorn exited with {proc.returncode}; see {LOG_DIR}/gunicorn.log")
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


class Connection:
    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection(HOST, port, timeout=30)

    def send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> http.client.HTTPResponse:
        headers = {"Host": f"{HOST}:{self.port}", **headers}
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


class ApiClient:
    """One CI system: a kept-alive connection and its token, checking out with vmpooler's API."""

    def __init__(self, port: int, seeded: Seeded, index: int):
        self.conn = Connection(port)
        self.user = seeded.credentials(index)
        self.tokens = seeded.tokens

    def checkout(self) -> str | None:
        """None on success (200 with a hostname), else what went wrong."""
        headers = {"X-AUTH-TOKEN": self.tokens[self.user()], "Content-Length": "0"}
        response = self.conn.send("POST", f"/api/v3/vm/{POOL}", None, headers)
        body = response.read()
        if response.status == 200 and json.loads(body).get(POOL, {}).get("hostname"):
            return None
        return f"{response.status} {body[:120]!r}"


class BrowserClient:
    """One signed-in browser: a kept-alive connection, its CSRF cookie and token, and the
    session cookie of the user it checks out as."""

    def __init__(self, port: int, seeded: Seeded, index: int):
        self.conn = Connection(port)
        self.user = seeded.credentials(index)
        self.sessions = seeded.sessions
        # The CSRF cookie is the browser's, not the session's: one home page sets it, and a
        # change of user is a change of session cookie only.
        response = self.conn.send("GET", "/", None, {"Cookie": f"sessionid={self.sessions[0]}"})
        body = response.read().decode()
        if response.status != 200:
            raise RuntimeError(f"GET / answered {response.status}; is the session valid?")
        csrf_cookie = re.search(r"csrftoken=([^;]+)", response.getheader("Set-Cookie") or "")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body)
        if not (csrf_cookie and token):
            raise RuntimeError("no CSRF cookie or token on the home page")
        self.csrf = f"csrftoken={csrf_cookie.group(1)}"
        self.form = f"csrfmiddlewaretoken={token.group(1)}".encode()

    def checkout(self) -> str | None:
        """None on success (a redirect to the lease page), else what went wrong."""
        cookie = f"sessionid={self.sessions[self.user()]}; {self.csrf}"
        response = self.conn.send("POST", f"/pools/{POOL}/checkout", self.form,
                                  {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})
        response.read()
        location = response.getheader("Location") or ""
        if response.status == 302 and location.startswith("/leases/"):
            return None
        return f"{response.status} {location}"


def run_threads(clients: int, total: int, work) -> Run:
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
    before = _cpu_by_group() if measure else {}
    for t in threads:
        t.join()
    run.seconds = time.perf_counter() - started
    if measure:
        after = _cpu_by_group()
        run.cpu = {k: after[k] - before.get(k, 0.0) for k in after}
    return run


def http_run(port: int, seeded: Seeded, clients: int, total: int, browser: bool) -> Run:
    def make(index: int):
        return (BrowserClient if browser else ApiClient)(port, seeded, index).checkout

    return run_threads(clients, total, make)


LOOKUP_SQL = """SELECT t.id, t.user_id, t.last_used_at, u.is_active, u.is_superuser, u.username
               FROM api_apitoken t JOIN auth_user u ON u.id = t.user_id
               WHERE t.token_hash = %s AND NOT t.revoked AND (t.expires_at IS NULL OR t.expires_at > now())"""


def raw_run(url: str, seeded: Seeded, clients: int, total: int, max_leases: int) -> Run:
    """The checkout's SQL, statement for statement, from plain psycopg threads: the token
    lookup, then the user's lock and the service's one-go statement sent together (one
    transaction, committed at the pipeline's Sync), with the parameters the service passes."""
    import hashlib

    import psycopg

    from apps.core.states import history_params
    from apps.leases.services import PENDING, _checkout_sql, checkout_statement
    from apps.pools.models import VMState

    sql = _checkout_sql()
    history = history_params(model_label="pools.vm", field="state", old=VMState.READY, new=VMState.LEASED)
    pool = seeded.raw_pool_id
    conns = []

    def make(index: int):
        # autocommit, as Django's connection is between transactions: the pipeline's
        # implicit transaction is the checkout's own, in its one round trip.
        conn = psycopg.connect(url, prepare_threshold=5, autocommit=True)
        conns.append(conn)  # kept open until measured: a closed backend's CPU time is gone from /proc
        user_of = seeded.credentials(index)
        hashes = {}

        def checkout() -> str | None:
            try:
                return attempt()
            except psycopg.Error as exc:  # a failure to count, not a thread that dies holding locks
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")
                return f"raw {type(exc).__name__}: {exc}"[:200]

        def attempt() -> str | None:
            i = user_of()
            if i not in hashes:
                hashes.clear()
                hashes[i] = hashlib.sha256(seeded.tokens[i].encode()).hexdigest()
            [[_, user, _, _, _, username]] = conn.execute(LOOKUP_SQL, [hashes[i]]).fetchall()
            now = datetime.now(UTC)
            expires = now + timedelta(hours=2)
            params = [pool, VMState.READY, max_leases, user, max_leases, 1, max_leases, user, *PENDING, user, pool,
                      VMState.LEASED, now, VMState.READY, 1, *history,
                      user, now, expires, "vmpooler API", "{}",
                      now, user, username, "lease.checkout", "leases.lease", f" → {username}", expires.isoformat(),
                      "bench"]
            with conn.cursor() as lock, conn.cursor() as take:
                with conn.pipeline():
                    lock.execute(sql["groups"], [user])
                    take.execute(checkout_statement("take_in_one_go", 1), params)
                return None if take.fetchall() else "pool empty"

        return checkout

    try:
        return run_threads(clients, total, make)
    finally:
        for conn in conns:
            conn.close()


def double_leases(url: str) -> tuple[int, int, int]:
    """(VMs with more than one lease, leases, leases whose VM is not in state leased)."""
    import psycopg

    with psycopg.connect(url) as conn:
        doubled = conn.execute(
            "SELECT count(*) FROM (SELECT vm_id FROM leases_lease GROUP BY vm_id HAVING count(*) > 1) d"
        ).fetchone()[0]
        leases = conn.execute("SELECT count(*) FROM leases_lease").fetchone()[0]
        stray = conn.execute("SELECT count(*) FROM leases_lease l JOIN pools_vm v ON v.id = l.vm_id "
                             "WHERE v.state <> 'leased'").fetchone()[0]
    return doubled, leases, stray


def pool_activity(url: str) -> str:
    """What the pool manager and clone worker did: fill jobs, VMs cloned into the pools."""
    import psycopg

    with psycopg.connect(url) as conn:
        jobs = conn.execute("SELECT count(*) FROM jobs_job WHERE kind = 'pools.fill'").fetchone()[0]
        cloned = conn.execute("SELECT count(*) FROM pools_vm WHERE moid <> '' AND pool_id IS NOT NULL").fetchone()[0]
        ready = conn.execute("SELECT count(*) FROM pools_vm WHERE moid <> '' AND state = 'ready'").fetchone()[0]
    return f"{jobs} fill jobs, {cloned} VMs cloned into the pools during the runs ({ready} of them ready)"


def py_spy(out_dir: Path) -> list[subprocess.Popen]:
    """py-spy recording each gunicorn worker until interrupted (collapsed stacks, for
    flamegraph.pl or speedscope; ``py-spy top``-like totals come from summing them)."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = subprocess.run(["pgrep", "-P", str(GROUPS["gunicorn"])], capture_output=True, text=True).stdout.split()
    procs = []
    for pid in workers:
        for fmt, ext in (("raw", "txt"),):
            procs.append(subprocess.Popen(
                [exe, "record", "-p", pid, "-r", "200", "-f", fmt, "-o",
                 str(out_dir / f"gunicorn-{pid}.{ext}"), "--nonblocking", "--gil"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,16,32", help="client counts, comma-separated")
    parser.add_argument("--checkouts", type=int, default=1500, help="checkouts per client count (1 client: a third)")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=16, help="threads per gunicorn worker")
    parser.add_argument("--leases-per-user", type=int, default=10,
                        help="checkouts a client makes as one user before it takes the next (0: 16 users for all)")
    parser.add_argument("--browser", action="store_true", help="the page's checkout (session + CSRF), not the API")
    parser.add_argument("--profile", type=Path, help="record gunicorn with py-spy during the 16-client run here")
    parser.add_argument("--simulator-nice", type=int, metavar="N",
                        help="run the simulator in a session of its own at this priority, as a vCenter on "
                             "other hardware takes no CPU from the portal (default: it shares this process's)")
    parser.add_argument("--separate-poolmanager", action="store_true",
                        help="manage.py poolmanager as a process of its own, not in the default worker")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    levels = [int(c) for c in args.clients.split(",")]

    def count(clients: int) -> int:
        return max(100, args.checkouts // 3) if clients == 1 else args.checkouts

    # One run at a time: a second would drop the database the first is using.
    LOG_DIR.parent.mkdir(parents=True, exist_ok=True)  # var/, absent from a fresh clone
    lock = (LOG_DIR.parent / "bench-checkout.lock").open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit("another bench/checkout.py is running (var/bench-checkout.lock); wait for it to end")
    # A kill (SIGTERM) ends the run as Ctrl-C does: through the cleanup below, not
    # leaving gunicorn, the workers and the simulator running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    shutil.rmtree(LOG_DIR, ignore_errors=True)
    LOG_DIR.mkdir(parents=True)
    load_at_start = os.getloadavg()
    speed_at_start = calibrate()
    url = prepare_database()
    needed = WARMUP + sum(count(c) for c in levels)
    from apps.jobs.autogroup import lower_autogroup
    from tests import vcsim as launcher

    os.environ["VCSIM_STDERR"] = ""
    sim = launcher.start("-guest-ip", "10.40.0.0/16", "-guest-ip-delay", "1s",
                         own_session=args.simulator_nice is not None)
    if args.simulator_nice is not None and not lower_autogroup(args.simulator_nice, sim.process.pid):
        print("--simulator-nice: could not lower the simulator's autogroup (no autogroup here?); it runs at 0")
    procs: list[subprocess.Popen] = []
    results: list[tuple[int, Run, Run]] = []
    try:
        PIDS["vcsim"] = sim.process.pid
        per_user = max(0, args.leases_per_user)
        # Each client wastes at most one user's unused checkouts per run (http and raw).
        users = USERS if not per_user else -(-2 * needed // per_user) + 2 * (4 + sum(levels))
        seeded = seed(sim, needed, needed, users, per_user, args.browser)
        print(f"database {BENCH_DB}: pools {POOL} and {RAW_POOL}, each of size {needed} and as many ready VMs; "
              f"{users} users, " + (f"a client takes the next after {per_user} checkouts (the per-user limit)"
                                    if per_user else "shared by all checkouts") + f"; logs in {LOG_DIR}")
        port = free_port()
        # The per-user limit stays on (so its query runs), at each user's share; with
        # --leases-per-user 0 high enough for every checkout (a user's leases in both pools
        # count: with one client, one user holds them all).
        max_leases = per_user or 2 * needed
        procs.append(start_gunicorn(port, args.workers, args.threads, max_leases=max_leases))
        # README step 3: the pool manager in a thread of the worker for the other queues
        # (--separate-poolmanager: `manage.py poolmanager`, a process of its own).
        if args.separate_poolmanager:
            procs.append(start_group("poolmanager", [sys.executable, "manage.py", "poolmanager", "--interval", "3"]))
        else:
            procs.append(start_group("poolmanager", [
                sys.executable, "manage.py", "rqworker", "default", "purge", "deploy", "--worker-class",
                "rq.SimpleWorker", "--poolmanager", "--poolmanager-interval", "3"]))
        procs.append(start_group("clone-worker", [sys.executable, "manage.py", "rqworker", "clone", "--worker-class",
                                                  "rq.SimpleWorker"]))
        # As many clients as gunicorn has threads: each opens its database connection and
        # has its statements prepared (psycopg's prepare_threshold) before anything is timed.
        http_run(port, seeded, max(4, args.workers * args.threads), WARMUP, args.browser)
        for clients in levels:
            spies = py_spy(args.profile) if args.profile and clients == 16 else []
            web = http_run(port, seeded, clients, count(clients), args.browser)
            for spy in spies:
                spy.send_signal(signal.SIGINT)  # py-spy writes what it recorded and exits
                spy.wait(30)
            raw = raw_run(url, seeded, clients, count(clients), max_leases)
            results.append((clients, web, raw))
            print(f"{clients:2d} clients  http {web.line()}   load {os.getloadavg()[0]:.2f}")
            print(f"            {web.cpu_line()}")
            print(f"            raw  {raw.line()}")
            print(f"            {raw.cpu_line()}")
            if web.failures:
                print(f"            first HTTP failures: {web.failures[:3]}")
        activity = pool_activity(url)
    finally:
        for proc in reversed(procs):
            stop(proc)
        sim.stop()
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()  # our nudges and queued jobs: nothing reads database 13 now

    doubled, leases, stray = double_leases(url)
    kind = "browser POST /pools/<pool>/checkout" if args.browser else "API POST /api/v3/vm/<pool>"
    print()
    nice = os.environ.get("VMPORTAL_WORKER_NICE", "10")
    print(f"{kind}; gunicorn gthread {args.workers}x{args.threads}, poolmanager and a clone worker "
          f"(at nice {nice}, VMPORTAL_WORKER_NICE) running; {os.cpu_count()} cores; "
          f"load average {load_at_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end "
          "(others' work skews the rates, not the CPU per checkout)"
          + (f"; simulator at autogroup nice {args.simulator_nice}" if args.simulator_nice is not None else ""))
    print(f"machine speed: a fixed loop took {speed_at_start:.0f} ms of CPU at start, {calibrate():.0f} at end "
          "(54-100 ms on this 2-core VM within one evening; CPU per checkout moves with it)")
    print(f"pool refill: {activity}")
    print("| clients | app | raw psycopg | 5xx | web CPU ms | PG CPU ms | all CPU ms |")
    print("|---|---|---|---|---|---|---|")
    for clients, web, raw in results:
        per = web.cpu_per()
        print(f"| {clients} | {web.rate:.0f}/s, p50 {web.p50:.1f} ms, p99 {web.p99:.1f} ms | {raw.rate:.0f}/s, "
              f"p50 {raw.p50:.1f} ms, p99 {raw.p99:.1f} ms | {web.server_errors} | {per.get('gunicorn', 0):.2f} | "
              f"{per.get('postgres', 0):.2f} | {sum(per.values()):.2f} |")
    print(f"VMs leased twice: {doubled} (leases {leases}; leases whose VM is not leased: {stray})")
    verdicts = []
    for clients, web, _ in results:
        if clients == 1:
            met = web.p50 <= TARGET_SEQ_P50_MS
            verdicts.append(f"sequential p50 <= {TARGET_SEQ_P50_MS} ms: {'met' if met else 'NOT met'}")
        if clients == 16:
            met = web.rate >= TARGET_RATE and web.p99 <= TARGET_P99_MS and not web.server_errors and not doubled
            verdicts.append(f"16 clients >= {TARGET_RATE}/s, p99 <= {TARGET_P99_MS} ms, 0 5xx, 0 doubles: "
                            f"{'met' if met else 'NOT met'}")
            cpu = web.cpu_per().get("gunicorn", 0)
            met = cpu <= TARGET_WEB_CPU_MS
            verdicts.append(f"web CPU per checkout <= {TARGET_WEB_CPU_MS} ms:"
                            f" {'met' if met else 'NOT met'} ({cpu:.2f})")
    for v in verdicts:
        print("target " + v)
    if doubled or stray or any(web.failures or raw.failures for _, web, raw in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
