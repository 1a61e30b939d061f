from django.apps import AppConfig


class FirstBootConfig(AppConfig):
    name = "apps.firstboot"
    label = "firstboot"
    verbose_name = "First boot"

    def ready(self) -> None:
        from django.db.models.signals import post_save  # noqa: PLC0415 - models are ready only now

        from apps.firstboot import services  # noqa: PLC0415
        from apps.leases.models import Lease  # noqa: PLC0415
        from apps.pools import guest_setup

        # A checkout creates the lease; the lessee's SSH keys follow through guest
        # operations. A signal keeps the hook out of the checkout service itself.
        post_save.connect(services.lease_created, sender=Lease, dispatch_uid="firstboot-lease-keys")
        # Clones get their addresses, seeds and readiness checks from here (pools sit below).
        guest_setup.register(services)
        from apps.leases.signals import leases_inserted  # noqa: PLC0415

        leases_inserted.connect(services.leases_inserted, sender=Lease, dispatch_uid="firstboot-checkout-keys")
        from apps.firstboot import api  # noqa: F401, PLC0415 - registers the native API route
