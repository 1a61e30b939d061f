"""Audit search (?q=) served by a trigram index (PostgreSQL; SQLite scans, as it always did).

The indexed expression is apps.audit.selectors.SearchText's, character for character:
PostgreSQL uses an expression index only for the very expression it holds
(tests/audit/test_search_index.py reads the plan to keep the two together). One index over
the joined columns, not one per column, so an audit insert (every checkout writes one)
updates one GIN index more, not five.
"""

from django.db import migrations

POSTGRES_UP = """
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX IF NOT EXISTS audit_search_trgm ON audit_auditevent USING gin (
    (UPPER(actor_name || ' ' || action || ' ' || target_repr || ' ' || message || ' ' || request_id)) gin_trgm_ops
);
"""
POSTGRES_DOWN = "DROP INDEX IF EXISTS audit_search_trgm;"


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES_UP, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES_DOWN, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0003_refuse_truncate")]

    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
