from django.contrib import admin

from apps.api.models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "user", "created", "expires_at", "last_used_at", "revoked")
    list_filter = ("revoked",)
    search_fields = ("name", "prefix", "user__username")
    # The hash is useless to a person and tokens are made by their owners, not in the admin.
    readonly_fields = ("user", "name", "prefix", "created", "last_used_at")
    exclude = ("token_hash",)

    def has_add_permission(self, request) -> bool:
        return False
