from django.urls import path

from apps.firstboot import views

app_name = "firstboot"

urlpatterns = [
    path("manage/pools/<int:pool_id>/first-boot/", views.pool_firstboot, name="pool"),
    path("manage/address-ranges/", views.address_ranges, name="ranges"),
    path("manage/address-ranges/<int:range_id>/", views.address_range_edit, name="range"),
    path("profile/ssh-keys/", views.ssh_keys, name="ssh-keys"),
    path("profile/ssh-keys/<int:key_id>/delete", views.ssh_key_delete, name="ssh-key-delete"),
    path("leases/<int:lease_id>/password", views.lease_password, name="lease-password"),
]
