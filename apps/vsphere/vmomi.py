"""pyVmomi's ``vim`` and ``vmodl``, imported on first use instead of at start.

pyVmomi builds its whole type table when imported: ~7 MB of Python objects (15 MB resident
with what it pulls in) in every process that imports it. Web workers import this package for
its error types and through the services that pages share with jobs, but talk to vSphere only
on a few admin actions; this way they pay for pyVmomi only when one runs (bench/memory.py).

``from apps.vsphere.vmomi import vim, vmodl`` (and ``PropertyCollector``) everywhere in this
package; mypy sees pyVmomi's own modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any


class _Lazy:
    """Stands for ``pyVmomi.<path>``: any attribute read imports pyVmomi and reads it there."""

    __slots__ = ("_name", "_target")

    def __init__(self, name: str) -> None:
        self._name = name
        self._target: Any = None

    def __getattr__(self, attr: str) -> Any:
        target = self._target
        if target is None:
            target = importlib.import_module("pyVmomi")
            for part in self._name.split("."):
                target = getattr(target, part)
            self._target = target
        return getattr(target, attr)

    def __repr__(self) -> str:
        return f"<pyVmomi.{self._name}, imported on first use>"


if TYPE_CHECKING:
    from pyVmomi import vim as vim
    from pyVmomi import vmodl as vmodl

    PropertyCollector = vmodl.query.PropertyCollector
else:
    vim = _Lazy("vim")
    vmodl = _Lazy("vmodl")
    # Its nested data types (FilterSpec, ObjectSpec, ...) are what the callers build.
    PropertyCollector = _Lazy("vmodl.query.PropertyCollector")
