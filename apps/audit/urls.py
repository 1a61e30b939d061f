"""Audit log pages, under manage/ (vmportal/urls.py)."""

from django.urls import path

from apps.audit import views

urlpatterns = [
    path("audit/", views.audit_list, name="audit"),
    path("audit/export.csv", views.audit_export, name="audit-export"),
    path("audit/<int:event_id>/", views.audit_detail, name="audit-detail"),
]
