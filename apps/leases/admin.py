from django.contrib import admin

from apps.audit.admin_mixins import AuditedAdmin, LargeTableAdmin
from apps.leases.models import GroupLeaseLimit, Lease


@admin.register(Lease)
class LeaseAdmin(LargeTableAdmin):
    list_display = ["vm", "user", "pool", "started_at", "expires_at", "ended_at", "end_reason"]
    list_select_related = ["vm", "user", "pool"]  # pool is nullable: select_related() alone skips it
    ordering = ["-pk"]  # newest first, as -started_at, without sorting every lease (one per VM ever made)
    list_filter = ["pool", "end_reason"]
    search_fields = ["vm__name", "user__username"]
    # Extending, tagging and returning go through the pages and APIs (limits checked, audited).
    readonly_fields = [f.name for f in Lease._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(GroupLeaseLimit)
class GroupLeaseLimitAdmin(AuditedAdmin):
    audit_prefix = "group_limit"
    list_display = ["group", "max_active_leases"]
    search_fields = ["group__name"]
    autocomplete_fields = ["group"]
