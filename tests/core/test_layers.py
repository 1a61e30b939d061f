"""The layers contract (.importlinter, run by `make lint`) covers every module of apps/: a
module in no layer would be checked by nobody."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def layer_modules() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    layers = config["importlinter:contract:layers"]["layers"]
    return {name.strip() for line in layers.splitlines() for name in line.replace("|", ":").split(":") if name.strip()}


def test_every_module_of_apps_has_a_layer():
    listed = layer_modules()
    unplaced = []
    for path in sorted((ROOT / "apps").rglob("*.py")):
        if "migrations" in path.parts or (path.name == "__init__.py" and not path.read_text().strip()):
            continue
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if not any(module == name or module.startswith(f"{name}.") for name in listed):
            unplaced.append(module)
    assert unplaced == [], f"Place these in a layer of .importlinter: {unplaced}"
