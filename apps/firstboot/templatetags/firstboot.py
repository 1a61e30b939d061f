from __future__ import annotations

from django import template

from apps.firstboot.models import KeyDelivery, VMSecret

register = template.Library()


@register.simple_tag
def lease_access(lease) -> dict:
    """What the lease page shows about first-boot access (never the password itself).

    Read once per lease object: the page (its ssh line) and the access card it includes
    both ask."""
    access = getattr(lease, "_first_boot_access", None)
    if access is None:
        secret = VMSecret.objects.filter(vm_id=lease.vm_id).only("username").first()
        delivery = KeyDelivery.objects.filter(lease=lease).first()
        access = {"username": secret.username if secret else "", "has_password": secret is not None,
                  "delivery": delivery}
        lease._first_boot_access = access
    return access
