from __future__ import annotations

from pathlib import Path

import yaml
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from apps.pools.importer import import_config


class _DryRun(Exception):
    pass


class Command(BaseCommand):
    help = "Create the vCenter, templates and pools a vmpooler.yaml describes, and list what could not be mapped."

    def add_arguments(self, parser):
        parser.add_argument("path", help="vmpooler configuration file (YAML)")
        parser.add_argument("--dry-run", action="store_true", help="Show what would happen; change nothing.")

    def handle(self, *args, path: str, dry_run: bool, **options):
        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise CommandError(f"{path} is not valid YAML: {exc}") from exc
        try:
            with transaction.atomic():
                report = import_config(data)
                if dry_run:
                    raise _DryRun
        except _DryRun:
            pass
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        prefix = "would create" if dry_run else "created"
        for line in report.created:
            self.stdout.write(self.style.SUCCESS(f"{prefix}: {line}"))
        for line in report.updated:
            self.stdout.write(f"kept: {line}")
        for line in report.skipped:
            self.stdout.write(self.style.WARNING(f"skipped: {line}"))
        if report.unmapped:
            self.stdout.write(self.style.WARNING("Not mapped (no vmportal equivalent, or not found):"))
            for line in report.unmapped:
                self.stdout.write(f"  - {line}")
        self.stdout.write(
            f"{len(report.created)} created, {len(report.skipped)} skipped, {len(report.unmapped)} not mapped."
        )
