import logging
import uuid

from django.db import migrations, models

log = logging.getLogger("apps.pools.instance")


def store_instance_id(apps, schema_editor):
    # Generated here, before any clone exists, so a new installation never shares its
    # marker. A database that already has VM rows has been cloning with the old shared
    # default "vmportal"; a new id would make purge leave all those clones alone forever,
    # so such an installation keeps it (VMPORTAL_INSTANCE_ID still overrides either).
    Installation = apps.get_model("pools", "Installation")
    VM = apps.get_model("pools", "VM")
    if VM.objects.exists():
        instance_id = "vmportal"
        log.warning(
            "Existing clones carry the marker %r: keeping it as this installation's id. Give each other "
            "installation that shares a vCenter folder with this one its own VMPORTAL_INSTANCE_ID.",
            instance_id,
        )
    else:
        instance_id = f"vmportal-{uuid.uuid4().hex[:12]}"  # as apps.pools.instance does
    Installation.objects.get_or_create(pk=1, defaults={"instance_id": instance_id})


class Migration(migrations.Migration):
    dependencies = [
        ("pools", "0005_admin_templates_and_vm_cluster"),
    ]

    operations = [
        migrations.CreateModel(
            name="Installation",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("instance_id", models.CharField(max_length=64)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={
                "constraints": [
                    models.CheckConstraint(condition=models.Q(("pk", 1)), name="pools_installation_is_a_singleton")
                ],
            },
        ),
        migrations.RunPython(store_instance_id, migrations.RunPython.noop),
    ]
