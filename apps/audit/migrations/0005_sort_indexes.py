"""Indexes for the audit list sorted by action or by target (apps.audit.selectors.SORT_FIELDS).

On PostgreSQL they are built CONCURRENTLY: the audit table takes an insert for every
checkout, and a plain CREATE INDEX would hold those for as long as it reads a million rows.
"""

from django.db import migrations, models

INDEXES = [
    models.Index(fields=["action", "-at", "-id"], name="audit_action_at"),
    models.Index(fields=["target_repr", "-at", "-id"], name="audit_target_at"),
]


def forwards(apps, schema_editor):
    model = apps.get_model("audit", "AuditEvent")
    for index in INDEXES:
        if schema_editor.connection.vendor == "postgresql":
            sql = str(index.create_sql(model, schema_editor, concurrently=True))
            schema_editor.execute(sql.replace("CONCURRENTLY", "CONCURRENTLY IF NOT EXISTS", 1), params=None)
        else:
            schema_editor.add_index(model, index)


def backwards(apps, schema_editor):
    model = apps.get_model("audit", "AuditEvent")
    for index in INDEXES:
        schema_editor.remove_index(model, index)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [("audit", "0004_search_trigram_index")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(forwards, backwards, elidable=False)],
            state_operations=[migrations.AddIndex(model_name="auditevent", index=index) for index in INDEXES],
        ),
    ]
