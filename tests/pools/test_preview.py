"""The reconfigure preview is a pure function of counts and configuration."""

from __future__ import annotations

from apps.pools.reconfigure import PoolCounts, PoolShape, preview_reconfigure


def shape(size, template=1, cluster=1, enabled=True):
    return PoolShape(size=size, template_id=template, cluster_id=cluster, enabled=enabled)


def test_growing_clones_the_difference_and_leaves_leased_vms():
    p = preview_reconfigure(counts=PoolCounts(ready=3, booting=1, leased=5), current=shape(4), new=shape(16))
    assert (p.clone, p.drain_ready, p.leased_untouched) == (12, 0, 5)
    assert p.summary == "clone 12, 5 leased VMs untouched"


def test_shrinking_drains_ready_vms_only():
    p = preview_reconfigure(counts=PoolCounts(ready=6, booting=2, leased=3), current=shape(8), new=shape(4))
    assert (p.clone, p.drain_ready) == (0, 4)
    assert p.summary == "drain 4 ready VMs, 3 leased VMs untouched"


def test_shrinking_below_in_flight_clones_drains_every_ready_vm_but_not_more():
    p = preview_reconfigure(counts=PoolCounts(ready=2, booting=3, cloning=2), current=shape(7), new=shape(1))
    assert (p.clone, p.drain_ready, p.drain_booting) == (0, 2, 0)


def test_template_change_drains_and_reclones():
    p = preview_reconfigure(counts=PoolCounts(ready=4, booting=1, cloning=1, leased=2),
                            current=shape(6), new=shape(6, template=2))
    assert (p.clone, p.drain_ready, p.drain_booting, p.leased_untouched) == (5, 4, 1, 2)
    assert "template changes" in p.notes[0]


def test_disable_drains_everything_ready():
    p = preview_reconfigure(counts=PoolCounts(ready=5, leased=1), current=shape(5), new=shape(5, enabled=False))
    assert (p.clone, p.drain_ready) == (0, 5)


def test_cluster_change_with_nothing_in_the_old_cluster_is_explained():
    p = preview_reconfigure(counts=PoolCounts(ready=2), current=shape(2), new=shape(2, cluster=9))
    assert not p.changes_anything
    assert any("clone target changes" in n for n in p.notes)
    assert p.summary == "no VMs cloned or destroyed, 0 leased VMs untouched"


def test_cluster_change_drains_ready_and_booting_vms_of_the_old_cluster():
    counts = PoolCounts(ready=4, booting=1, leased=2, ready_elsewhere=3, booting_elsewhere=1)
    p = preview_reconfigure(counts=counts, current=shape(5), new=shape(5, cluster=9))
    assert (p.clone, p.drain_ready, p.drain_booting, p.leased_untouched) == (4, 3, 1, 2)
    assert p.summary == "clone 4, drain 3 ready VMs, drain 1 booting VM, 2 leased VMs untouched"


def test_cluster_change_and_shrink_together_count_each_vm_once():
    counts = PoolCounts(ready=4, ready_elsewhere=2)
    p = preview_reconfigure(counts=counts, current=shape(4), new=shape(1, cluster=9))
    assert (p.clone, p.drain_ready) == (0, 3)


def test_singular_wording():
    p = preview_reconfigure(counts=PoolCounts(ready=2, leased=1), current=shape(2), new=shape(1))
    assert p.summary == "drain 1 ready VM, 1 leased VM untouched"
