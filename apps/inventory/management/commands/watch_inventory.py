"""`manage.py watch_inventory`: keep the inventory tables live while vCenters change.

One watcher thread per enabled vCenter (apps.vsphere.watcher). After every (re)connect
the watcher's first batch is a full state, answered here with a full sync; later batches
are applied as they come: VMs, hosts, and renames of datastores and folders. A full sync
also runs every ``--resync-every`` seconds (it brings in networks, clusters and new
datastores with their host links, which are not watched, and prunes the load history).
The list of vCenters is re-read every ``--reload-every`` seconds, so adding, disabling or
re-pointing one needs no restart. SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections, connection

from apps.inventory.models import VCenter
from apps.inventory.services import apply_changes, sync_inventory
from apps.inventory.status import mark_reachable, mark_unreachable
from apps.jobs.apps import STARTUP_CHECKS
from apps.vsphere.errors import VSphereError
from apps.vsphere.session import Endpoint
from apps.vsphere.watcher import MAX_WAIT_SECONDS, ChangeBatch, Watcher

log = logging.getLogger(__name__)


class SyncFailed(Exception):
    """The full sync after a reconnect failed; the watcher reconnects and tries again."""


class VCenterWatch:
    """A watcher thread for one vCenter, and what it does with the changes it sees."""

    def __init__(self, vcenter: VCenter, *, max_wait: int, write=print) -> None:
        self.vcenter = vcenter
        self.endpoint = Endpoint.from_vcenter(vcenter)
        self.write = write
        self.stop = threading.Event()
        # The watcher thread and the periodic resync (main thread) both write this
        # vCenter's rows; taking turns avoids needless row-lock waits between them.
        self.lock = threading.Lock()
        self.last_full_sync = 0.0
        self.watcher = Watcher(self.endpoint, self.on_batch, stop=self.stop, on_state=self.on_state,
                               max_wait=max_wait)
        self.thread = threading.Thread(target=self._run, name=f"watch-{vcenter.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            self.watcher.run()
        finally:
            connection.close()  # this thread's own database connection

    def on_batch(self, batch: ChangeBatch) -> None:
        close_old_connections()
        with self.lock:
            if batch.resync:
                self.full_sync()
                return
            report = apply_changes(self.vcenter, batch.events)
        if report.changed or report.deferred:
            self.write(
                f"{self.vcenter.name}: {len(batch.events)} changes: +{report.created} ~{report.updated} "
                f"-{report.removed}" + (f", {report.deferred} left to the next full sync" if report.deferred else "")
            )

    def full_sync(self) -> None:
        report = sync_inventory(self.vcenter)
        self.last_full_sync = time.monotonic()
        if not report.ok:
            raise SyncFailed(report.error)
        self.write(str(report))

    def on_state(self, connected: bool, error: BaseException | None) -> None:
        close_old_connections()
        if connected:
            mark_reachable(self.vcenter)
            self.write(f"{self.vcenter.name}: watching")
        elif isinstance(error, VSphereError):
            mark_unreachable(self.vcenter, str(error))
            self.write(f"{self.vcenter.name}: connection lost: {error}; reconnecting")
        else:
            self.write(f"{self.vcenter.name}: watcher failed: {error}; reconnecting")


class Command(BaseCommand):
    help = "Watch every enabled vCenter and apply inventory changes to the database as they happen."
    requires_system_checks = STARTUP_CHECKS

    def add_arguments(self, parser):
        parser.add_argument("--vcenter", metavar="NAME", help="watch only this vCenter")
        parser.add_argument("--resync-every", type=float, default=900.0, metavar="SECONDS",
                            help="full sync interval (default 900)")
        parser.add_argument("--reload-every", type=float, default=30.0, metavar="SECONDS",
                            help="how often the list of vCenters is re-read (default 30)")
        parser.add_argument("--max-wait", type=int, default=MAX_WAIT_SECONDS, metavar="SECONDS",
                            help="longest single wait for changes; bounds how long a stop takes")

    def handle(self, *args, vcenter=None, resync_every, reload_every, max_wait, **options):
        if vcenter and not VCenter.objects.filter(name=vcenter).exists():
            raise CommandError(f"No vCenter named {vcenter!r}.")
        stop = threading.Event()

        def request_stop(signum, frame):
            self.stdout.write(f"{signal.Signals(signum).name}: stopping")
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

        def write(line: str) -> None:
            self.stdout.write(f"{time.strftime('%H:%M:%S')} {line}")

        watches: dict[int, VCenterWatch] = {}
        next_reload = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_reload:
                    next_reload = now + reload_every
                    self._reconcile(watches, vcenter, max_wait, write)
                    if not watches:
                        write("no enabled vCenter to watch; waiting")
                for watch in watches.values():
                    due = time.monotonic() - watch.last_full_sync >= resync_every
                    if due and watch.watcher.connected.is_set() and watch.last_full_sync:
                        with watch.lock:
                            try:
                                watch.full_sync()
                            except SyncFailed as exc:
                                write(f"{watch.vcenter.name}: periodic sync failed: {exc}")
                stop.wait(1.0)
        finally:
            for watch in watches.values():
                watch.stop.set()
            for watch in watches.values():
                watch.thread.join(timeout=max_wait + 10)
            write("stopped")

    def _reconcile(self, watches: dict[int, VCenterWatch], only: str | None, max_wait: int, write) -> None:
        """Start watchers for new vCenters, stop those of removed or disabled ones."""
        close_old_connections()
        qs = VCenter.objects.filter(name=only) if only else VCenter.objects.filter(enabled=True)
        wanted = {vc.pk: vc for vc in qs}
        for pk in list(watches):
            vc = wanted.get(pk)
            if vc is None or Endpoint.from_vcenter(vc) != watches[pk].endpoint:
                watches[pk].stop.set()
                watches[pk].thread.join(timeout=max_wait + 10)
                del watches[pk]
        for pk, vc in wanted.items():
            if pk not in watches:
                watches[pk] = VCenterWatch(vc, max_wait=max_wait, write=write)
                watches[pk].start()
                write(f"{vc.name}: connecting to {vc.host}")
