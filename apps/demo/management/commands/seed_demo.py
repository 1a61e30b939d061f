"""`manage.py seed_demo`: demo users, the simulator as a vCenter, templates and two pools.

Idempotent: a second run updates what exists and creates nothing twice.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core.errors import VmPortalError
from apps.firstboot.models import AddressRange, Delivery, Method, PoolFirstBoot, SSHKey
from apps.firstboot.secrets import parse_public_key
from apps.inventory.models import Cluster, Folder, VCenter
from apps.inventory.services import sync_inventory
from apps.pools.models import Pool
from apps.pools.templates import register_template

DEMO_TEMPLATES = [
    # (template name, inventory path, OS) — the simulator's two templates.
    ("debian-12", "DC0/vm/Templates/debian-12", "Debian 12"),
    ("ubuntu-24-04", "DC0/vm/Templates/ubuntu-24.04", "Ubuntu 24.04"),
]
DEMO_POOLS = [
    # (pool, template, cluster, size, description)
    ("debian-12", "debian-12", "DC0_C0", 4, "Debian 12, 2 vCPU / 2 GB"),
    ("ubuntu-24-04", "ubuntu-24-04", "DC0_C1", 3, "Ubuntu 24.04 LTS, 2 vCPU / 2 GB"),
]


class Command(BaseCommand):
    help = "Create or update the demo users, vCenter, templates and pools."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--vcsim", default="127.0.0.1:18989", help="simulator host:port")
        parser.add_argument("--vcsim-user", default="vmportal")
        parser.add_argument("--vcsim-password", required=True)
        parser.add_argument("--password", default="demo", help="password of the demo users")

    def handle(self, *args: Any, vcsim: str, vcsim_user: str, vcsim_password: str, password: str,
               **options: Any) -> None:
        admins, _ = Group.objects.get_or_create(name=settings.VMPORTAL_ADMIN_GROUP)
        for username, is_admin in (("admin", True), ("engineer", False)):
            user, _ = User.objects.get_or_create(username=username)
            user.is_staff = user.is_superuser = is_admin
            user.set_password(password)
            user.save()
            if is_admin:
                user.groups.add(admins)

        vcenter, _ = VCenter.objects.update_or_create(
            name="simulator",
            defaults={"host": vcsim, "username": vcsim_user, "password": vcsim_password, "insecure": True},
        )
        report = sync_inventory(vcenter)
        vcenter.refresh_from_db()
        if vcenter.status != VCenter.Status.REACHABLE:
            raise CommandError(f"The simulator at {vcsim} cannot be synced: {vcenter.status_reason}")
        self.stdout.write(f"inventory: {report}")

        templates = {}
        for name, path, os_name in DEMO_TEMPLATES:
            try:
                templates[name] = register_template(
                    vcenter=vcenter, name=name, inventory_path=path, os_name=os_name, prepare_now=True
                )
            except VmPortalError as exc:
                raise CommandError(f"Template {name}: {exc}") from None

        folder = Folder.objects.filter(vcenter=vcenter, path__endswith="/vm/vmportal").first()
        for name, template, cluster_name, size, description in DEMO_POOLS:
            cluster = Cluster.objects.get(vcenter=vcenter, name=cluster_name)
            Pool.objects.update_or_create(
                name=name,
                defaults={
                    "template": templates[template], "cluster": cluster, "folder": folder,
                    "size": size, "description": description, "lease_lifetime": timedelta(hours=2),
                    "lease_max_lifetime": timedelta(days=1), "health": Pool.Health.OK, "health_reason": "",
                    "consecutive_failures": 0, "retry_at": None,
                },
            )
        seed_first_boot()
        self.stdout.write(self.style.SUCCESS(f"demo seeded: users admin/engineer, {len(DEMO_POOLS)} pools"))


# A public key only (its private half was never kept): shows key delivery at checkout.
DEMO_ENGINEER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMpJUf0vm5yC+/EKyLYMG7B0eSi1JVLb4SzbYieVSoGL engineer@demo"


def seed_first_boot() -> None:
    """debian-12: guest customisation with fixed addresses; ubuntu-24-04: cloud-init from a seed
    ISO. Both set a per-VM password and take the engineer's key at checkout."""
    ranges = {}
    for name, net, gateway in (("demo-lab", "10.21.0", "10.21.0.1"), ("demo-cloud", "10.22.0", "10.22.0.1")):
        ranges[name], _ = AddressRange.objects.update_or_create(name=name, defaults={
            "network": f"{net}.0/24", "first": f"{net}.10", "last": f"{net}.99", "gateway": gateway,
            "dns_servers": f"{net}.2"})
    for pool_name, method, rng in (("debian-12", Method.CUSTOMIZATION, "demo-lab"),
                                   ("ubuntu-24-04", Method.CLOUD_INIT, "demo-cloud")):
        pool = Pool.objects.get(name=pool_name)
        PoolFirstBoot.objects.update_or_create(pool=pool, defaults={
            "method": method, "delivery": Delivery.SEED_ISO, "domain": "demo.lab", "address_range": ranges[rng],
            "admin_username": "vmportal", "guest_username": "vmportal"})
    key = parse_public_key(DEMO_ENGINEER_KEY)
    SSHKey.objects.get_or_create(user=User.objects.get(username="engineer"), fingerprint=key.fingerprint,
                                 defaults={"name": "demo laptop", "public_key": key.line})
