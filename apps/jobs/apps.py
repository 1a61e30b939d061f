from django.apps import AppConfig
from django.core import checks
from django.utils.module_loading import autodiscover_modules


class JobsConfig(AppConfig):
    name = "apps.jobs"
    label = "jobs"

    def ready(self) -> None:
        # Every app's jobs.py registers its handlers; a worker must know them all.
        autodiscover_modules("jobs")


# The system checks a worker, the pool manager or the watcher runs at start-up: all but the
# URL conf's, whose import brings in every page, the admin and the API (ninja, pydantic):
# ~25 MB in a process that serves none (bench/memory.py). The key check ("vmportal") stays;
# `manage.py check` still runs them all.
STARTUP_CHECKS = [tag for name, tag in vars(checks.Tags).items() if not name.startswith("_") and tag != "urls"]
STARTUP_CHECKS.append("vmportal")
