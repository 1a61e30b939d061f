"""`manage.py poolmanager`: the scheduler. Reconciles every pool every few seconds, and a
nudged pool at once. Safe to run on several machines: reconcile locks in PostgreSQL."""

from __future__ import annotations

import logging
import signal
import time

from django.core.management.base import BaseCommand
from django.db import close_old_connections
from redis.exceptions import RedisError

from apps.pools import nudge
from apps.pools.manager import reconcile_all, reconcile_pool

log = logging.getLogger("vmportal.poolmanager")


class Command(BaseCommand):
    help = "Keep every pool at its size (runs until stopped)."

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=5.0, help="seconds between full cycles")
        parser.add_argument("--once", action="store_true", help="reconcile every pool once and exit")

    def handle(self, *args, interval: float, once: bool, **options):
        self.running = True
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        next_full = 0.0
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
                nudged = nudge.wait(timeout=max(1.0, next_full - time.monotonic()))
            except RedisError as exc:
                log.warning("Redis unavailable (%s); reconciling on the timer only.", exc)
                time.sleep(min(interval, 5))
                continue
            for pool_id in nudged:
                try:
                    reconcile_pool(pool_id)
                except Exception:
                    log.exception("Reconcile of pool %s failed", pool_id)

    def stop(self, *args):
        self.running = False
