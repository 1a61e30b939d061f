from django.urls import path

from apps.leases import views

urlpatterns = [
    path("", views.home, name="home"),
    path("checkout", views.checkout_many, name="checkout-many"),
    path("pools/<slug:pool_name>/checkout", views.checkout, name="checkout"),
    path("pools/<slug:pool_name>/ondemand", views.request_on_demand, name="ondemand-create"),
    path("requests/<str:request_id>/", views.ondemand_detail, name="ondemand-detail"),
    path("requests/<str:request_id>/status", views.ondemand_status, name="ondemand-status"),
    path("requests/<str:request_id>/cancel", views.ondemand_cancel, name="ondemand-cancel"),
    path("requests/<str:request_id>/retry", views.ondemand_retry, name="ondemand-retry"),
    path("requests/<str:request_id>/dismiss", views.ondemand_dismiss, name="ondemand-dismiss"),
    path("leases/", views.my_leases, name="my-leases"),
    path("leases/<int:lease_id>/", views.lease_detail, name="lease-detail"),
    path("leases/<int:lease_id>/extend", views.extend, name="lease-extend"),
    path("leases/<int:lease_id>/return", views.return_lease, name="lease-return"),
    path("leases/<int:lease_id>/vm-tasks", views.lease_vm_tasks, name="lease-vm-tasks"),
    path("leases/<int:lease_id>/snapshot", views.lease_snapshot, name="lease-snapshot"),
    path("leases/<int:lease_id>/revert", views.lease_revert, name="lease-revert"),
    path("leases/<int:lease_id>/disk", views.lease_add_disk, name="lease-disk"),
    path("leases/<int:lease_id>/power", views.lease_power, name="lease-power"),
]
