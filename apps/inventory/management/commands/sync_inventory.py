"""`manage.py sync_inventory [--vcenter NAME]`: mirror vCenter inventories into the database."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from apps.inventory.models import VCenter
from apps.inventory.services import sync_inventory


class Command(BaseCommand):
    help = "Read every enabled vCenter (or the one named) and update the inventory tables."

    def add_arguments(self, parser):
        parser.add_argument("--vcenter", metavar="NAME", help="sync only this vCenter (even if disabled)")

    def handle(self, *args, vcenter=None, **options):
        if vcenter:
            vcenters = list(VCenter.objects.filter(name=vcenter))
            if not vcenters:
                known = ", ".join(VCenter.objects.values_list("name", flat=True)) or "none"
                raise CommandError(f"No vCenter named {vcenter!r} (known: {known}).")
        else:
            vcenters = list(VCenter.objects.filter(enabled=True))
            if not vcenters:
                self.stdout.write("No enabled vCenter to sync.")
                return
        failed = []
        for vc in vcenters:
            report = sync_inventory(vc)
            if report.ok:
                self.stdout.write(str(report))
            else:
                failed.append(vc.name)
                self.stderr.write(str(report))
        if failed:
            # Non-zero exit for cron and CI; the reason is in the vCenter's status too.
            raise CommandError(f"Sync failed for {', '.join(failed)}.")
