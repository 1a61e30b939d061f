"""The native API's view of first-boot access: a leased VM's password, on an explicit POST.

Registered on apps.api's NinjaAPI when this app is ready (before any URLconf is built),
so the route, its auth and its error mapping are the native API's own.
"""

from __future__ import annotations

from ninja import Schema

from apps.api.native import ERRORS, api
from apps.core.errors import NotFound
from apps.firstboot import access


class CredentialsOut(Schema):
    lease_id: int
    username: str
    password: str


@api.post("/leases/{lease_id}/credentials", response={200: CredentialsOut, **ERRORS}, tags=["leases"])
def lease_credentials(request, lease_id: int):
    """The admin account first boot set on the leased VM (lessee or admin; audited)."""
    secret = access.lease_credentials(user=request.user, lease_id=lease_id)
    if secret is None:
        raise NotFound("This VM was not given a password at first boot.")
    return {"lease_id": lease_id, "username": secret.username, "password": secret.password}
