from django.contrib import admin

from apps.audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the table is append-only (and the database enforces it)."""

    list_display = ["at", "actor_name", "action", "target_repr", "request_id"]
    list_filter = ["action"]
    search_fields = ["actor_name", "action", "target_repr", "request_id"]
    date_hierarchy = "at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
