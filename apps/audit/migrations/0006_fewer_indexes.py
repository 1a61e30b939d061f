"""Fewer indexes for every audit insert to write: one per checkout, clone and purge.

- ``pool``: (pool, -at) starts with it.
- ``action``: audit_action_at (action, -at, -id) serves equality; the prefix filter
  (``action__startswith``) gets one index for it, in place of the two that ``db_index``
  made (a plain one and a ``varchar_pattern_ops`` one).
- ``actor``: no foreign key to check (``db_constraint=False``), and the log is read by
  actor_name, never by actor_id.

The new index is built CONCURRENTLY first, as in 0005: the filter is never left without
one, and checkouts never wait for a million rows to be read.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

PREFIX = models.Index(fields=["action"], name="audit_action_prefix", opclasses=["varchar_pattern_ops"])


def forwards(apps, schema_editor):
    model = apps.get_model("audit", "AuditEvent")
    if schema_editor.connection.vendor == "postgresql":
        sql = str(PREFIX.create_sql(model, schema_editor, concurrently=True))
        schema_editor.execute(sql.replace("CONCURRENTLY", "CONCURRENTLY IF NOT EXISTS", 1), params=None)
    else:
        schema_editor.add_index(model, PREFIX)


def backwards(apps, schema_editor):
    schema_editor.remove_index(apps.get_model("audit", "AuditEvent"), PREFIX)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("audit", "0005_sort_indexes"),
        ("pools", "0014_pool_schedule"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(forwards, backwards, elidable=False)],
            state_operations=[migrations.AddIndex(model_name="auditevent", index=PREFIX)],
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="action",
            field=models.CharField(help_text="e.g. lease.checkout", max_length=64),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="actor",
            field=models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True,
                                    on_delete=django.db.models.deletion.DO_NOTHING, related_name="+",
                                    to=settings.AUTH_USER_MODEL),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="pool",
            field=models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True,
                                    on_delete=django.db.models.deletion.DO_NOTHING, related_name="+",
                                    to="pools.pool"),
        ),
    ]
