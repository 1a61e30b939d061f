"""Resident memory of the production shape, idle with 10 small pools filled, beside vmpooler's.

    .venv/bin/python bench/memory.py [--pools 10] [--size 2] [--idle 20] [--workers 1] [--threads 16] [--preload]
                                     [--clone-workers 1] [--separate-workers] [--worker-per-queue]
                                     [--separate-poolmanager]

Starts, against the vSphere simulator and a database of its own (``vmportal_bench_memory``,
or ``BENCH_DB``; Redis ``BENCH_REDIS_URL``, default database 13), what README's
"Running against a real vCenter" starts on a 2-core host: gunicorn ``vmportal.wsgi --workers 1
--worker-class gthread --threads 16`` (on a small host that also runs the workers and
PostgreSQL; ``--workers 2 --threads 4`` for a worker per core), ``rqworkers clone "default
purge deploy" --poolmanager``: a SimpleWorker for ``clone`` and one for the other queues
hosting the pool manager's loop in a thread, forked from one process that loaded what they
share (``--separate-workers``: the same two as ``rqworker`` processes of their own;
``--worker-per-queue``: an ``rqworker`` for each of the four queues, as deploy/'s units can
run them; ``--separate-poolmanager`` with either: ``manage.py poolmanager``, a process of
its own); the inventory watcher is counted on a line of its own. It
fills ``--pools`` pools of ``--size`` linked clones, sends each web worker a few requests
(pages and API), waits ``--idle`` seconds with nothing to do, then sums per group of
processes (a session each):

- RSS (VmRSS of /proc/PID/status): what ``ps`` shows, counting pages shared between
  processes (libraries, gunicorn's forked workers) once per process;
- PSS (Pss of /proc/PID/smaps_rollup): each shared page split between its sharers, so the
  groups add up to what the machine really gives them.

``--preload`` starts gunicorn with ``--preload`` (the app imported once in the master,
its pages shared by the forked workers until written; a SIGHUP then no longer loads new
code, so README's rolling restart would not work). Prints a table and the totals beside
vmpooler's 223 MB (MB = 2^20 bytes here). Everything it starts it stops.

Where a process's memory goes (tracemalloc over the imports, issue 14): a web worker after
its URL conf holds 58 MB of Python objects (Django 13.6, the app 6.4, redis 5.4, psycopg 3.9,
pydantic and ninja 4.7, rq and croniter 2.3, ...); an rqworker, the pool manager and the watcher
40 (Django 12.5, redis 5.4, psycopg 3.9, the app 3.3), plus pyVmomi's 6.5 (15 MB resident)
once a job calls vSphere. The rest of each 56-73 MB of PSS is the interpreter, C extensions
and the allocator's slack. ``--preload`` no longer pays: the master keeps a whole copy and
the workers' reference counts unshare most of the pages they got from it (2x4: web 179 MB
with it, 167 without).
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB_NAME = os.environ.get("BENCH_DB", "vmportal_bench_memory")
os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
# Redis database 13 is the benches' own: 0 is a demo's, 11-12 and 14-15 other test runs'.
os.environ["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("SECRET_KEY", "vmportal-bench-only-not-a-secret")  # PostgreSQL needs one
os.environ["DJANGO_SETTINGS_MODULE"] = "vmportal.settings"
HOST = "127.0.0.1"
VMPOOLER_MB = 223
LOG_DIR = ROOT / "var" / "bench-memory"
QUEUES = ("clone", "default", "purge", "deploy")


def fresh_database() -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")


def setup(sim, *, pools: int, size: int) -> tuple[list[int], str]:
    """vCenter, inventory, a prepared template, ``pools`` empty pools in its copy's cluster
    and an API token; returns the pool ids and the token."""
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    import django_rq

    from apps.api.tokens import create_token
    from apps.inventory.models import Folder, VCenter
    from apps.inventory.services import sync_inventory
    from apps.pools.models import Pool
    from apps.pools.templates import register_template

    django_rq.get_connection("default").flushdb()
    vc = VCenter.objects.create(name="bench", host=sim.address, username=sim.username, password=sim.password,
                                insecure=True)
    assert sync_inventory(vc).ok, "the simulator's inventory could not be synced"
    template = register_template(vcenter=vc, name="ubuntu", inventory_path="DC0/vm/Templates/ubuntu-24.04",
                                 prepare_now=True)
    folder = Folder.objects.get(vcenter=vc, path="DC0/vm/vmportal")
    cluster = template.copies.get().cluster
    ids = [Pool.objects.create(name=f"small-{i}", template=template, cluster=cluster, folder=folder, size=size).pk
           for i in range(pools)]
    token = create_token(user=User.objects.create_user("bench"), name="bench")[1]
    connection.close()
    return ids, token


GROUPS: dict[str, subprocess.Popen] = {}


def start(name: str, argv: list[str]) -> None:
    """A process in a session of its own (counted and stopped whole), logging to LOG_DIR."""
    with open(LOG_DIR / f"{name}.log", "ab") as log:
        GROUPS[name] = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)


def stop_all() -> None:
    for proc in GROUPS.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in GROUPS.values():
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def get(port: int, path: str, token: str = "") -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", path, headers={"X-AUTH-TOKEN": token} if token else {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def wait_for_web(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if GROUPS["web"].poll() is not None:
            sys.exit(f"gunicorn exited; see {LOG_DIR}/web.log")
        try:
            if get(port, "/healthz") == 200:
                return
        except OSError:
            time.sleep(0.2)
    sys.exit("gunicorn did not answer /healthz within 60 s")


def wait_until_full(pool_ids: list[int], size: int, timeout: float = 300) -> float:
    from django.db import connection

    from apps.jobs.models import Job
    from apps.pools.models import VM, VMState

    start_at = time.monotonic()
    want = len(pool_ids) * size
    while time.monotonic() - start_at < timeout:
        ready = VM.objects.filter(pool_id__in=pool_ids, state=VMState.READY).count()
        busy = Job.objects.filter(status__in=(Job.Status.QUEUED, Job.Status.RUNNING)).exists()
        connection.close()
        if ready >= want and not busy:
            return time.monotonic() - start_at
        for name, proc in GROUPS.items():
            if proc.poll() is not None:
                sys.exit(f"{name} exited with {proc.returncode}; see {LOG_DIR}/{name}.log")
        time.sleep(0.5)
    sys.exit(f"the pools did not fill within {timeout:.0f} s")


def session_pids(sid: int) -> list[int]:
    """The processes of a session and their descendants: the one started, the workers it
    forked (rqworkers' each take a session of their own, to lower its autogroup apart)."""
    parent, session = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        parent[int(entry.name)], session[int(entry.name)] = int(fields[1]), int(fields[3])  # ppid, session

    def ours(pid: int) -> bool:
        while pid > 1:
            if session.get(pid) == sid:
                return True
            pid = parent.get(pid, 0)
        return False

    return [pid for pid in parent if ours(pid)]


def kib(path: Path, key: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in {path}")


def measure() -> dict[str, tuple[int, float, float]]:
    """Per group: processes, RSS MB, PSS MB."""
    out = {}
    for name, proc in GROUPS.items():
        pids = session_pids(proc.pid)
        rss = sum(kib(Path(f"/proc/{pid}/status"), "VmRSS") for pid in pids)
        pss = sum(kib(Path(f"/proc/{pid}/smaps_rollup"), "Pss") for pid in pids)
        out[name] = (len(pids), rss / 1024, pss / 1024)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=10)
    parser.add_argument("--size", type=int, default=2, help="VMs per pool")
    parser.add_argument("--idle", type=float, default=20, help="seconds idle before measuring")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (README step 3: 1 on a small host)")
    parser.add_argument("--threads", type=int, default=16, help="threads per gunicorn worker")
    parser.add_argument("--preload", action="store_true", help="gunicorn --preload")
    parser.add_argument("--clone-workers", type=int, default=1,
                        help="clone workers rqworkers forks (README: one per pool that fills at the same time)")
    parser.add_argument("--separate-workers", action="store_true",
                        help="README step 3's two workers as rqworker processes of their own, not forked by rqworkers")
    parser.add_argument("--worker-per-queue", action="store_true",
                        help="an rqworker for each queue instead of README step 3's two (clone; default purge deploy)")
    parser.add_argument("--separate-poolmanager", action="store_true",
                        help="manage.py poolmanager as a process of its own, instead of a thread of the "
                             "default-queue worker (rqworker --poolmanager, README step 3)")
    args = parser.parse_args()

    from tests import vcsim as launcher

    LOG_DIR.mkdir(parents=True, exist_ok=True)
    fresh_database()
    sim = launcher.start("-guest-ip", "10.40.0.0/16")
    try:
        pool_ids, token = setup(sim, pools=args.pools, size=args.size)
        port = free_port()
        python = sys.executable
        start("web", [str(Path(python).parent / "gunicorn"), "vmportal.wsgi", "--bind", f"{HOST}:{port}",
                      "--workers", str(args.workers), "--worker-class", "gthread", "--threads", str(args.threads),
                      "--keep-alive", "5", "--timeout", "60", "--log-level", "warning",
                      *(["--preload"] if args.preload else [])])
        forked = not (args.worker_per_queue or args.separate_workers or args.separate_poolmanager)
        if forked:
            start(f"rqworkers {'clone; ' * args.clone_workers}default purge deploy +pm",
                  [python, "manage.py", "rqworkers", *["clone"] * args.clone_workers, "default purge deploy",
                   "--poolmanager"])
        workers = ([] if forked else [(q,) for q in QUEUES] if args.worker_per_queue
                   else [("clone",), ("default", "purge", "deploy")])
        for queues in workers:
            hosts = "default" in queues and not args.separate_poolmanager
            start(f"rqworker {' '.join(queues)}{' +poolmanager' if hosts else ''}",
                  [python, "manage.py", "rqworker", *queues, "--worker-class", "rq.SimpleWorker",
                   *(["--poolmanager"] if hosts else [])])
        if args.separate_poolmanager:
            start("poolmanager", [python, "manage.py", "poolmanager"])
        start("watcher", [python, "manage.py", "watch_inventory"])
        wait_for_web(port)
        filled = wait_until_full(pool_ids, args.size)
        # Every web worker serves pages and API calls once or more, as a running site's have.
        paths = ["/healthz", "/accounts/login/", "/api/v3/status", "/api/v3/summary", "/api/v3/vm",
                 "/api/v3/poolstat", "/metrics"]
        statuses = [get(port, path, token) for _ in range(4 * args.workers) for path in paths]
        assert all(s < 500 for s in statuses), f"the web answered {sorted(set(statuses))}"
        time.sleep(args.idle)
        groups = measure()
    finally:
        stop_all()
        sim.stop()

    shape = ("4 rqworkers, one per queue" if args.worker_per_queue
             else "2 rqworkers (clone; default purge deploy)" if not forked
             else f"rqworkers forking {args.clone_workers + 1} "
                  f"({'clone; ' * args.clone_workers}default purge deploy)")
    print(f"idle with {args.pools} pools of {args.size} full (after {filled:.1f} s more), {args.idle:.0f} s idle; "
          f"gunicorn {args.workers}x{args.threads} gthread{' --preload' if args.preload else ''}, "
          f"{shape}, "
          f"{'a pool manager process' if args.separate_poolmanager else 'the pool manager in the default worker'}")
    w = max(44, *map(len, groups))
    print(f"{'process group':{w}s} {'procs':>5s} {'RSS MB':>8s} {'PSS MB':>8s}")
    total_rss = total_pss = 0.0
    for name, (procs, rss, pss) in groups.items():
        print(f"{name:{w}s} {procs:5d} {rss:8.1f} {pss:8.1f}")
        if name != "watcher":
            total_rss, total_pss = total_rss + rss, total_pss + pss
    verdict = "met" if total_pss <= VMPOOLER_MB else "not met"
    print(f"{'web + workers + pool manager':{w}s} {'':5s} {total_rss:8.1f} {total_pss:8.1f}   "
          f"vmpooler {VMPOOLER_MB} MB: {verdict} (PSS)")
    print("the inventory watcher (above) is counted apart: vmpooler has no inventory mirror")


if __name__ == "__main__":
    main()
