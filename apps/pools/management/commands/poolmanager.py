"""`manage.py poolmanager`: the scheduler. Reconciles every pool every few seconds, and a
nudged pool at once. Safe to run on several machines: reconcile locks in PostgreSQL.

The same loop can run as a thread of an rqworker process (`rqworker ... --poolmanager`),
which saves a small host a whole Django process."""

from __future__ import annotations

import logging
import signal
import threading
import time
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand
from django.db import close_old_connections, connection
from redis.exceptions import RedisError

from apps.jobs.apps import STARTUP_CHECKS
from apps.pools import nudge
from apps.pools.manager import reconcile_all, reconcile_pool

log = logging.getLogger("vmportal.poolmanager")
DEFAULT_INTERVAL = 5.0


class PoolManagerLoop:
    """Reconcile every pool each ``interval`` seconds, and a nudged pool at once, until stopped."""

    def __init__(self, interval: float = DEFAULT_INTERVAL):
        self.interval = interval
        self.stopping = threading.Event()

    def stop(self, *args: object) -> None:
        self.stopping.set()

    def run(self, *, once: bool = False) -> None:
        next_full = 0.0
        # Pools nudged lately, and when their coalescing window is over (apps.pools.nudge).
        windows: dict[int, float] = {}
        while not self.stopping.is_set():
            close_old_connections()
            now = time.monotonic()
            if now >= next_full:
                for report in reconcile_all():
                    if report.fill_started or report.destroy or report.timed_out or report.expired_leases:
                        log.info("%s", report)
                next_full = now + self.interval
                if once:
                    return
            try:
                due = [p for p, at in windows.items() if at <= time.monotonic()]
                for pool_id in due:
                    del windows[pool_id]
                    if nudge.trailing(pool_id):
                        self.reconcile(pool_id)
                until = min([next_full, *windows.values()]) - time.monotonic()
                nudged = nudge.wait(timeout=max(0.01, until))
            except RedisError as exc:
                log.warning("Redis unavailable (%s); reconciling on the timer only.", exc)
                windows.clear()
                self.stopping.wait(min(self.interval, 5))
                continue
            for pool_id in nudged:
                # The margin covers the clock between Redis expiring the window and this loop.
                windows[pool_id] = time.monotonic() + nudge.COALESCE_MS / 1000 + 0.05
                self.reconcile(pool_id)

    def run_in_thread(self) -> threading.Thread:
        """Run in a daemon thread of this process: a failed cycle (the database gone, say) is
        logged and the loop starts again, as systemd would restart the command."""

        def forever() -> None:
            while not self.stopping.is_set():
                try:
                    self.run()
                except Exception:
                    log.exception("Pool manager loop failed; starting it again in 5 s")
                    self.stopping.wait(5)
            connection.close()  # this thread's own connection

        thread = threading.Thread(target=forever, name="poolmanager", daemon=True)
        thread.start()
        return thread

    def reconcile(self, pool_id: int) -> None:
        try:
            reconcile_pool(pool_id)
        except Exception:
            log.exception("Reconcile of pool %s failed", pool_id)


class Command(BaseCommand):
    help = "Keep every pool at its size (runs until stopped)."
    requires_system_checks = STARTUP_CHECKS

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between full cycles")
        parser.add_argument("--once", action="store_true", help="reconcile every pool once and exit")

    def handle(self, *args: Any, interval: float, once: bool, **options: Any) -> None:
        loop = PoolManagerLoop(interval)
        signal.signal(signal.SIGTERM, loop.stop)
        signal.signal(signal.SIGINT, loop.stop)
        loop.run(once=once)
