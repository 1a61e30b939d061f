"""Inventory sync benchmark: the app's full sync against one raw PropertyCollector read.

    .venv/bin/python bench/inventory.py [--vms 5000] [--runs 3]

Starts a private simulator with ``--vms`` extra VMs (tests/vcsim.py), creates and
migrates its own database (``vmportal_bench`` on the server of DATABASE_URL, default the
local PostgreSQL of the tests), then times, best of ``--runs``:

- the app: ``sync_inventory`` into an empty inventory (every row written) and again with
  nothing changed (the steady state), each including its vSphere reads;
- raw pyVmomi: one ContainerView + one RetrievePropertiesEx of the same VM properties,
  on an already logged-in session, nothing written.

Non-interactive; everything it starts it stops.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BENCH_DB = "vmportal_bench"


def prepare_database() -> None:
    """Point Django at a database of our own, created if missing, and migrate it."""
    import psycopg

    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/vmportal")
    parts = urlsplit(base)
    if parts.scheme not in ("postgres", "postgresql"):
        sys.exit(f"bench needs PostgreSQL; DATABASE_URL is {parts.scheme}://...")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{BENCH_DB}"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


def best(runs: int, fn) -> tuple[float, object]:
    """The fastest of ``runs`` calls, with that call's result."""
    timed = []
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        timed.append((time.perf_counter() - started, result))
    return min(timed, key=lambda t: t[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # keep our lines in order with log lines

    prepare_database()

    from pyVim.connect import Disconnect, SmartConnect
    from pyVmomi import vim, vmodl

    from apps.inventory.models import Datacenter, InventoryVM, VCenter
    from apps.inventory.services import sync_inventory
    from apps.vsphere import inventory as vsphere_inventory
    from apps.vsphere.session import close_all
    from tests import vcsim as vcsim_launcher

    started = time.perf_counter()
    sim = vcsim_launcher.start("-vms", str(args.vms))
    print(f"simulator with {args.vms} extra VMs ready in {time.perf_counter() - started:.1f} s")
    si = None
    try:
        vc, _ = VCenter.objects.update_or_create(
            name="bench",
            defaults={"host": sim.address, "username": sim.username, "password": sim.password, "insecure": True,
                      "enabled": True},
        )

        def clear():
            Datacenter.objects.filter(vcenter=vc).delete()  # cascades to everything below

        def sync():
            report = sync_inventory(vc)
            if not report.ok:
                sys.exit(f"sync failed: {report.error}")
            return report

        # Warm up the session pool (login) and learn the simulator's lack of keyed paths,
        # as a long-running worker would have; then time full writes into an empty table.
        sync()
        cold = []
        for _ in range(args.runs):
            clear()
            started = time.perf_counter()
            report = sync()
            cold.append((time.perf_counter() - started, report))
        cold_times = [t for t, _ in cold]
        app_cold, cold_report = min(cold, key=lambda t: t[0])
        vms = InventoryVM.objects.filter(vcenter=vc).count()
        app_warm, warm_report = best(args.runs, sync)

        # The same VM properties the app reads (extraConfig whole: the simulator has no keyed paths).
        si = SmartConnect(host=sim.host, port=sim.port, user=sim.username, pwd=sim.password,
                          disableSslCertValidation=True)
        content = si.content
        pc = vmodl.query.PropertyCollector
        paths = [*vsphere_inventory._PATHS[vim.VirtualMachine], vsphere_inventory.EXTRA_CONFIG_PATH]

        def raw_read():
            view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
            spec = pc.FilterSpec(
                objectSet=[pc.ObjectSpec(obj=view, skip=True, selectSet=[
                    pc.TraversalSpec(type=vim.view.ContainerView, path="view", skip=False)])],
                propSet=[pc.PropertySpec(type=vim.VirtualMachine, pathSet=paths)],
            )
            result = content.propertyCollector.RetrievePropertiesEx([spec], pc.RetrieveOptions())
            objects = list(result.objects)
            while result.token:
                result = content.propertyCollector.ContinueRetrievePropertiesEx(result.token)
                objects.extend(result.objects)
            view.Destroy()
            return len(objects)

        raw_seconds, raw_count = best(args.runs, raw_read)

        print(f"inventory sync {vms} VMs: app {app_cold:.2f} s, raw RetrieveContents {raw_seconds:.2f} s, "
              f"ratio {app_cold / raw_seconds:.2f}x, vSphere calls {cold_report.vsphere_calls}")
        print(f"  app, empty inventory: read {cold_report.fetch_seconds:.2f} s + write "
              f"{cold_report.write_seconds:.2f} s (best of {args.runs}; {', '.join(f'{t:.2f}' for t in cold_times)})")
        print(f"  app, nothing changed: {app_warm:.2f} s (read {warm_report.fetch_seconds:.2f} s + "
              f"write {warm_report.write_seconds:.2f} s), ratio {app_warm / raw_seconds:.2f}x, "
              f"vSphere calls {warm_report.vsphere_calls}")
        print(f"  raw pyVmomi: {raw_count} VMs, {len(paths)} properties each, best of {args.runs}")
    finally:
        if si is not None:
            Disconnect(si)
        close_all()
        sim.stop()


if __name__ == "__main__":
    main()
