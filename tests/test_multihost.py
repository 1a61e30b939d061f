"""Two "hosts" sharing only PostgreSQL, Redis, the simulator and the upload directory.

Each host is a set of process groups with its own working directory, var dir and
environment: a web server (gunicorn), a clone worker, a pool manager and an inventory
watcher. Against the simulator's own record of task calls (GET /_vcsim/calls) it proves the
per-vCenter and global clone limits hold across both worker hosts, no pool is over-filled
or double-cloned, a checkout on one host and a return on the other see the same state, an
OVA uploaded through host A is deployed by host B's worker, and a datastore renamed in
vCenter is used by its new name on both hosts within one watcher cycle.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
import requests
from django.db import close_old_connections, connection
from pyVmomi import vim

from apps.api.tokens import create_token
from apps.firstboot.models import Delivery, Method, PoolFirstBoot, SeedISO
from apps.inventory.models import Cluster, Datastore, Folder, VCenter
from apps.jobs.models import Job
from apps.leases.models import Lease
from apps.pools.models import VM, Pool, Template, TemplateStatus, VMState
from apps.vsphere import tasks
from apps.vsphere.session import Endpoint, connect
from tests.live import GUEST, make_pool, site, vms_in_folder
from tests.vsphere.test_templates import ova_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "chaos"))
from procs import Managed, free_port, wait_for_port  # noqa: E402 - the chaos harness's process helpers

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
TASK_LIMIT = 2  # the vCenter's own limit, first phase
GLOBAL_LIMIT = 3  # VMPORTAL_CLONE_LIMIT on both hosts, second phase
CLONE_DELAY_MS = 700  # each CloneVM_Task stays in flight this long, so overlaps are seen
WATCH_CYCLE = 5  # watch_inventory --max-wait: the longest one wait for changes lasts


class HostProcess(Managed):
    """A chaos-harness process started in its host's own working directory."""

    cwd: Path = ROOT

    def start(self) -> HostProcess:
        log = open(self.log_dir / f"{self.name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        self.starts += 1
        return self


class Host:
    def __init__(self, name: str, base: Path, shared_uploads: Path, common_env: dict[str, str], queues: list[str]):
        self.name = name
        self.dir = base / name
        (self.dir / "var").mkdir(parents=True)
        self.port = free_port()
        self.env = {**common_env, "VMPORTAL_VAR_DIR": str(self.dir / "var"), "VMPORTAL_UPLOAD_DIR": str(shared_uploads)}
        manage = [sys.executable, str(ROOT / "manage.py")]
        self.procs = [
            self._proc("web", [sys.executable, "-m", "gunicorn", "vmportal.wsgi", "--pythonpath", str(ROOT),
                               "--bind", f"127.0.0.1:{self.port}", "--workers", "1", "--worker-class", "gthread",
                               "--threads", "4", "--log-level", "warning", "--timeout", "60"]),
            self._proc("worker", [*manage, "rqworker", *queues, "--worker-class", "rq.SimpleWorker"]),
            self._proc("poolmanager", [*manage, "poolmanager", "--interval", "2"]),
            # The default full sync interval (900 s): a rename must arrive as an event.
            self._proc("watcher", [*manage, "watch_inventory", "--reload-every", "5",
                                   "--max-wait", str(WATCH_CYCLE)]),
        ]

    def _proc(self, role: str, argv: list[str]) -> HostProcess:
        p = HostProcess(f"{self.name}-{role}", argv, self.dir, {**os.environ, **self.env}, supervised=False)
        p.cwd = self.dir
        return p

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        for p in self.procs:
            p.start()

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{(self.dir / f'{p.name}.log').read_text()[-1500:]}" for p in self.procs)


def sim_calls(sim, *, reset: bool = False) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the simulator's self-signed certificate
        if reset:
            return requests.post(f"https://{sim.address}/_vcsim/calls/reset", verify=False, timeout=5).json()  # noqa: S501
        return requests.get(f"https://{sim.address}/_vcsim/calls", verify=False, timeout=5).json()  # noqa: S501


def wait_until(what: str, check, timeout: float, hosts: list[Host]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        close_old_connections()
        value = check()
        if value:
            return value
        for h in hosts:
            dead = [p.name for p in h.procs if not p.alive()]
            assert not dead, f"{dead} exited while waiting for {what}\n{h.logs()}"
        time.sleep(0.25)
    states = Counter(VM.objects.values_list("pool__name", "state", "state_reason"))
    errors = list(Job.objects.exclude(error="").values_list("kind", "error").order_by("-pk")[:5])
    raise AssertionError(f"not within {timeout:.0f}s: {what}\nVMs: {states}\njob errors: {errors}\n"
                         + "\n".join(h.logs() for h in hosts))


def full(*pools: Pool) -> bool:
    for pool in pools:
        pool.refresh_from_db()
        vms = pool.vms.exclude(state__in=(VMState.DESTROYED,))
        if vms.filter(state=VMState.READY).count() != pool.size or vms.exclude(state=VMState.READY).exists():
            return False
    return not Job.objects.filter(kind="pools.fill", status__in=(Job.Status.QUEUED, Job.Status.RUNNING)).exists()


def assert_not_overfilled(vc, pools: list[Pool]) -> None:
    in_vcenter = [v.name for v in vms_in_folder(vc)]
    assert len(in_vcenter) == len(set(in_vcenter)), f"names cloned twice: {Counter(in_vcenter).most_common(3)}"
    live = VM.objects.exclude(state=VMState.DESTROYED)
    assert sorted(in_vcenter) == sorted(live.values_list("name", flat=True))
    for pool in pools:
        assert live.filter(pool=pool).count() == pool.size, f"{pool.name} holds more or fewer VMs than its size"


def rename_datastore(vc, moid: str, name: str) -> None:
    with connect(Endpoint.from_vcenter(vc)) as conn:
        tasks.run_task(conn, conn.ref(vim.Datastore, moid).Rename_Task, newName=name, operation="rename",
                       obj=moid, timeout=30)


def test_two_hosts_share_limits_pools_leases_uploads_and_renames(vcsim_factory, redis_conn, admin_user, engineer,
                                                                  settings, tmp_path):
    started = time.monotonic()
    sim = vcsim_factory(*GUEST, "-method-delay", f"CloneVM_Task:{CLONE_DELAY_MS}")
    vc, folder = site(sim, task_limit=TASK_LIMIT)
    deb = make_pool(vc, folder, name="deb", size=0)
    seed_ds = Datastore.objects.get(vcenter=vc, name="LocalDS_1")
    seeded = make_pool(vc, folder, name="seeded", template_name="ubuntu-24.04", size=0)
    PoolFirstBoot.objects.create(pool=seeded, method=Method.CLOUD_INIT, delivery=Delivery.SEED_ISO,
                                 seed_datastore=seed_ds)
    db = connection.settings_dict
    common = {
        "DJANGO_SETTINGS_MODULE": "tests.settings", "SECRET_KEY": settings.SECRET_KEY, "REDIS_URL": settings.REDIS_URL,
        "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/"
                        f"{db['NAME']}",
        "VMPORTAL_CLONE_LIMIT": str(GLOBAL_LIMIT), "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1",
        "VMPORTAL_API_RATE_LIMIT_PER_IP": "0",
    }
    shared = tmp_path / "shared-uploads"
    shared.mkdir()
    # Only host B's worker takes deploy jobs: an OVA uploaded through A must travel to B.
    a = Host("host-a", tmp_path, shared, common, ["clone", "purge", "default"])
    b = Host("host-b", tmp_path, shared, common, ["clone", "deploy", "purge", "default"])
    hosts = [a, b]
    try:
        for h in hosts:
            h.start()
        for h in hosts:
            wait_for_port(h.port, 60, h.procs[0].proc)

        # 1. The vCenter's task limit holds across both worker hosts.
        sim_calls(sim, reset=True)
        Pool.objects.filter(pk=deb.pk).update(size=6)
        Pool.objects.filter(pk=seeded.pk).update(size=2)
        wait_until("both pools filled under the vCenter's limit", lambda: full(deb, seeded), 90, hosts)
        clones = sim_calls(sim)["CloneVM_Task"]
        assert clones["max_in_flight"] <= TASK_LIMIT, clones
        assert clones["total"] == VM.objects.count() == 8, clones  # each VM cloned once: none twice
        assert_not_overfilled(vc, [deb, seeded])

        # 2. The global limit (VMPORTAL_CLONE_LIMIT) holds when the vCenter's would allow more.
        VCenter.objects.filter(pk=vc.pk).update(task_limit=10)
        sim_calls(sim, reset=True)
        Pool.objects.filter(pk=deb.pk).update(size=14)
        wait_until("deb filled under the global limit", lambda: full(deb, seeded), 90, hosts)
        clones = sim_calls(sim)["CloneVM_Task"]
        assert clones["max_in_flight"] <= GLOBAL_LIMIT, clones
        assert clones["max_in_flight"] >= 2, f"clones never overlapped, the limit was not exercised: {clones}"
        assert clones["total"] == 8, clones
        assert_not_overfilled(vc, [deb, seeded])

        # 3. A checkout through host A and a return through host B see the same lease.
        token = create_token(user=engineer, name="multihost")[1]
        api = requests.Session()
        api.headers["X-AUTH-TOKEN"] = token
        got = api.post(f"{a.url}/api/v3/vm/deb", timeout=10)
        assert got.status_code == 200, got.text
        host_name = got.json()["deb"]["hostname"].split(".")[0]
        seen = api.get(f"{b.url}/api/v3/vm/{host_name}", timeout=10).json()[host_name]
        assert seen["state"] == "running" and seen["template"] == "deb", seen
        assert api.delete(f"{b.url}/api/v3/vm/{host_name}", timeout=10).json() == {"ok": True}
        assert not Lease.objects.active().filter(vm__name=host_name).exists()
        assert api.delete(f"{a.url}/api/v3/vm/{host_name}", timeout=10).status_code in (404, 409, 410)
        wait_until("deb refilled after the return", lambda: full(deb, seeded), 60, hosts)
        assert_not_overfilled(vc, [deb, seeded])

        # 4. A datastore renamed in vCenter: the watchers record it, and both worker hosts, each
        # of which wrote seed ISOs there under the old name, write them under the new one.
        from rq import Worker  # noqa: PLC0415
        from rq.job import Job as RQJob  # noqa: PLC0415

        worker_host = {w.name: h.name for w in Worker.all(connection=redis_conn) for h in hosts
                       if w.pid == h.procs[1].pid}
        assert sorted(worker_host.values()) == ["host-a", "host-b"], worker_host

        def grow_seeded_until_both_hosts_cloned(when: str) -> None:
            """Add seeded VMs one fill job at a time until each host's worker has run one (idle
            workers take turns at the queue, so this takes two or three)."""
            seen: set[str] = set()
            for _ in range(6):
                last = Job.objects.filter(kind="pools.fill").order_by("-pk").values_list("pk", flat=True).first()
                before = set(VM.objects.values_list("pk", flat=True))
                Pool.objects.filter(pk=seeded.pk).update(size=seeded.size + 1)
                wait_until(f"seeded grown {when}", lambda: full(deb, seeded), 60, hosts)
                made = VM.objects.filter(pool=seeded).exclude(pk__in=before)
                assert list(made.values_list("state", flat=True)) == [VMState.READY], f"a clone {when} failed"
                for job in Job.objects.filter(kind="pools.fill", pk__gt=last or 0, args__pool_id=seeded.pk):
                    seen.add(worker_host.get(RQJob.fetch(f"vmportal-job-{job.pk}", connection=redis_conn)
                                             .worker_name, "?"))
                if {"host-a", "host-b"} <= seen:
                    return
            raise AssertionError(f"seeded fills {when} ran only on {seen}")

        grow_seeded_until_both_hosts_cloned("before the rename")  # both workers wrote there by the old name
        before_rename = set(VM.objects.values_list("pk", flat=True))
        renamed_at = time.monotonic()
        rename_datastore(vc, seed_ds.moid, "SeedDS_renamed")
        wait_until("the watchers record the new datastore name",
                   lambda: Datastore.objects.filter(pk=seed_ds.pk, name="SeedDS_renamed").exists(), WATCH_CYCLE + 3,
                   hosts)
        noticed = time.monotonic() - renamed_at
        sim_calls(sim, reset=True)
        # A write to the old name is refused by vCenter: each ready clone used the new one.
        grow_seeded_until_both_hosts_cloned("after the rename")
        clones = sim_calls(sim)["CloneVM_Task"]
        assert clones["total"] == VM.objects.filter(pool=seeded, pk__gt=max(before_rename)).count(), clones
        assert not SeedISO.objects.exclude(datastore_path__startswith="[SeedDS_renamed] ").filter(
            vm__pk__gt=max(before_rename)).exists()

        # Every host's worker did clone work (RQ's own per-worker count of finished jobs).
        done = {w.pid: w.successful_job_count for w in Worker.all(connection=redis_conn)}
        for h in hosts:
            assert done.get(h.procs[1].pid, 0) > 0, f"{h.name}'s worker ran no job: {done}"

        # 5. An OVA uploaded through host A's web server is deployed by host B's worker.
        web = requests.Session()
        web.get(f"{a.url}/accounts/login/", timeout=10)
        login = web.post(f"{a.url}/accounts/login/", data={
            "username": admin_user.username, "password": "pw-admin", "csrfmiddlewaretoken": web.cookies["csrftoken"]},
            headers={"Referer": f"{a.url}/accounts/login/"}, timeout=10)
        assert login.status_code == 200 and "sessionid" in web.cookies, login.text[-500:]
        web.get(f"{a.url}/manage/templates/deploy/", timeout=10)
        sent = web.post(f"{a.url}/manage/templates/deploy/", data={
            "name": "tiny", "os_name": "Tiny", "url": "", "csrfmiddlewaretoken": web.cookies["csrftoken"],
            "cluster": Cluster.objects.get(vcenter=vc, name="DC0_C0").pk,
            "folder": Folder.objects.get(vcenter=vc, path="DC0/vm/Templates").pk,
            "datastore": Datastore.objects.get(vcenter=vc, name="LocalDS_0").pk,
        }, files={"file": ("tiny.ova", ova_bytes(), "application/x-tar")},
            headers={"Referer": f"{a.url}/manage/templates/deploy/"}, timeout=60, allow_redirects=False)
        assert sent.status_code == 302, sent.text[-1000:]
        assert not list((a.dir / "var").rglob("*.ova")), "host A kept the upload on its own disk"
        template = wait_until("the uploaded template ready",
                              lambda: Template.objects.filter(name="tiny", status__in=(
                                  TemplateStatus.READY, TemplateStatus.FAILED)).first(), 60, hosts)
        assert template.status == TemplateStatus.READY, template.status_reason
        assert not list(shared.iterdir()), "the deploy job left its upload behind"
    finally:
        for h in hosts:
            h.stop()
    took = time.monotonic() - started
    print(f"multi-host: rename seen by the watchers after {noticed:.1f}s; whole test {took:.0f}s")
