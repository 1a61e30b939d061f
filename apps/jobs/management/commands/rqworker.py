"""django-rq's rqworker, checking at start-up all but the URL conf (apps.jobs.apps.STARTUP_CHECKS),
running at a lower CPU priority (VMPORTAL_WORKER_NICE; in a session it leads, the session's
autogroup too) and, with ``--poolmanager``, hosting the pool manager's loop in a thread (its
session's autogroup is then left as it is: the loop should not wait behind web requests).

It takes the place of django-rq's command because apps.jobs comes before django_rq in
INSTALLED_APPS; the options and the behaviour are otherwise django-rq's.
"""

import logging
import os
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django_rq.management.commands.rqworker import Command as RQWorkerCommand

from apps.jobs.apps import STARTUP_CHECKS
from apps.jobs.autogroup import lower_autogroup
from apps.pools.management.commands.poolmanager import DEFAULT_INTERVAL, PoolManagerLoop

log = logging.getLogger(__name__)


class Command(RQWorkerCommand):
    requires_system_checks = STARTUP_CHECKS

    def add_arguments(self, parser: ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--poolmanager", action="store_true",
            help="also run the pool manager (manage.py poolmanager) in a thread of this process: "
                 "one Django process fewer on a small host")
        parser.add_argument("--poolmanager-interval", type=float, default=DEFAULT_INTERVAL,
                            help="its seconds between full cycles")

    def handle(self, *args: Any, **options: Any) -> None:
        loop = None
        if options.pop("poolmanager"):
            # Started before the niceness below, which it does not inherit: deciding what to
            # fill and expiring leases is quick, and should not wait behind web requests.
            loop = PoolManagerLoop(options["poolmanager_interval"])
            loop.run_in_thread()
        options.pop("poolmanager_interval")
        # Before the worker starts any thread: on Linux a thread's priority is its own, and
        # threads inherit the one of the thread that starts them. Jobs mostly wait on
        # vCenter; what CPU they use (pyVmomi's SOAP, and vcsim when it shares the host)
        # then goes to them only when web requests leave it idle.
        if settings.VMPORTAL_WORKER_NICE:
            niceness = os.nice(settings.VMPORTAL_WORKER_NICE)
            grouped = loop is None and lower_autogroup(settings.VMPORTAL_WORKER_NICE)
            log.info("rqworker running at nice %d%s (VMPORTAL_WORKER_NICE)", niceness,
                     f", its session's autogroup at {settings.VMPORTAL_WORKER_NICE}" if grouped else "")
        try:
            super().handle(*args, **options)
        finally:
            if loop is not None:
                loop.stop()
