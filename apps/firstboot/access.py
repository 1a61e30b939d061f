"""First boot for lessees: their leased VM's password, their SSH keys, and the keys put
into the guest after checkout. Builds on leases (whose lease a person may see, checkout's
signals) and on first-boot provisioning (the pool's configuration, the VMs' secrets).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import User
from django.db import connection, transaction

from apps.audit import services as audit
from apps.core.errors import Conflict, NotFound, VmPortalError
from apps.core.permissions import is_admin
from apps.core.states import StaleState
from apps.firstboot.models import KeyDelivery, PoolFirstBoot, SSHKey, VMSecret
from apps.firstboot.secrets import InvalidKey, parse_public_key
from apps.jobs import runner
from apps.leases.models import Lease
from apps.leases.services import get_lease_for
from apps.pools.models import VM
from apps.vsphere import guest as guest_ops
from apps.vsphere.errors import VSphereError
from apps.vsphere.session import Endpoint, connect

log = logging.getLogger(__name__)


def lease_credentials(*, user: User, lease_id: int) -> VMSecret | None:
    """The first-boot password of a leased VM, for its lessee (active lease) or an admin.

    Raises NotFound like the lease pages for anyone else; None when the VM has none.
    """
    lease = get_lease_for(user, lease_id)
    if not lease.is_active and not is_admin(user):
        raise NotFound("This lease has ended; its VM's password is gone with it.")
    secret = VMSecret.objects.filter(vm_id=lease.vm_id).first()
    if secret is not None:
        audit.record("lease.password_revealed", target=lease, pool=lease.pool_id,
                     message=f"{user.get_username()} revealed the password of {lease.vm.name}")
    return secret


def add_ssh_key(*, user: User, name: str, public_key: str) -> SSHKey:
    try:
        key = parse_public_key(public_key)
    except InvalidKey as exc:
        raise VmPortalError(str(exc)) from None
    name = name.strip() or key.comment or key.kind
    with transaction.atomic():
        if SSHKey.objects.filter(user=user, fingerprint=key.fingerprint).exists():
            raise Conflict(f"You already added this key ({key.fingerprint}).")
        row = SSHKey.objects.create(user=user, name=name[:80], public_key=key.line, fingerprint=key.fingerprint)
        audit.record("sshkey.added", target=row, after={"name": row.name, "fingerprint": row.fingerprint})
    return row


def delete_ssh_key(*, user: User, key_id: int) -> None:
    with transaction.atomic():
        row = SSHKey.objects.filter(user=user, pk=key_id).first()
        if row is None:
            raise NotFound("No such key.")
        audit.record("sshkey.deleted", target=row, before={"name": row.name, "fingerprint": row.fingerprint})
        row.delete()


def _guest_login(cfg: PoolFirstBoot, vm: VM) -> tuple[str, str] | None:
    if not cfg.guest_username:
        return None
    if cfg.guest_password:
        return cfg.guest_username, cfg.guest_password
    secret = VMSecret.objects.filter(vm=vm).first()
    return (cfg.guest_username, secret.password) if secret else None


def lease_created(sender: type[Lease], instance: Lease, created: bool, **kwargs: Any) -> None:
    """post_save of Lease: queue the lessee's keys for the guest when the pool can take them."""
    if not created or instance.pool_id is None:
        return
    cfg = PoolFirstBoot.objects.filter(pool_id=instance.pool_id).exclude(guest_username="").first()
    if cfg is None:
        return
    KeyDelivery.objects.create(lease=instance)
    runner.enqueue("firstboot.add_keys", target=instance, lease_id=instance.pk)


def leases_inserted(sender: type[Lease], pool_id: int, leases: list[Lease], guest_keys: bool | None = None,
                    **kwargs: Any) -> None:
    """A checkout's leases, written in its own statement: as lease_created does for each,
    when the pool takes keys (``guest_keys``, answered by checkout's statement; else one query)."""
    if guest_keys is False:
        return
    with connection.cursor() as cursor:
        # As SQL: on every API checkout, the ORM's form of this query cost more in Python than in PostgreSQL.
        if guest_keys is None:
            cursor.execute(f"SELECT 1 FROM {PoolFirstBoot._meta.db_table} WHERE pool_id = %s "  # noqa: S608
                           "AND guest_username <> '' LIMIT 1", [pool_id])
            if cursor.fetchone() is None:
                return
    for lease in leases:
        KeyDelivery.objects.create(lease=lease)
        runner.enqueue("firstboot.add_keys", target=lease, lease_id=lease.pk)


KEY_ATTEMPTS = 5


def deliver_keys(lease_id: int, *, say: Callable[[str], None] = log.info) -> KeyDelivery:
    """Append the lessee's SSH keys to the guest's authorized_keys (guest operations)."""
    lease = Lease.objects.select_related("vm__vcenter", "user").get(pk=lease_id)
    delivery, _ = KeyDelivery.objects.get_or_create(lease=lease)
    cfg = PoolFirstBoot.objects.filter(pool_id=lease.pool_id).first()
    keys = list(SSHKey.objects.filter(user=lease.user_id))
    login = _guest_login(cfg, lease.vm) if cfg else None

    def finish(state: str, detail: str = "", fingerprints: list[str] | None = None) -> KeyDelivery:
        changes = {"detail": detail, "fingerprints": fingerprints or []}
        try:
            delivery.move_to(state, **changes)
        except StaleState as exc:
            # The reaper failed it while the guest was slow: keys that went in after all are
            # still said so; any other late outcome leaves the verdict that came first.
            if exc.current is None or state not in KeyDelivery.TRANSITIONS[exc.current]:
                say(f"{lease.vm.name}: keys {state} too late, the delivery is {exc.current or 'gone'} now")
                return delivery
            delivery.state = exc.current
            delivery.move_to(state, **changes)
        say(f"{lease.vm.name}: {delivery.get_state_display()}{': ' + detail if detail else ''}")
        return delivery

    if not keys:
        return finish(KeyDelivery.State.SKIPPED, "You have no SSH keys on your profile.")
    if login is None or not lease.vm.moid:
        return finish(KeyDelivery.State.FAILED, "The pool has no guest credentials for this VM.")
    if not lease.is_active:
        return finish(KeyDelivery.State.SKIPPED, "The lease ended before the keys were added.")
    username, password = login
    added: int | None = None
    error: VSphereError | None = None
    for attempt in range(KEY_ATTEMPTS):
        try:
            with connect(Endpoint.from_vcenter(lease.vm.vcenter)) as conn:
                added = guest_ops.add_authorized_keys(
                    conn, lease.vm.moid, [k.public_key for k in keys], username=username, password=password,
                    login_user=cfg.admin_username if cfg and cfg.active else username,
                )
            break
        except VSphereError as exc:
            error = exc  # its message names the operation and fault, never the password
            if exc.permanent or attempt == KEY_ATTEMPTS - 1:
                break
            time.sleep(min(2**attempt, 10))  # tools may still be starting
    if added is None:
        return finish(KeyDelivery.State.FAILED, str(error))
    fingerprints = [k.fingerprint for k in keys]
    with transaction.atomic():
        audit.record("lease.keys_added", target=lease, pool=lease.pool_id,
                     after={"fingerprints": fingerprints, "new": added})
    return finish(KeyDelivery.State.DONE, f"{len(keys)} key(s) in place ({added} new)", fingerprints)
