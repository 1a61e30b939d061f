"""Helpers for the inventory tests: a VCenter row for a simulator, and raw pyVmomi.

Raw pyVmomi (not the app's session layer) changes the simulator behind the app's back,
the way another vCenter user would.
"""

from __future__ import annotations

import contextlib
import itertools

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim

from apps.inventory.models import VCenter

_names = itertools.count(1)


@pytest.fixture
def vcenter_for():
    """A VCenter row pointing at a simulator."""

    def make(sim, **kw) -> VCenter:
        defaults = {
            "name": f"sim-{sim.port}-{next(_names)}", "host": sim.address, "username": sim.username,
            "password": sim.password, "insecure": True,
        }
        return VCenter.objects.create(**{**defaults, **kw})

    return make


@pytest.fixture
def raw():
    """``raw(sim)``: a plain pyVmomi ServiceInstance, logged out after the test."""
    opened = []

    def open_si(sim) -> vim.ServiceInstance:
        si = SmartConnect(host=sim.host, port=sim.port, user=sim.username, pwd=sim.password,
                          disableSslCertValidation=True)
        opened.append(si)
        return si

    yield open_si
    for si in opened:
        with contextlib.suppress(Exception):  # a restarted simulator forgot the session
            Disconnect(si)


def find(si, path: str):
    obj = si.content.searchIndex.FindByInventoryPath(path)
    assert obj is not None, f"{path} not found in the simulator"
    return obj


def clone_vm(si, name: str, *, template: str = "DC0/vm/Templates/debian-12", folder: str = "DC0/vm/vmportal",
             cluster: str = "DC0/host/DC0_C0", marker: str | None = None, power_on: bool = False):
    source = find(si, template)
    spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(pool=find(si, cluster).resourcePool), powerOn=False)
    if marker is not None:
        spec.config = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key="vmportal.owner", value=marker)])
    WaitForTask(source.CloneVM_Task(folder=find(si, folder), name=name, spec=spec))
    vm = find(si, f"{folder}/{name}")
    if power_on:
        WaitForTask(vm.PowerOnVM_Task())
    return vm


def destroy_vm(vm) -> None:
    if vm.runtime.powerState != "poweredOff":
        WaitForTask(vm.PowerOffVM_Task())
    WaitForTask(vm.Destroy_Task())
