"""django-rq's rqworker, checking at start-up all but the URL conf (apps.jobs.apps.STARTUP_CHECKS)
and running at a lower CPU priority (VMPORTAL_WORKER_NICE).

It takes the place of django-rq's command because apps.jobs comes before django_rq in
INSTALLED_APPS; the options and the behaviour are otherwise django-rq's.
"""

import logging
import os

from django.conf import settings
from django_rq.management.commands.rqworker import Command as RQWorkerCommand

from apps.jobs.apps import STARTUP_CHECKS

log = logging.getLogger(__name__)


class Command(RQWorkerCommand):
    requires_system_checks = STARTUP_CHECKS

    def handle(self, *args, **options):
        # Before the worker starts any thread: on Linux a thread's priority is its own, and
        # threads inherit the one of the thread that starts them. Jobs mostly wait on
        # vCenter; what CPU they use (pyVmomi's SOAP, and vcsim when it shares the host)
        # then goes to them only when web requests leave it idle.
        if settings.VMPORTAL_WORKER_NICE:
            niceness = os.nice(settings.VMPORTAL_WORKER_NICE)
            log.info("rqworker running at nice %d (VMPORTAL_WORKER_NICE)", niceness)
        return super().handle(*args, **options)
