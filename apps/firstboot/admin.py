from django.contrib import admin

from apps.firstboot.models import AddressRange, IPAllocation, PoolFirstBoot, SeedISO, SSHKey


@admin.register(AddressRange)
class AddressRangeAdmin(admin.ModelAdmin):
    list_display = ["name", "network", "first", "last", "gateway"]


@admin.register(PoolFirstBoot)
class PoolFirstBootAdmin(admin.ModelAdmin):
    list_display = ["pool", "method", "delivery", "address_range"]
    list_select_related = ["pool", "address_range"]  # address_range is nullable: select_related() skips it
    exclude = ["guest_password"]  # set on the pool's first-boot page, never shown


@admin.register(IPAllocation)
class IPAllocationAdmin(admin.ModelAdmin):
    list_display = ["address", "address_range", "vm", "allocated_at"]
    list_select_related = ["address_range", "vm"]  # vm is nullable: select_related() alone skips it
    list_filter = ["address_range"]


@admin.register(SeedISO)
class SeedISOAdmin(admin.ModelAdmin):
    list_display = ["datastore_path", "vm", "created_at"]
    list_select_related = ["vm"]  # nullable: select_related() alone skips it


@admin.register(SSHKey)
class SSHKeyAdmin(admin.ModelAdmin):
    list_display = ["user", "name", "fingerprint", "created_at"]
