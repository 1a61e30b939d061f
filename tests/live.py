"""Helpers for tests that run the real thing: rqworker processes on the test database and
Redis, against a vcsim with an inventory synced and templates prepared."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection

from apps.inventory.models import Folder, VCenter
from apps.inventory.services import sync_inventory
from apps.jobs.models import Job
from apps.pools import manager
from apps.pools.models import Pool, VMState
from apps.pools.templates import register_template
from apps.vsphere import operations as ops
from apps.vsphere.session import Endpoint, close_all, connect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUEST = ("-guest-ip", "10.30.0.0/16")


def manage_process(*args: str, own_session: bool = False, **env_vars: str) -> subprocess.Popen:
    """A `manage.py <args>` process on the test database and Redis; ``env_vars`` override its
    environment. ``own_session``: it leads a session of its own, as under systemd."""
    db = connection.settings_dict
    url = f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": url,
        "REDIS_URL": settings.REDIS_URL,
        "LOG_LEVEL": "WARNING",
        **env_vars,
    }
    return subprocess.Popen([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=own_session)


def other_session(**options: object) -> psycopg.Connection:
    """A PostgreSQL session of its own on the test database, beside Django's."""
    db = connection.settings_dict
    return psycopg.connect(host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"], **options)


@contextmanager
def users_row_held(user_id: int) -> Iterator[None]:
    """Another PostgreSQL session locks the user's row, and this one waits at most 100 ms for
    a lock: the next statement that needs the row fails as a lock timeout."""
    with other_session() as other:
        other.execute(f"SELECT 1 FROM {User._meta.db_table} WHERE id = %s FOR UPDATE", [user_id])  # noqa: S608
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '100ms'")
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
            other.rollback()


def worker(*, burst: bool = True) -> subprocess.Popen:
    """A real `manage.py rqworker` process on every queue."""
    return manage_process("rqworker", "clone", "purge", "deploy", "default", "--worker-class", "rq.SimpleWorker",
                          *(["--burst"] if burst else []))


def work_off(*, rounds: int = 6, pools: list[Pool] = ()) -> None:
    """Reconcile (the given pools, and every stale request) and run workers until no job is left."""
    for _ in range(rounds):
        for pool in pools:
            manager.reconcile_pool(pool.pk)
        assert worker().wait(timeout=120) == 0
        if not Job.objects.filter(status__in=(Job.Status.QUEUED, Job.Status.RUNNING)).exists():
            return


def settle(pool: Pool, *, rounds: int = 6) -> None:
    """Reconcile and work off the queues until nothing is left to do."""
    for _ in range(rounds):
        manager.reconcile_pool(pool.pk)
        assert worker().wait(timeout=120) == 0
        if not Job.objects.filter(status__in=(Job.Status.QUEUED, Job.Status.RUNNING)).exists():
            pool.refresh_from_db()
            in_flight = pool.vms.filter(state__in=(VMState.CLONING, VMState.BOOTING, VMState.FAILED,
                                                   VMState.DESTROYING)).exists()
            # A pool whose cluster had no template copy fills only in the round after the
            # copy job: settled means full (or stopped for a reason), not merely idle.
            full = pool.vms.filter(state=VMState.READY, on_demand=False).count() >= pool.size
            if not in_flight and (full or pool.health != Pool.Health.OK or not pool.enabled):
                return


def site(sim, *, task_limit: int = 4) -> tuple[VCenter, Folder]:
    close_all()  # sessions of an earlier simulator on a reused port are dead
    vc = VCenter.objects.create(name=f"sim{sim.port}", host=sim.address, username=sim.username,
                                password=sim.password, insecure=True, task_limit=task_limit)
    assert sync_inventory(vc).ok
    folder = Folder.objects.get(vcenter=vc, path="DC0/vm/vmportal")
    return vc, folder


def make_pool(vc, folder, *, name="deb", template_name="debian-12", **kw) -> Pool:
    template = register_template(vcenter=vc, name=template_name, inventory_path=f"DC0/vm/Templates/{template_name}",
                                 os_name=template_name, prepare_now=True)
    cluster = template.copies.get().cluster
    return Pool.objects.create(name=name, template=template, cluster=cluster, folder=folder, **kw)


def vms_in_folder(vc) -> list:
    with connect(Endpoint.from_vcenter(vc)) as conn:
        return ops.list_folder_vms(conn, "DC0/vm/vmportal")
