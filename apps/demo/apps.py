from django.apps import AppConfig


class DemoConfig(AppConfig):
    """`manage.py demo` and `seed_demo`: a whole vmportal against the simulator. They set up
    every app's data, so they sit in the top layer beside the pages and the API."""

    name = "apps.demo"
    label = "demo"
