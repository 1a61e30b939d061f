from django.urls import path

from apps.leases import views

urlpatterns = [
    path("checkout", views.checkout_many, name="checkout-many"),
    path("pools/<slug:pool_name>/checkout", views.checkout, name="checkout"),
    path("leases/", views.my_leases, name="my-leases"),
    path("leases/<int:lease_id>/", views.lease_detail, name="lease-detail"),
    path("leases/<int:lease_id>/extend", views.extend, name="lease-extend"),
    path("leases/<int:lease_id>/return", views.return_lease, name="lease-return"),
]
