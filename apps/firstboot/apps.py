from django.apps import AppConfig
from django.db.models.signals import post_save


class FirstBootConfig(AppConfig):
    name = "apps.firstboot"
    label = "firstboot"
    verbose_name = "First boot"

    def ready(self) -> None:
        # The wiring of first boot into the layers below it, made once the models are loaded
        # (the only reason these imports sit here): this module belongs to the top layer.
        # Its API route (apps.firstboot.api) is added by the URL conf, which only the web loads.
        from apps.firstboot import access, provisioning
        from apps.leases.models import Lease
        from apps.leases.signals import leases_inserted
        from apps.pools import guest_setup

        # Clones get their addresses, seeds and readiness checks from here (pools sit below).
        guest_setup.register(provisioning)
        # A checkout creates the lease; the lessee's SSH keys follow through guest
        # operations. Signals keep the hook out of the checkout service itself.
        post_save.connect(access.lease_created, sender=Lease, dispatch_uid="firstboot-lease-keys")
        leases_inserted.connect(access.leases_inserted, sender=Lease, dispatch_uid="firstboot-checkout-keys")
