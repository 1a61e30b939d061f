"""Host selection: unit tests on recorded host data, and one run on a synced simulator."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from apps.core.errors import VmPortalError
from apps.inventory.models import Cluster, Datastore
from apps.inventory.selectors import host_candidates
from apps.inventory.services import sync_inventory
from apps.vsphere.inventory import HostRecord
from apps.vsphere.placement import (
    HostCandidate,
    NoUsableHost,
    choose_hosts,
    least_loaded_host,
    rank_hosts,
    rejection_reason,
)

DS0 = "/tmp/govcsim-DC0-LocalDS_0-1260685378@folder-5"  # a simulator datastore moid, verbatim
DS1 = "/tmp/govcsim-DC0-LocalDS_1-3706642150@folder-5"


def host(name: str, cpu: int | None = 1000, mem: int | None = 1000, **kw) -> HostCandidate:
    """A host as the simulator records it: 2 x 2294 MHz, 4095 MB, both datastores."""
    fields = dict(
        moid=f"host-{name}", name=name, connection_state="connected", in_maintenance=False, config_issues=0,
        overall_status="green", cpu_usage_mhz=cpu, cpu_capacity_mhz=4588, memory_usage_mb=mem,
        memory_capacity_mb=4095, datastore_moids=frozenset({DS0, DS1}),
    )
    return HostCandidate(**{**fields, **kw})


GOOD = host("good")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (replace(GOOD, in_maintenance=True), "in maintenance mode"),
        (replace(GOOD, connection_state="disconnected"), "disconnected"),
        (replace(GOOD, connection_state="notResponding"), "not responding"),
        (replace(GOOD, config_issues=2), "2 configuration issues"),
        (replace(GOOD, overall_status="red"), "status red"),
        (replace(GOOD, cpu_usage_mhz=None), "no quick stats (load unknown)"),
        (replace(GOOD, memory_usage_mb=None), "no quick stats (load unknown)"),
        (replace(GOOD, cpu_capacity_mhz=None), "no hardware capacity reported (load unknown)"),
        (replace(GOOD, datastore_moids=frozenset({DS1})), "target datastore not mounted"),
        (replace(GOOD, cpu_usage_mhz=4400), "CPU at 96%, over the 90% limit"),
        (replace(GOOD, memory_usage_mb=3900), "memory at 95%, over the 90% limit"),
    ],
)
def test_unusable_host_is_rejected_with_its_reason(bad, reason):
    assert rejection_reason(bad, datastore_moid=DS0) == reason
    with pytest.raises(NoUsableHost) as caught:
        choose_hosts([bad], 1, DS0)
    assert f"good: {reason}" in str(caught.value)
    assert caught.value.rejections[0].reason == reason


def test_missing_stats_are_never_taken_as_an_idle_host():
    unknown = host("unknown", cpu=None, mem=None)
    busy = host("busy", cpu=3000, mem=3000)

    assert [h.name for h in choose_hosts([unknown, busy], 3, DS0)] == ["busy"] * 3


def test_error_lists_every_host_and_is_a_domain_error():
    hosts = [
        host("h0", in_maintenance=True),
        host("h1", connection_state="disconnected", config_issues=1),
        host("h2", cpu=None),
        host("h3", datastore_moids=frozenset()),
        host("h4", mem=4000),
    ]

    with pytest.raises(VmPortalError) as caught:
        choose_hosts(hosts, 1, DS0)

    message = str(caught.value)
    assert isinstance(caught.value, NoUsableHost) and caught.value.http_status == 503
    assert message.startswith(f"No usable host with datastore {DS0}: ")
    for expected in ("h0: in maintenance mode", "h1: disconnected", "h2: no quick stats",
                     "h3: target datastore not mounted", "h4: memory at 98%, over the 90% limit"):
        assert expected in message


def test_no_hosts_at_all_says_so():
    with pytest.raises(NoUsableHost, match="no hosts"):
        choose_hosts([], 1)


def test_least_loaded_comes_first_and_yellow_or_gray_are_usable():
    hosts = [host("a", cpu=2000), host("b", cpu=500, overall_status="yellow"), host("c", cpu=1000, mem=100,
                                                                                     overall_status="gray")]
    assert [h.name for h in rank_hosts(hosts)] == ["c", "b", "a"]  # load = busier of CPU and memory
    assert least_loaded_host(hosts).name == "c"


def test_burst_of_ten_spreads_over_hosts_in_load_order():
    hosts = [host("h0", cpu=400, mem=100), host("h1", cpu=300, mem=100), host("h2", cpu=900, mem=100),
             host("h3", cpu=200, mem=100), host("maint", cpu=0, mem=0, in_maintenance=True)]

    chosen = [h.name for h in choose_hosts(hosts, 10, DS0)]

    assert Counter(chosen) == {"h3": 3, "h1": 3, "h0": 2, "h2": 2}
    assert chosen[:4] == ["h3", "h1", "h0", "h2"]  # round-robin, least loaded first
    assert all(a != b for a, b in zip(chosen, chosen[1:], strict=False))  # never twice in a row


def test_clones_already_placed_count_against_a_host():
    hosts = [host("h0", cpu=100, mem=10), host("h1", cpu=200, mem=10), host("h2", cpu=300, mem=10)]

    chosen = choose_hosts(hosts, 3, placed={"host-h0": 2, "host-h1": 1})

    assert [h.name for h in chosen] == ["h2", "h1", "h2"]


def test_spread_limits_the_hosts_sharing_a_burst():
    hosts = [host("h0", cpu=100, mem=10), host("h1", cpu=200, mem=10), host("h2", cpu=300, mem=10)]

    assert Counter(h.name for h in choose_hosts(hosts, 4, spread=2)) == {"h0": 2, "h1": 2}


def test_a_much_busier_host_is_not_spread_onto():
    hosts = [host("idle", cpu=100, mem=100), host("busy", cpu=4000, mem=100)]  # 2% vs 87%

    assert {h.name for h in choose_hosts(hosts, 5)} == {"idle"}
    assert choose_hosts([hosts[1]], 1)[0].name == "busy"  # still usable when it is the only one


def test_custom_limit_and_empty_burst():
    hosts = [host("h0", cpu=2500)]  # 54%
    assert choose_hosts(hosts, 0) == []
    with pytest.raises(NoUsableHost, match="CPU at 54%, over the 50% limit"):
        choose_hosts(hosts, 1, limit=0.5)


def test_candidate_from_a_fetched_host_record():
    record = HostRecord(
        moid="host-23", name="DC0_C0_H0", datacenter_moid="datacenter-2", cluster_moid="domain-c1",
        connection_state="connected", in_maintenance=False, config_issues=0, overall_status="green",
        cpu_capacity_mhz=4588, memory_capacity_mb=4095, cpu_usage_mhz=67, memory_usage_mb=1404,
        datastore_moids=(DS0,),
    )
    candidate = HostCandidate.from_info(record)
    assert candidate.datastore_moids == frozenset({DS0})
    assert candidate.load == pytest.approx(1404 / 4095)


@pytest.mark.vcsim
@pytest.mark.django_db
def test_placement_on_a_synced_simulator_skips_unusable_hosts(vcsim_factory, vcenter_for):
    sim = vcsim_factory("-maint-hosts", "1", "-disconnected-hosts", "1")
    vc = vcenter_for(sim)
    assert sync_inventory(vc).ok
    datastore = Datastore.objects.get(vcenter=vc, name="LocalDS_0").moid
    chosen_anywhere = []
    for cluster in Cluster.objects.filter(vcenter=vc):
        candidates = host_candidates(cluster)
        chosen = choose_hosts(candidates, 10, datastore)
        usable = [c for c in candidates if rejection_reason(c, datastore_moid=datastore) is None]
        assert len(chosen) == 10
        assert {h.name for h in chosen} == {h.name for h in usable}  # equal load: all share
        assert max(Counter(chosen).values()) - min(Counter(chosen).values()) <= 1
        chosen_anywhere += chosen
    names = {h.name for h in chosen_anywhere}
    bad = [c for cl in Cluster.objects.filter(vcenter=vc) for c in host_candidates(cl)
           if c.in_maintenance or c.connection_state != "connected"]
    assert len(bad) == 2 and not names & {b.name for b in bad}
