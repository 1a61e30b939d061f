"""`make demo`'s first boot: the customised pool hands out fixed addresses, the cloud-init pool
boots from a seed ISO, and a checked-out VM carries the engineer's key."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from apps.firstboot.models import IPAllocation, KeyDelivery, VMSecret
from apps.leases import services as leases
from apps.pools.models import Pool, VMState
from apps.vsphere import guest as guest_ops
from apps.vsphere.session import Endpoint, close_all, connect
from tests.live import GUEST, settle, work_off

pytestmark = [pytest.mark.vcsim, pytest.mark.django_db(transaction=True)]


def test_demo_pools_boot_with_their_names_addresses_and_the_engineers_key(vcsim_factory, redis_conn):
    sim = vcsim_factory(*GUEST)
    close_all()
    call_command("seed_demo", vcsim=sim.address, vcsim_user=sim.username, vcsim_password=sim.password,
                 password="demo")
    Pool.objects.update(size=1)  # enough to show it; the demo keeps more
    engineer = User.objects.get(username="engineer")
    for name, net in (("debian-12", "10.21.0."), ("ubuntu-24-04", "10.22.0.")):
        pool = Pool.objects.get(name=name)
        settle(pool)
        [lease] = leases.checkout(user=engineer, pools=[pool])
        work_off()
        vm = lease.vm
        vm.refresh_from_db()
        assert vm.state == VMState.LEASED and vm.hostname == vm.name
        assert vm.ip_address.startswith(net) and vm.ip_address == IPAllocation.objects.get(vm=vm).address
        assert KeyDelivery.objects.get(lease=lease).state == KeyDelivery.State.DONE
        with connect(Endpoint.from_vcenter(vm.vcenter)) as conn:
            keys = guest_ops.read_guest_file(conn, vm.moid, "/home/vmportal/.ssh/authorized_keys",
                                             username="vmportal", password=VMSecret.objects.get(vm=vm).password)
        assert b"engineer@demo" in keys
