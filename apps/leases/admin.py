from django.contrib import admin

from apps.leases.models import GroupLeaseLimit, Lease


@admin.register(Lease)
class LeaseAdmin(admin.ModelAdmin):
    list_display = ["vm", "user", "pool", "started_at", "expires_at", "ended_at", "end_reason"]
    list_filter = ["pool", "end_reason"]
    search_fields = ["vm__name", "user__username"]
    readonly_fields = ["vm", "user", "pool", "started_at", "ended_at", "end_reason"]


@admin.register(GroupLeaseLimit)
class GroupLeaseLimitAdmin(admin.ModelAdmin):
    list_display = ["group", "max_active_leases"]
    search_fields = ["group__name"]
    autocomplete_fields = ["group"]
