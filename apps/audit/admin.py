from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Value
from django.db.models.functions import Upper
from django.db.models.lookups import Contains
from django.utils.functional import cached_property

from apps.audit.models import AuditEvent
from apps.audit.selectors import SearchText


class EstimatedCountPaginator(Paginator):
    """The planner's row estimate for the unfiltered table instead of COUNT(*) over it."""

    @cached_property
    def count(self) -> int:
        query = self.object_list.query
        if connection.vendor == "postgresql" and not query.where:
            with connection.cursor() as cursor:
                cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                               [query.model._meta.db_table])
                row = cursor.fetchone()
            if row and row[0] > 10_000:
                return row[0]
        return super().count


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the table is append-only (and the database enforces it)."""

    list_display = ["at", "actor_name", "action", "target_repr", "request_id"]
    # At a million rows the date drill-down (DISTINCT months), an action filter (DISTINCT
    # actions) and exact counts each read the whole table on every page: the audit log page
    # (/manage/audit/) filters by date, action and pool through its indexes instead.
    search_fields = ["actor_name", "action", "target_repr", "message", "request_id"]
    show_full_result_count = False
    paginator = EstimatedCountPaginator

    def get_search_results(self, request, queryset, search_term):
        # The audit page's search: one trigram-indexed expression, not a LIKE per field.
        if not search_term.strip():
            return queryset, False
        return queryset.filter(Contains(SearchText(), Upper(Value(search_term.strip())))), False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
