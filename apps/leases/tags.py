"""Lease tags: free-form name → value labels a lessee (or CI) puts on a lease.

vmpooler semantics: PUT merges new tags into the existing ones. Names and values are
bounded and limited to a safe character set, so they can be shown and exported as is.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction

from apps.audit import services as audit
from apps.core.errors import Conflict, VmPortalError
from apps.leases.models import Lease
from apps.leases.services import get_lease_for

# Used with fullmatch: "$" also matches before a final newline, which would be stored.
TAG_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
TAG_VALUE = re.compile(r"[A-Za-z0-9_.:/@+= -]{0,255}")


def validate_tags(tags: object) -> dict[str, str]:
    if not isinstance(tags, dict):
        raise VmPortalError("Tags must be an object of name: value.")
    if len(tags) > settings.VMPORTAL_API_MAX_TAGS:
        raise VmPortalError(f"At most {settings.VMPORTAL_API_MAX_TAGS} tags.")
    clean: dict[str, str] = {}
    for key, value in tags.items():
        value = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
        if not isinstance(key, str) or not TAG_KEY.fullmatch(key):
            raise VmPortalError(f"Tag name {str(key)[:64]!r} is invalid: use 1-64 letters, digits, '_', '.', '-'.")
        if not isinstance(value, str) or not TAG_VALUE.fullmatch(value):
            raise VmPortalError(f"Tag {key!r} has an invalid value: up to 255 letters, digits, spaces and _.:/@+=-.")
        clean[key] = value
    return clean


@transaction.atomic
def tag_lease(*, user: User, lease_id: int, tags: dict) -> Lease:
    """Merge ``tags`` into the lease's tags (the vmpooler semantics of PUT /vm/<h> tags)."""
    tags = validate_tags(tags)
    lease = get_lease_for(user, lease_id)
    lease = Lease.objects.select_for_update(of=("self",), no_key=True).get(pk=lease.pk)
    if not lease.is_active:
        raise Conflict("This lease has ended.")
    before = dict(lease.tags)
    lease.tags = {**before, **tags}
    lease.save(update_fields=["tags"])
    audit.record("lease.tag", target=lease, pool=lease.pool_id, before={"tags": before}, after={"tags": lease.tags})
    return lease
