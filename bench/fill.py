"""Fill a pool of 200 linked clones from empty, next to a raw pyVmomi clone loop.

    .venv/bin/python bench/fill.py [--size 200] [--limit 10] [--runs N] [--spy FILE | --profile FILE]

Both run against the same simulator in the same run, at the same concurrency (the task
limit). The app's time covers everything a real fill does: reconcile, the RQ job in a real
worker process, slot claims in PostgreSQL, host placement, clone + power-on, waiting for
the guest's IP, and the state changes. Prints both times, the ratio and the CPU time the
worker process spent (the fill's own cost: the simulator shares the machine).

``--spy FILE`` has py-spy sample the worker's stacks that hold the GIL during the fill
(its CPU, without cProfile's overhead). ``--profile FILE`` runs the fill job in this
process instead of a worker, under cProfile (stats written to FILE, the top printed), and
counts its SQL statements and SOAP calls.
``--warm`` has the worker fill a pool of 2 first, untimed: the timed fill is then that of a
worker that has run a job before (pyVmomi imported, its types loaded, a session logged in),
as every fill but a worker's first is; without it each run's worker is fresh.
``BENCH_REDIS_URL`` and ``BENCH_DB`` move the bench off Redis database 13 and its default
database name, when another bench uses them at the same time.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB_NAME = os.environ.get("BENCH_DB", "vmportal_bench_fill")
os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
# Redis database 13 is the benches' own: 0 is a demo's, 11-12 and 14-15 other test runs'.
os.environ["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
os.environ.setdefault("LOG_LEVEL", "WARNING")
# The raw loop runs at this process's priority; the worker, which would lower its own
# (VMPORTAL_WORKER_NICE), runs at the same, so that the ratio compares code, not priority.
os.environ.setdefault("VMPORTAL_WORKER_NICE", "0")
# PostgreSQL needs an explicit key (vmportal/settings.py); a throwaway one for the bench.
os.environ.setdefault("SECRET_KEY", "vmportal-bench-only-not-a-secret")
os.environ["DJANGO_SETTINGS_MODULE"] = "vmportal.settings"


def fresh_database() -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")


def raw_loop(sim, *, count: int, width: int, cluster: str) -> float:
    """The baseline: plain pyVmomi, `width` threads cloning (powerOn) into ``cluster`` and waiting."""
    from pyVim.connect import Disconnect, SmartConnect
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    si = SmartConnect(host=sim.host, port=sim.port, user=sim.username, pwd=sim.password,
                      disableSslCertValidation=True)
    index = si.content.searchIndex
    template = index.FindByInventoryPath("DC0/vm/Templates/ubuntu-24.04")
    folder = index.FindByInventoryPath("DC0/vm/vmportal")
    pool = index.FindByInventoryPath(f"DC0/host/{cluster}").resourcePool
    snapshot = template.snapshot.currentSnapshot if template.snapshot else None
    relocate = vim.vm.RelocateSpec(pool=pool, diskMoveType="createNewChildDiskBacking" if snapshot else None)
    spec = vim.vm.CloneSpec(location=relocate, powerOn=True, snapshot=snapshot)
    names = iter(range(count))
    lock = threading.Lock()

    def loop() -> None:
        while True:
            with lock:
                n = next(names, None)
            if n is None:
                return
            WaitForTask(template.CloneVM_Task(folder=folder, name=f"raw-{n}", spec=spec))

    threads = [threading.Thread(target=loop) for _ in range(width)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    made = [vm for vm in folder.childEntity if vm.name.startswith("raw-")]
    assert len(made) == count, f"raw loop made {len(made)} clones, not {count}"
    for vm in made:  # out of the way of the app's fill (not timed)
        WaitForTask(vm.PowerOffVM_Task())
        WaitForTask(vm.Destroy_Task())
    Disconnect(si)
    return elapsed


def app_setup(sim, *, size: int, width: int):
    """The vCenter row, inventory, the prepared template (its snapshot) and an empty pool."""
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    import django_rq

    from apps.inventory.models import Folder, VCenter
    from apps.inventory.services import sync_inventory
    from apps.pools.models import Pool
    from apps.pools.templates import register_template

    django_rq.get_connection("default").flushdb()
    vc = VCenter.objects.create(name="bench", host=sim.address, username=sim.username, password=sim.password,
                                insecure=True, task_limit=width)
    assert sync_inventory(vc).ok
    template = register_template(vcenter=vc, name="ubuntu", inventory_path="DC0/vm/Templates/ubuntu-24.04",
                                 prepare_now=True)
    # The cluster of the template's own (prepared) copy: a pool elsewhere would first wait
    # for a copy job, which is not what this measures.
    pool = Pool.objects.create(
        name="bench", template=template, cluster=template.copies.get().cluster,
        folder=Folder.objects.get(vcenter=vc, path="DC0/vm/vmportal"), size=size,
    )
    return pool


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def another_pool(pool, *, name: str, size: int | None = None):
    from apps.pools.models import Pool

    return Pool.objects.create(name=name, template=pool.template, cluster=pool.cluster, folder=pool.folder,
                               size=size or pool.size)


def app_fill(pool, *, width: int, spy: str | None = None, warm=None) -> tuple[float, int, float]:
    """The fill by a real worker process: seconds, VMs ready, the worker's CPU seconds.
    ``spy``: py-spy records the worker's GIL-holding stacks during the fill into that file.
    ``warm``: a pool the worker fills first, untimed."""
    from apps.pools.manager import reconcile_pool
    from apps.pools.models import VMState

    size = pool.size
    import django_rq
    from rq import Worker

    env = {**os.environ, "VMPORTAL_CLONE_LIMIT": str(width)}
    # A worker already running, as in production: its start-up is not part of a fill.
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "rqworker", "clone", "--worker-class", "rq.SimpleWorker"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    redis = django_rq.get_connection("clone")
    while not any(w.get_state() == "idle" for w in Worker.all(connection=redis)):
        assert worker.poll() is None, "the worker did not start"
        time.sleep(0.05)
    if warm is not None:
        reconcile_pool(warm.pk)
        while warm.vms.filter(state=VMState.READY).count() < warm.size:
            assert worker.poll() is None, "the worker died during the warm-up fill"
            time.sleep(0.05)
    time.sleep(0.5)  # its start-up logging (or the warm-up's end) done: the CPU counted below is the fill's
    cpu_before = cpu_seconds(worker.pid)
    spying = None
    if spy:
        spying = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(worker.pid),
                                   "--gil", "--rate", "500", "--format", "raw", "--output", spy, "--nonblocking"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)  # attached before the fill starts
    start = time.perf_counter()
    reconcile_pool(pool.pk)
    ready = 0
    while ready < size and worker.poll() is None:
        time.sleep(0.02)
        ready = pool.vms.filter(state=VMState.READY).count()
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds(worker.pid) - cpu_before
    if spying is not None:
        spying.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        spying.wait(timeout=30)
    worker.terminate()
    worker.wait(timeout=60)
    return elapsed, ready, cpu


def profiled_fill(pool, *, width: int, out: str) -> None:
    """The fill job run here, under cProfile, counting its SQL statements by kind."""
    import cProfile
    import pstats
    from collections import Counter

    from django.conf import settings
    from django.db import connection

    from apps.jobs import runner
    from apps.jobs.models import Job
    from apps.pools.manager import reconcile_pool
    from apps.pools.models import VMState

    settings.VMPORTAL_CLONE_LIMIT = width
    reconcile_pool(pool.pk)
    job = Job.objects.get(kind="pools.fill", status=Job.Status.QUEUED)
    kinds: Counter[str] = Counter()
    statements: Counter[str] = Counter()

    def count(execute, sql, params, many, context):
        kinds[sql.lstrip().split(None, 1)[0].upper()] += 1
        statements[sql[:150]] += 1
        return execute(sql, params, many, context)

    # The simulator's share of the machine is its answers to these: SOAP calls by method.
    from pyVmomi import SoapStubAdapter

    soap: Counter[str] = Counter()
    invoke = SoapStubAdapter.InvokeMethod

    def counted(self, mo, info, args, outerStub=None):  # noqa: ANN001, ANN202, N803
        soap[info.wsdlName] += 1
        return invoke(self, mo, info, args, outerStub)

    profiler = cProfile.Profile()
    cpu, start = time.process_time(), time.perf_counter()
    SoapStubAdapter.InvokeMethod = counted
    try:
        with connection.execute_wrapper(count):
            profiler.runcall(runner.run, job.pk)
    finally:
        SoapStubAdapter.InvokeMethod = invoke
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    profiler.dump_stats(out)
    ready = pool.vms.filter(state=VMState.READY).count()
    pstats.Stats(out).sort_stats("cumulative").print_stats(25)
    for sql, n in statements.most_common(15):
        print(f"{n:6d}  {sql}")
    print(f"SOAP calls: {sum(soap.values())} ({dict(soap.most_common())})")
    print(f"fill job in-process: {elapsed:.2f} s, CPU {cpu:.2f} s (all threads), {ready} ready; "
          f"SQL statements in the job's thread: {sum(kinds.values())} ({dict(kinds.most_common())}); "
          f"profile in {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--limit", type=int, default=10, help="clone tasks in flight (both sides)")
    parser.add_argument("--profile", metavar="FILE", help="run the fill here under cProfile; no raw loop")
    parser.add_argument("--runs", type=int, default=1,
                        help="raw loop then fill, this many times (a new pool each), and the median ratio")
    parser.add_argument("--warm", action="store_true",
                        help="the worker fills a pool of 2 first (untimed): a worker that has run a job before")
    parser.add_argument("--spy", metavar="FILE", help="py-spy the worker's GIL-holding stacks (raw format) into FILE")
    args = parser.parse_args()

    from tests import vcsim as launcher

    fresh_database()
    sim = launcher.start("-guest-ip", "10.40.0.0/16")
    try:
        # Set up first: preparing the template gives it the snapshot the raw loop's
        # linked clones need too. Then the raw loop, then the app's fill, on one simulator.
        pool = app_setup(sim, size=args.size, width=args.limit)
        if args.profile:
            profiled_fill(pool, width=args.limit, out=args.profile)
            return
        results = []
        for run in range(args.runs):
            if run:  # a new empty pool beside the full one: the same simulator, the same template
                pool = another_pool(pool, name=f"bench-{run}")
            raw = raw_loop(sim, count=args.size, width=args.limit, cluster=pool.cluster.name)
            warm = another_pool(pool, name=f"warm-{run}", size=2) if args.warm else None
            app, ready, cpu = app_fill(pool, width=args.limit, spy=args.spy, warm=warm)
            results.append(app / raw)
            print(f"fill {args.size} linked clones (task limit {args.limit}): app {app:.2f} s ({ready} ready, "
                  f"worker CPU {cpu:.2f} s), raw pyVmomi loop {raw:.2f} s, ratio {app / raw:.2f}x, "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        sim.stop()
    if args.runs > 1:
        print(f"median ratio of {args.runs} runs: {statistics.median(results):.2f}x")

if __name__ == "__main__":
    main()
