"""Directory groups mirrored into vmportal's own groups, which carry its roles.

Membership of settings.VMPORTAL_ADMIN_GROUP is the admin role and GroupLeaseLimit rows
cap a team's leases, so naming a directory group like that is all it takes to map it.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, Group
from django.db import transaction

from apps.audit import services as audit


def mirror_groups(user: AbstractBaseUser, names: Iterable[str]) -> None:
    """Make the user's groups those the directory says, limited to VMPORTAL_DIRECTORY_GROUPS if set.

    Groups outside that list are vmportal's own business and are left as they are.
    """
    managed = set(getattr(settings, "VMPORTAL_DIRECTORY_GROUPS", []))
    target = {name for name in names if isinstance(name, str) and 0 < len(name) <= 150}
    with transaction.atomic():
        current = set(user.groups.values_list("name", flat=True))
        if managed:
            target = (target & managed) | (current - managed)
        if target == current:
            return
        groups = []
        for name in sorted(target):
            group, _ = Group.objects.get_or_create(name=name)
            groups.append(group)
        user.groups.set(groups)
        audit.record("user.groups.sync", target=user, before={"groups": sorted(current)},
                     after={"groups": sorted(target)}, message="groups from the company directory")
