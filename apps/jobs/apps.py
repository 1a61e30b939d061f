from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class JobsConfig(AppConfig):
    name = "apps.jobs"
    label = "jobs"

    def ready(self) -> None:
        # Every app's jobs.py registers its handlers; a worker must know them all.
        autodiscover_modules("jobs")
