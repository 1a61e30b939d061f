from django.apps import AppConfig


class InventoryConfig(AppConfig):
    name = "apps.inventory"
    label = "inventory"

    def ready(self) -> None:
        from apps.inventory import checks  # noqa: F401, PLC0415 - registers the encryption key check
