"""Chaos harness: kill workers, stop the simulator, kill Redis and load the API, then prove
the invariants of DESIGN.md "Invariants in operation" hold and time the recovery.

    .venv/bin/python tools/chaos/run.py            # the full run (`make chaos`)
    .venv/bin/python tools/chaos/run.py --quick    # a short run (part of `make test`)
    .venv/bin/python tools/chaos/run.py --only kills,redis --kills 5

Everything real: PostgreSQL at 127.0.0.1:5432 (a database of its own, dropped and created
again, ``chaos_vmportal`` or --database), a redis-server of its own on a free port, the
simulator (tests/vcsim.py) with -method-delay so calls are slow enough to interrupt,
gunicorn and one `manage.py rqworker` per queue, the `default` one hosting the pool manager
(`--poolmanager`, README step 3), so a kill of that worker takes the pool manager with it.
Scenarios:

- kills:    N `kill -9`s of the worker running a fill, a destroy, an on-demand request,
            a template copy or a VM task (snapshot/disk), each at a random moment of it;
- vcenter:  the simulator stopped for S seconds while a fill runs (its inventory is saved
            and loaded again, as a vCenter that comes back);
- redis:    redis-server killed (-9) and started again empty while clients work;
- database: PostgreSQL drops every session of the database (pg_terminate_backend, as a
            restart or a failover does) N times while clients work and a fill runs;
- load:     C clients check out and return through the vmpooler API for S seconds while
            the pool manager refills the pool.

After each, every invariant is read from the database and the simulator until all are 0,
every pool is full and healthy and nothing the fault left in flight remains (recovery),
or until the rows' bound has passed. The table is printed; the exit status is 1 when any
invariant is not 0 or a scenario did not recover. Logs of every process: var/chaos/.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from procs import RedisServer, Supervisor, free_port, gunicorn, manage, wait_for_port  # noqa: E402

SIM_DELAYS = ("CloneVM_Task:1500,PowerOnVM_Task:300,PowerOffVM_Task:200,Destroy_Task:600,"
              "CreateSnapshot_Task:1500,RevertToSnapshot_Task:1000,ReconfigVM_Task:800,MarkAsTemplate:500")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Detected|Fault|Unreachable|Timeout)\b: ")
KINDS = ("fill", "destroy", "ondemand", "copy", "vmtask")
JOB_KIND = {"fill": "pools.fill", "destroy": "pools.destroy", "ondemand": "leases.ondemand",
            "copy": "templates.copy_to_cluster", "vmtask": "leases.vm_task"}
# How long into a job a kill may land, by kind: roughly how long the job's slow calls take.
KILL_WINDOW = {"fill": 2.0, "destroy": 0.9, "ondemand": 3.0, "copy": 2.5, "vmtask": 1.5}


@dataclass
class Profile:
    kills: int
    vcenter_outage: float
    redis_outage: float
    load_seconds: float
    load_clients: int
    load_pool_size: int
    database_drops: int = 3
    load_hold: float = 2.0  # a client keeps its VM up to this long (uniform) before returning it
    fixed_size: int = 4
    plain_size: int = 3
    # VMPORTAL_JOB_STALE_AFTER for every process; None: the app's default.
    job_stale_after: int | None = None


FULL = Profile(kills=20, vcenter_outage=60, redis_outage=30, load_seconds=60, load_clients=32, load_pool_size=60,
               database_drops=6)
# A shorter heartbeat bound keeps the quick run short; the rule it tests is the same.
QUICK = Profile(kills=5, vcenter_outage=10, redis_outage=5, load_seconds=10, load_clients=32, load_pool_size=16,
                job_stale_after=15)


@dataclass
class Result:
    name: str
    fault: str
    counts: dict[str, int]
    recovery: float | None
    notes: list[str] = field(default_factory=list)
    details: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.recovery is not None and not any(self.counts.values())


def say(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- set-up


def fresh_database(name: str) -> str:
    import psycopg

    base = urlsplit(os.environ.get("CHAOS_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    with psycopg.connect(urlunsplit(base._replace(path="/postgres")), autocommit=True) as conn:
        # Fresh each run: the audit table is append-only, so old rows cannot be cleared.
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(base._replace(path=f"/{name}"))


class Harness:
    def __init__(self, args: argparse.Namespace, profile: Profile):
        self.args, self.profile = args, profile
        self.log_dir = ROOT / "var" / "chaos"
        shutil.rmtree(self.log_dir, ignore_errors=True)
        self.log_dir.mkdir(parents=True)
        self.rng = random.Random(args.seed)
        self.supervisor = Supervisor()
        self.redis = RedisServer(self.log_dir)
        self.sim = None
        self.sim_flags: list[str] = []
        self.sim_port = free_port()
        self.web_port = free_port()
        self.tokens: list[str] = []
        self.driver_token = ""
        self.copy_targets: list[tuple[int, int]] = []
        self.originals: frozenset[str] = frozenset()
        self.log_offsets: dict[str, int] = {}
        self.carried: dict[str, set[str]] = {}  # violations already reported, by invariant

    # processes ---------------------------------------------------------------
    def start(self) -> None:
        say(f"database {self.args.database}, logs in {self.log_dir}")
        url = fresh_database(self.args.database)
        self.redis.start()
        os.environ.update({
            "DATABASE_URL": url, "REDIS_URL": self.redis.url, "DJANGO_SETTINGS_MODULE": "vmportal.settings",
            "VMPORTAL_VAR_DIR": str(self.log_dir), "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1",
            # The load is the point: no rate limits, and one lessee may hold many VMs.
            "VMPORTAL_API_RATE_LIMIT_PER_IP": "0", "VMPORTAL_API_RATE_LIMIT_PER_TOKEN": "0",
            "VMPORTAL_MAX_LEASES_PER_USER": "0",
        })
        # PostgreSQL needs one explicit key for every process; a throwaway one for the run.
        os.environ.setdefault("SECRET_KEY", "vmportal-chaos-only-not-a-secret")
        if self.profile.job_stale_after:
            os.environ["VMPORTAL_JOB_STALE_AFTER"] = str(self.profile.job_stale_after)
        import subprocess

        subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "--no-input", "-v", "0"], check=True,
                       cwd=ROOT)
        import django

        django.setup()
        self.start_simulator()
        self.seed()
        sup, logs = self.supervisor, self.log_dir
        sup.add(gunicorn(self.web_port, log_dir=logs))
        worker = ("rqworker", "--worker-class", "rq.SimpleWorker")
        with_manager = ["default", "--poolmanager", "--poolmanager-interval", "3"]
        for name, queues in (("clone-1", ["clone"]), ("clone-2", ["clone"]), ("purge-1", ["purge"]),
                             ("purge-2", ["purge"]), ("default", with_manager), ("deploy", ["deploy"])):
            sup.add(manage(name, *worker, *queues, log_dir=logs))
        sup.run()
        wait_for_port(self.web_port, 30)

    def start_simulator(self, *, again: bool = False) -> None:
        from tests import vcsim as launcher

        state = self.log_dir / "vcsim-state"
        if not again:
            self.sim_flags = ["-clusters", "4", "-guest-ip", "10.30.0.0/16", "-guest-ip-delay", "1s",
                              "-method-delay", SIM_DELAYS, "-save", str(state), "-load", str(state)]
        os.environ["VCSIM_STDERR"] = ""  # quiet; its stderr is of no use here
        self.sim = launcher.start(*self.sim_flags, listen=f"127.0.0.1:{self.sim_port}")

    def stop(self) -> None:
        self.supervisor.stop_all()
        if self.sim is not None:
            self.sim.stop()
        self.redis.stop()

    # data --------------------------------------------------------------------
    def seed(self) -> None:
        from django.contrib.auth.models import User

        from apps.api.tokens import create_token
        from apps.firstboot.models import AddressRange, Method, PoolFirstBoot
        from apps.inventory.models import Cluster, Folder, VCenter
        from apps.inventory.services import sync_inventory
        from apps.pools.models import Pool
        from apps.pools.templates import register_template
        from apps.vsphere.inventory import fetch_inventory
        from apps.vsphere.session import Endpoint, connect

        vc = VCenter.objects.create(name="chaos", host=self.sim.address, username=self.sim.username,
                                    password=self.sim.password, insecure=True, task_limit=16)
        assert sync_inventory(vc).ok, "the simulator's inventory could not be synced"
        with connect(Endpoint.from_vcenter(vc)) as conn:
            self.originals = frozenset(rec.moid for rec in fetch_inventory(conn).vms)
        folder = Folder.objects.get(vcenter=vc, path="DC0/vm/vmportal")
        templates = {name: register_template(vcenter=vc, name=name, inventory_path=f"DC0/vm/Templates/{path}",
                                             os_name=name, prepare_now=True)
                     for name, path in (("debian-12", "debian-12"), ("ubuntu-24-04", "ubuntu-24.04"))}
        boot = timedelta(seconds=60)
        pools = {}
        for name, template, size in (("fixed", "debian-12", self.profile.fixed_size),
                                     ("plain", "ubuntu-24-04", self.profile.plain_size),
                                     ("load", "debian-12", 0)):
            t = templates[template]
            pools[name] = Pool.objects.create(name=name, template=t, cluster=t.copies.get().cluster, folder=folder,
                                              size=size, boot_timeout=boot)
        rng = AddressRange.objects.create(name="chaos", network="10.40.0.0/22", first="10.40.0.10",
                                          last="10.40.3.250", gateway="10.40.0.1", dns_servers="10.40.0.2")
        PoolFirstBoot.objects.create(pool=pools["fixed"], method=Method.CUSTOMIZATION, address_range=rng,
                                     domain="chaos.lab")
        for t in templates.values():
            home = t.copies.get().cluster_id
            self.copy_targets += [(t.pk, c) for c in Cluster.objects.filter(vcenter=vc).exclude(pk=home)
                                  .values_list("pk", flat=True)]
        self.rng.shuffle(self.copy_targets)
        driver = User.objects.create_user("chaos-driver")
        self.driver_token = create_token(user=driver, name="chaos")[1]
        for i in range(self.profile.load_clients):
            user = User.objects.create_user(f"chaos-client-{i}")
            self.tokens.append(create_token(user=user, name="chaos")[1])

    # helpers -----------------------------------------------------------------
    def api(self, stats=None):
        from load import Api, Stats

        return Api(self.web_port, self.driver_token, stats or Stats())

    def worker_running(self, job_pk: int):
        """The managed worker whose RQ worker is running this Job, if we can tell."""
        import django_rq
        from rq import Worker

        from apps.jobs.runner import rq_job_id

        try:
            workers = Worker.all(connection=django_rq.get_connection("default"))
        except Exception:  # noqa: BLE001 - Redis may be gone; then we cannot tell
            return None
        for w in workers:
            if w.get_current_job_id() == rq_job_id(type("J", (), {"pk": job_pk})()):
                for p in self.supervisor.procs:
                    if p.pid == w.pid:
                        return p
        return None

    def wait_running(self, kind: str, since, timeout: float = 30.0):
        from apps.jobs.models import Job

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = Job.objects.filter(kind=kind, status=Job.Status.RUNNING, started_at__gte=since).order_by("pk").first()
            if job is not None:
                return job
            time.sleep(0.1)
        return None

    def recover(self, name: str, fault: str, fault_ended_at, *, errors=lambda: 0, notes=()) -> Result:
        from invariants import stuck_after, table, wait_for_recovery

        # Past the rows' bound, whatever the fault left in flight is stuck by definition.
        deadline = stuck_after().total_seconds() + 15
        snap, took = wait_for_recovery(fault_ended_at=fault_ended_at, deadline_s=deadline, errors_5xx=errors,
                                       originals=self.originals, carried=self.carried, progress=say)
        for key, ids in snap.identities.items():
            self.carried.setdefault(key, set()).update(ids)
        result = Result(name, fault, dict(snap.counts), took, list(notes), {k: v for k, v in snap.details.items() if v})
        if snap.vsphere_error:
            result.notes.append(f"simulator unreadable at the end: {snap.vsphere_error}")
        say(table(f"after {name}: {fault}", snap, took))
        logged = self.logged_errors()
        if logged:
            say("    exceptions in the processes' logs since the last check: "
                + "; ".join(f"{n}x {line}" for line, n in logged.most_common(8)))
            result.notes += [f"logged {n}x {line}" for line, n in logged.most_common(8)]
        restarts = [f"{n} (exit {c})" for t, n, c in self.supervisor.restarts]
        if restarts:
            say(f"    processes restarted so far: {', '.join(restarts)}")
        return result

    def logged_errors(self) -> Counter:
        """Exception lines (the last line of each traceback) logged since the last call, by text."""
        found: Counter = Counter()
        for path in sorted(self.log_dir.glob("*.log")):
            with path.open("rb") as f:
                f.seek(self.log_offsets.get(path.name, 0))
                data = f.read()
                self.log_offsets[path.name] = f.tell()
            for line in data.decode(errors="replace").splitlines():
                if EXCEPTION_LINE.match(line):
                    found[f"{path.stem}: {line[:160]}"] += 1
        return found

    def wait_full(self, timeout: float) -> bool:
        from invariants import pools_state

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pools, full = pools_state()
            if full:
                return True
            time.sleep(1)
        say(f"  pools not full after {timeout:.0f}s: {pools}")
        return False


# --------------------------------------------------------------------------- scenarios


def _now():
    from django.utils import timezone

    return timezone.now()


def checkout_and_return(h: Harness, pool: str, n: int) -> list[str]:
    """Lease n VMs and give them back: destroys, and a fill to replace them."""
    api = h.api()
    hosts = [host for host in (api.checkout(pool) for _ in range(n)) if host]
    for host in hosts:
        api.give_back(host)
    api.close()
    return hosts


def trigger(h: Harness, kind: str) -> str:
    """Start work of this kind; returns what was started."""
    from apps.inventory.models import Cluster
    from apps.pools.models import Template
    from apps.pools.templates import start_copy_to_cluster

    api = h.api()
    try:
        if kind in ("fill", "destroy"):
            pool = h.rng.choice(["fixed", "plain"])
            return f"returned {checkout_and_return(h, pool, 2)} of {pool}"
        if kind == "ondemand":
            status, data = api.call("POST", "/api/v3/ondemandvm", {"plain": "1"})
            return f"on-demand request {data.get('request_id')} ({status})"
        if kind == "copy":
            if not h.copy_targets:
                return "no template copy target left"
            template_id, cluster_id = h.copy_targets.pop()
            copy = start_copy_to_cluster(template=Template.objects.get(pk=template_id),
                                         cluster=Cluster.objects.get(pk=cluster_id))
            return f"copy of {copy}"
        host = api.checkout("plain") or api.checkout("fixed")
        if host is None:
            return "no VM to snapshot"
        what = h.rng.choice(["snapshot", "disk/1"])
        status, _ = api.call("POST", f"/api/v3/vm/{host}/{what}")
        return f"{what} of {host} ({status})"
    finally:
        api.close()


def kill_during(h: Harness, kind: str) -> str:
    from apps.jobs.models import Job

    since = _now()
    started = trigger(h, kind)
    job = h.wait_running(JOB_KIND[kind], since)
    if job is None:
        return f"{kind}: {started}; no {JOB_KIND[kind]} job ran within 30 s, nothing killed"
    delay = h.rng.uniform(0.1, KILL_WINDOW[kind])
    time.sleep(delay)
    victim = h.worker_running(job.pk)
    if victim is None:
        status = Job.objects.filter(pk=job.pk).values_list("status", flat=True).first()
        return f"{kind}: {started}; {job.kind} #{job.pk} was {status} when the kill came, no worker held it"
    victim.kill9()
    return f"{kind}: {started}; kill -9 {victim.name} (pid {victim.proc.pid}) {delay:.1f}s into {job.kind} #{job.pk}"


def scenario_kills(h: Harness) -> Result:
    n = h.profile.kills
    kinds = [KINDS[i % len(KINDS)] for i in range(n)]
    h.rng.shuffle(kinds)
    say(f"\n== {n} kill -9s of workers during {', '.join(KINDS)}")
    notes, landed = [], 0
    for i, kind in enumerate(kinds, 1):
        for _attempt in range(3):  # a job may finish before its kill comes: then start another
            line = kill_during(h, kind)
            notes.append(line)
            say(f"  {i:2}. {line}")
            time.sleep(h.rng.uniform(0.5, 2.0))
            if "kill -9" in line:
                landed += 1
                break
    from apps.leases.models import Lease

    # The driver's leases (VM tasks, on-demand VMs) go back: destroys the system must finish.
    api = h.api()
    for name in Lease.objects.active().filter(user__username="chaos-driver").values_list("vm__name", flat=True):
        api.give_back(name)
    api.close()
    return h.recover("kills", f"{landed} of {n} kill -9s landed mid-job", _now(), notes=notes)


def scenario_vcenter(h: Harness) -> Result:
    from load import Loop

    from apps.vsphere.session import close_all

    seconds = h.profile.vcenter_outage
    say(f"\n== simulator stopped for {seconds:.0f}s during a fill")
    bg = Loop(h.web_port, h.tokens, ["fixed", "plain"], clients=2, pause=0.5).start()
    since = _now()
    hosts = checkout_and_return(h, "fixed", 3)
    job = h.wait_running("pools.fill", since)
    time.sleep(h.rng.uniform(0.2, 1.5))
    h.sim.stop()
    from apps.pools.models import VM, VMState

    in_flight = VM.objects.filter(state__in=(VMState.CLONING, VMState.BOOTING)).count()
    note = (f"returned {len(hosts)} VMs of fixed; fill #{job.pk if job else '-'} running, "
            f"{in_flight} VMs cloning/booting when the simulator stopped")
    say(f"  {note}")
    time.sleep(seconds)
    h.start_simulator(again=True)
    close_all()
    ended = _now()
    stats = bg.stop()
    say(f"  background clients: {stats.summary()}")
    result = h.recover("vcenter", f"simulator down {seconds:.0f}s during a fill", ended,
                       errors=lambda: len(stats.errors_5xx), notes=[note, stats.summary(), *stats.errors_5xx[:5]])
    return result


def scenario_redis(h: Harness) -> Result:
    from load import Loop

    seconds = h.profile.redis_outage
    say(f"\n== redis-server killed (-9) for {seconds:.0f}s, started again empty")
    bg = Loop(h.web_port, h.tokens, ["fixed", "plain"], clients=4, pause=0.3).start()
    time.sleep(2)
    h.redis.kill9()
    # Work asked for while Redis is gone: its jobs must not be lost.
    api = h.api()
    hosts = [host for host in (api.checkout("plain") for _ in range(2)) if host]
    for host in hosts:
        api.give_back(host)
    asked = dict(api.stats.statuses)
    api.close()
    time.sleep(seconds)
    h.redis.start()
    note = f"while Redis was down the driver checked out and returned {len(hosts)} VMs of plain (answers {asked})"
    return _fault_over(h, bg, "redis", f"Redis down {seconds:.0f}s, back empty", note)


def _fault_over(h: Harness, bg, name: str, fault: str, note: str) -> Result:  # noqa: ANN001 (load.Loop)
    """A fault the background clients worked through is over: their answers, then the recovery."""
    ended = _now()
    time.sleep(3)
    stats = bg.stop()
    say(f"  {note}; background clients: {stats.summary()}")
    return h.recover(name, fault, ended, errors=lambda: len(stats.errors_5xx),
                     notes=[note, stats.summary(), *stats.errors_5xx[:5]])


def scenario_database(h: Harness) -> Result:
    from django.db import connection
    from load import Loop

    n = h.profile.database_drops
    say(f"\n== PostgreSQL drops every session of the database {n} times while clients work and a fill runs")
    bg = Loop(h.web_port, h.tokens, ["fixed", "plain"], clients=4, pause=0.3).start()
    hosts = checkout_and_return(h, "fixed", 2)  # destroys, and a fill to replace them
    dropped = []
    for _ in range(n):
        time.sleep(h.rng.uniform(0.5, 1.5))
        with connection.cursor() as cursor:  # the driver's own session stays
            cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            dropped.append(cursor.fetchone()[0])
    note = f"returned {len(hosts)} VMs of fixed; sessions dropped each time: {dropped}"
    return _fault_over(h, bg, "database", f"all sessions dropped {n} times", note)


def scenario_load(h: Harness) -> Result:
    from load import Loop

    from apps.pools.models import Pool

    p = h.profile
    say(f"\n== {p.load_clients} clients checking out and returning for {p.load_seconds:.0f}s "
        f"(pool of {p.load_pool_size}, pool manager running)")
    Pool.objects.filter(name="load").update(size=p.load_pool_size)
    full = h.wait_full(180)
    say(f"  pool load {'full' if full else 'NOT full'}; clients start")
    loop = Loop(h.web_port, h.tokens, ["load"], clients=p.load_clients, hold=p.load_hold).start()
    time.sleep(p.load_seconds)
    stats = loop.stop()
    ended = _now()
    say(f"  {stats.summary()}")
    result = h.recover("load", f"{p.load_clients} clients for {p.load_seconds:.0f}s", ended,
                       errors=lambda: len(stats.errors_5xx),
                       notes=[stats.summary(), *stats.errors_5xx[:5], *stats.duplicates[:5]])
    result.counts["doubled"] += len(stats.duplicates)
    return result


SCENARIOS = {"kills": scenario_kills, "vcenter": scenario_vcenter, "redis": scenario_redis,
             "database": scenario_database, "load": scenario_load}


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the short run of `make test`")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--kills", type=int, help="kill -9s in the kills scenario")
    parser.add_argument("--vcenter-outage", type=float, help="seconds the simulator is down")
    parser.add_argument("--redis-outage", type=float, help="seconds Redis is down")
    parser.add_argument("--load-seconds", type=float)
    parser.add_argument("--load-clients", type=int)
    parser.add_argument("--database", default=os.environ.get("CHAOS_DB", "chaos_vmportal"))
    parser.add_argument("--seed", type=int, default=None, help="random seed (printed, to repeat a run)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    args.seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    profile = QUICK if args.quick else FULL
    for name in ("kills", "vcenter_outage", "redis_outage", "load_seconds", "load_clients"):
        if getattr(args, name) is not None:
            setattr(profile, name, getattr(args, name))
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")

    say(f"chaos run ({'quick' if args.quick else 'full'}), seed {args.seed}: {profile}")
    started = time.monotonic()
    h = Harness(args, profile)
    results: list[Result] = []
    try:
        h.start()
        say(f"simulator {h.sim.address}, web 127.0.0.1:{h.web_port}, redis {h.redis.url}")
        baseline = h.recover("set-up", "none (baseline)", _now())
        results.append(baseline)
        for name in chosen:
            results.append(SCENARIOS[name](h))
    finally:
        h.stop()

    from invariants import ROWS

    say(f"\n== summary (seed {args.seed}, {time.monotonic() - started:.0f}s)")
    header = f"  {'scenario':<10}" + "".join(f"{key:>11}" for key, _, _ in ROWS) + f"{'recovery':>12}"
    say(header)
    for r in results:
        rec = f"{r.recovery:.1f}s" if r.recovery is not None else "NONE"
        say(f"  {r.name:<10}" + "".join(f"{r.counts.get(key, 0):>11}" for key, _, _ in ROWS) + f"{rec:>12}")
    failed = [r.name for r in results if not r.ok]
    say("  all invariants 0, every scenario recovered" if not failed else f"  FAILED: {', '.join(failed)}")
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "results": [
            {"name": r.name, "fault": r.fault, "counts": r.counts, "recovery": r.recovery, "notes": r.notes,
             "details": r.details} for r in results]}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
