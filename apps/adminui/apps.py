from django.apps import AppConfig


class AdminUIConfig(AppConfig):
    name = "apps.adminui"
    label = "adminui"
    verbose_name = "Administration pages"
