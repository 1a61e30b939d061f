"""A day of bursty checkouts, fixed size against automatic sizing, on the real pool manager.

    .venv/bin/python bench/autosize.py [--hour-seconds 5] [--fixed 4] [--min 1] [--max 10] [--seed 18]
                                       [--schedule 4]

The day is compressed: one hour lasts --hour-seconds real seconds, and the autosize windows
are scaled with it (memory one hour, shrink no sooner than 15 minutes after a change). The
same seeded day (a trickle at night, a steady rate 08-18, bursts at 09:00 and 14:00, each
lease held 1-3 hours) is replayed against the simulator, a real poolmanager process and real
rq workers (clone, purge, default, deploy): once with a fixed size, once automatic, and once
automatic with a schedule (08:00-18:00 of the compressed day, opened an hour early, at least
--schedule VMs; 0 skips that run). A checkout that finds no ready VM is a miss (the API's
503), which automatic sizing counts as demand. Prints, for each: the share of checkouts that
found a ready VM, VM-hours spent ready and idle, and clones made.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB_NAME = "vmportal_bench_autosize"
os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
# Redis database 13 is the benches' own (see bench/fill.py), unless REDIS_URL names another.
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/13")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("SECRET_KEY", "vmportal-bench-only-not-a-secret")
os.environ["DJANGO_SETTINGS_MODULE"] = "vmportal.settings"
os.environ["VMPORTAL_MAX_LEASES_PER_USER"] = "0"


def fresh_database() -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")


def day(seed: int) -> list[tuple[float, float]]:
    """(arrival hour, lease hours) of one day's checkouts, sorted; the same for a seed."""
    rng = random.Random(seed)
    arrivals = []
    for hour in range(24):
        rate = 3.0 if 8 <= hour < 18 else 0.3  # checkouts per hour
        t = float(hour)
        while (t := t + rng.expovariate(rate)) < hour + 1:
            arrivals.append(t)
    for burst in (9.0, 14.0):  # CI fan-out: 8 within ten minutes
        arrivals += [burst + rng.uniform(0, 1 / 6) for _ in range(8)]
    return sorted((t, rng.uniform(1, 3)) for t in arrivals)


