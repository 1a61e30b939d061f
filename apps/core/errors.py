"""The one family of domain errors. Views and the API map them to clear messages."""


class VmPortalError(Exception):
    """Something a person can act on; ``str(exc)`` is the message to show them."""

    http_status = 400


class NotFound(VmPortalError):
    http_status = 404


class Conflict(VmPortalError):
    http_status = 409


class Unavailable(VmPortalError):
    http_status = 503
