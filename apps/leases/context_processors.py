from datetime import timedelta

from django.utils import timezone

from apps.leases.models import Lease

WARN_BEFORE = timedelta(minutes=15)


def expiring_leases(request):
    """Leases of the signed-in user that end soon, for the banner on every page."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    soon = Lease.objects.active().filter(user=user, expires_at__lte=timezone.now() + WARN_BEFORE)
    return {"expiring_leases": soon.select_related("vm")[:5]}
