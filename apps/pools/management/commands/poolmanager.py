"""`manage.py poolmanager`: the scheduler. Reconciles every pool every few seconds, and a
nudged pool at once. Safe to run on several machines: reconcile locks in PostgreSQL."""

from __future__ import annotations

import logging
import signal
import time

from django.core.management.base import BaseCommand
from django.db import close_old_connections
from redis.exceptions import RedisError

from apps.jobs.apps import STARTUP_CHECKS
from apps.pools import nudge
from apps.pools.manager import reconcile_all, reconcile_pool

log = logging.getLogger("vmportal.poolmanager")


class Command(BaseCommand):
    help = "Keep every pool at its size (runs until stopped)."
    requires_system_checks = STARTUP_CHECKS

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=5.0, help="seconds between full cycles")
        parser.add_argument("--once", action="store_true", help="reconcile every pool once and exit")

    def handle(self, *args, interval: float, once: bool, **options):
        self.running = True
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        next_full = 0.0
        # Pools nudged lately, and when their coalescing window is over (apps.pools.nudge).
        windows: dict[int, float] = {}
        while self.running:
            close_old_connections()
            now = time.monotonic()
            if now >= next_full:
                for report in reconcile_all():
                    if report.fill_started or report.destroy or report.timed_out or report.expired_leases:
                        log.info("%s", report)
                next_full = now + interval
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
                time.sleep(min(interval, 5))
                continue
            for pool_id in nudged:
                # The margin covers the clock between Redis expiring the window and this loop.
                windows[pool_id] = time.monotonic() + nudge.COALESCE_MS / 1000 + 0.05
                self.reconcile(pool_id)

    def reconcile(self, pool_id: int) -> None:
        try:
            reconcile_pool(pool_id)
        except Exception:
            log.exception("Reconcile of pool %s failed", pool_id)

    def stop(self, *args):
        self.running = False
