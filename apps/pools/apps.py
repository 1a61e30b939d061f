from django.apps import AppConfig


class PoolsConfig(AppConfig):
    name = "apps.pools"
    label = "pools"

    def ready(self) -> None:
        # The pool manager samples pool counts for the history chart once a minute.
        from apps.pools import history, manager

        manager.on_cycle(history.record_samples)
