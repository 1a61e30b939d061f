from django.apps import AppConfig


class LeasesConfig(AppConfig):
    name = "apps.leases"
    label = "leases"

    def ready(self) -> None:
        # Leases build on pools: the pool manager runs lease expiry and on-demand recovery
        # through the steps registered here, without importing this app.
        from apps.leases import ondemand, services
        from apps.pools import manager

        manager.on_reconcile(services.expire_leases)
        manager.on_cycle(ondemand.recover_stale)
