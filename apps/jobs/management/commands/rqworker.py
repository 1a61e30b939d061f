"""django-rq's rqworker, checking at start-up all but the URL conf (apps.jobs.apps.STARTUP_CHECKS).

It takes the place of django-rq's command because apps.jobs comes before django_rq in
INSTALLED_APPS; the options and the behaviour are django-rq's.
"""

from django_rq.management.commands.rqworker import Command as RQWorkerCommand

from apps.jobs.apps import STARTUP_CHECKS


class Command(RQWorkerCommand):
    requires_system_checks = STARTUP_CHECKS
