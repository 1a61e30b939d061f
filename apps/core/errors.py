"""The one family of domain errors. Views and the API map them to clear messages."""

from django.db import InterfaceError, OperationalError

# PostgreSQL dropped the connection (a restart, a failover, an administrator's terminate) or
# gave up on a statement (a lock or statement timeout, a deadlock it broke): Django raises
# one of these. Not a fault of the request or the job: worth another try soon.
DATABASE_OUTAGES = (OperationalError, InterfaceError)


class VmPortalError(Exception):
    """Something a person can act on; ``str(exc)`` is the message to show them."""

    http_status = 400


class NotFound(VmPortalError):
    http_status = 404


class Conflict(VmPortalError):
    http_status = 409


class Unavailable(VmPortalError):
    http_status = 503
