"""Start-up refusal of a host whose encryption key disagrees with the others.

Every web, worker and pool manager host reads the same vCenter passwords from PostgreSQL;
one whose VMPORTAL_ENCRYPTION_KEY (or SECRET_KEY) differs would fail each vSphere call with
a decryption error instead of refusing to start. Run by Django's system checks, which
rqworker, poolmanager and watch_inventory perform at start-up, and by vmportal/wsgi.py.
"""

from __future__ import annotations

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connection

from apps.core import crypto
from apps.inventory.models import VCenter

MESSAGE = (
    "The stored password of vCenter {names} cannot be decrypted with this host's key: "
    "VMPORTAL_ENCRYPTION_KEY (or, when unset, SECRET_KEY) differs from the key of the host that saved it. "
    "Set VMPORTAL_ENCRYPTION_KEY to the value every other host uses; if that key is lost, enter the password "
    "again on a host with the new key."
)


def undecryptable_vcenters() -> list[str]:
    """Names of vCenters whose stored password this host's key cannot read."""
    table = connection.ops.quote_name(VCenter._meta.db_table)
    try:
        with connection.cursor() as cursor:
            # Raw values: the model field would decrypt on load and fail at the first bad row.
            cursor.execute(f"SELECT name, password FROM {table} WHERE password <> ''")  # noqa: S608 - our table name
            rows = cursor.fetchall()
    except DatabaseError:
        return []  # no table yet (before migrate) or no database: other checks say so
    bad = []
    for name, token in rows:
        try:
            crypto.decrypt(token)
        except ValueError:
            bad.append(name)
    return sorted(bad)


def refuse_undecryptable_secrets() -> None:
    bad = undecryptable_vcenters()
    if bad:
        raise ImproperlyConfigured(MESSAGE.format(names=", ".join(repr(n) for n in bad)))


@checks.register("vmportal")
def check_encryption_key(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    bad = undecryptable_vcenters()
    if not bad:
        return []
    return [checks.Error(MESSAGE.format(names=", ".join(repr(n) for n in bad)), id="vmportal.E001")]