def start(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(sim, *, name: str, hour: float, seed: int, fixed: int | None, lo: int, hi: int, schedule: int = 0) -> dict:
    from datetime import timedelta

    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from apps.inventory.models import Cluster, Folder, VCenter
    from apps.leases import services as leases
    from apps.pools.models import VM, Pool, PoolSchedule, Template, VMState

    vc = VCenter.objects.get()
    pool = Pool.objects.create(
        name=name, template=Template.objects.get(vcenter=vc), cluster=Cluster.objects.get(vcenter=vc, name="DC0_C1"),
        folder=Folder.objects.get(vcenter=vc, path="DC0/vm/vmportal"),
        size=fixed if fixed is not None else lo, autosize=fixed is None, min_size=lo, max_size=hi,
    )
    user = get_user_model().objects.get_or_create(username="bench")[0]
    env = {**os.environ,
           "VMPORTAL_AUTOSIZE_WINDOW": str(max(1, round(hour))),
           "VMPORTAL_AUTOSIZE_SHRINK_AFTER": str(round(hour / 4))}
    procs = [start("poolmanager", "--interval", "0.5", env=env)]
    # deploy too: the template's copy to DC0_C1, made when the first pool needs it.
    procs += [start("rqworker", "clone", "purge", "default", "deploy", env=env) for _ in range(2)]
    # Stopped however the run ends: a worker left behind would take the next run's jobs.
    try:
        # Warm up: the pool is full before the day starts, as it would be after the night before.
        deadline = time.monotonic() + 300
        while pool.vms.filter(state=VMState.READY).count() < pool.size:
            assert time.monotonic() < deadline, f"pool {name} did not fill to {pool.size} in 300 s"
            time.sleep(0.2)
            pool.refresh_from_db()
        clones_before = VM.objects.filter(pool=pool).count()
        if schedule:
            # The compressed day's working hours in wall-clock time, which the pool manager reads,
            # opened a compressed hour early: about one clone-and-boot time in the simulator.
            opens = timezone.localtime() + timedelta(seconds=7 * hour)
            closes = timezone.localtime() + timedelta(seconds=18 * hour)
            assert opens.date() == closes.date(), "the compressed working day would cross midnight: run it later"
            PoolSchedule.objects.create(pool=pool, weekdays=str(opens.weekday()), start=opens.time(), end=closes.time(),
                                        min_size=schedule)
        plan = day(seed)
        returns: list[tuple[float, int]] = []
        hits = misses = 0
        idle_seconds = 0.0
        t0 = last = time.monotonic()
        i = 0
        while (now := time.monotonic() - t0) < 24 * hour:
            while i < len(plan) and plan[i][0] * hour <= now:
                try:
                    [lease] = leases.checkout(user=user, pools=[pool])
                except leases.PoolEmpty:
                    misses += 1
                else:
                    hits += 1
                    returns.append((now + plan[i][1] * hour, lease.pk))
                i += 1
            for due, lease_id in [r for r in returns if r[0] <= now]:
                leases.return_lease(user=user, lease_id=lease_id)
                returns.remove((due, lease_id))
            ready = pool.vms.filter(state=VMState.READY).count()
            tick = time.monotonic()
            idle_seconds += ready * (tick - last)
            last = tick
            time.sleep(0.1)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
    pool.refresh_from_db()
    return {"hits": hits, "misses": misses, "idle_vm_hours": idle_seconds / hour,
            "clones": VM.objects.filter(pool=pool).count() - clones_before, "final_size": pool.size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hour-seconds", type=float, default=5.0)
    parser.add_argument("--fixed", type=int, default=4)
    parser.add_argument("--min", type=int, default=1)
    parser.add_argument("--max", type=int, default=10)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--schedule", type=int, default=4, help="at least this many VMs 08-18 (0: no such run)")
    args = parser.parse_args()

    from tests import vcsim as launcher

    fresh_database()
    sim = launcher.start("-guest-ip", "10.40.0.0/16")
    try:
        import django

        django.setup()
        import django_rq
        from django.core.management import call_command

        from apps.inventory.models import VCenter
        from apps.inventory.services import sync_inventory
        from apps.pools.templates import register_template

        call_command("migrate", verbosity=0)
        django_rq.get_connection("default").flushdb()
        vc = VCenter.objects.create(name="bench", host=sim.address, username=sim.username, password=sim.password,
                                    insecure=True, task_limit=10)
        assert sync_inventory(vc).ok
        register_template(vcenter=vc, name="ubuntu", inventory_path="DC0/vm/Templates/ubuntu-24.04", prepare_now=True)
        results = {
            f"fixed size {args.fixed}": run(sim, name="fixed", hour=args.hour_seconds, seed=args.seed,
                                            fixed=args.fixed, lo=args.min, hi=args.max),
            f"automatic {args.min}..{args.max}": run(sim, name="auto", hour=args.hour_seconds, seed=args.seed,
                                                     fixed=None, lo=args.min, hi=args.max),
        }
        if args.schedule:
            results[f"+ 08-18 at least {args.schedule}"] = run(
                sim, name="scheduled", hour=args.hour_seconds, seed=args.seed, fixed=None, lo=args.min, hi=args.max,
                schedule=args.schedule)
    finally:
        sim.stop()
    n = len(day(args.seed))
    print(f"one day, {n} checkouts (seed {args.seed}), one hour = {args.hour_seconds:g} s:")
    for label, r in results.items():
        share = r["hits"] / max(1, r["hits"] + r["misses"])
        print(f"  {label:<22} found a ready VM {share:6.1%}  idle {r['idle_vm_hours']:6.1f} VM-hours  "
              f"clones {r['clones']:3d}  (size at the end {r['final_size']})")


if __name__ == "__main__":
    main()
