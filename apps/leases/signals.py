"""Signals of the leases app."""

from django.dispatch import Signal

# Sent once per pool when checkout wrote leases in its own SQL statement (PostgreSQL), which
# fires no post_save: ``pool_id``, ``leases`` (saved Lease instances with vm, pool and user) and
# ``guest_keys`` (whether the pool puts its lessees' SSH keys into its guests). Receivers run
# inside the checkout's transaction when ``guest_keys`` is true; otherwise the checkout may
# have committed already (its one round trip, outside a transaction, takes only such pools).
leases_inserted = Signal()
