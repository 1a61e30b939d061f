"""Signals of the leases app."""

from django.dispatch import Signal

# Sent once per pool when checkout wrote leases in its own SQL statement (PostgreSQL), which
# fires no post_save: ``pool_id`` and ``leases`` (saved Lease instances with vm, pool and user).
# Receivers run inside the checkout's transaction.
leases_inserted = Signal()
