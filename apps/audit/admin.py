from django.contrib import admin
from django.db.models import Value
from django.db.models.functions import Upper
from django.db.models.lookups import Contains

from apps.audit.admin_mixins import LargeTableAdmin
from apps.audit.models import AuditEvent
from apps.audit.selectors import SearchText


@admin.register(AuditEvent)
class AuditEventAdmin(LargeTableAdmin):
    """Read-only: the table is append-only (and the database enforces it)."""

    list_display = ["at", "actor_name", "action", "target_repr", "request_id"]
    # At a million rows the date drill-down (DISTINCT months), an action filter (DISTINCT
    # actions) and exact counts each read the whole table on every page: the audit log page
    # (/manage/audit/) filters by date, action and pool through its indexes instead.
    search_fields = ["actor_name", "action", "target_repr", "message", "request_id"]

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
