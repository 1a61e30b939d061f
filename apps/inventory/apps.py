from django.apps import AppConfig


class InventoryConfig(AppConfig):
    name = "apps.inventory"
    label = "inventory"

    def ready(self) -> None:
        # Imported once the models are loaded: registers the encryption key check.
        from apps.inventory import checks  # noqa: F401
