package main

import (
	"bytes"
	"fmt"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

// The simulator changes many properties by assigning struct fields instead of going through
// Map.Update, so PropertyCollector watchers (WaitForUpdatesEx) never hear about them. The
// functions here re-announce those properties, and repair the reverse references
// (host.vm, resourcePool.vm, datastore.vm) the simulator leaves stale.

// vmConfigState is what ReconfigVM_Task may change, captured to announce only real changes.
type vmConfigState struct {
	name, annotation, guestID         string
	numCPU, coresPerSocket, memoryMB  int32
	devices, extraConfig, allocations []byte
}

func captureConfig(vm *simulator.VirtualMachine) vmConfigState {
	c := vm.Config
	return vmConfigState{
		name:           vm.Name,
		annotation:     c.Annotation,
		guestID:        c.GuestId,
		numCPU:         c.Hardware.NumCPU,
		coresPerSocket: c.Hardware.NumCoresPerSocket,
		memoryMB:       c.Hardware.MemoryMB,
		devices:        mustMarshal(&types.ArrayOfVirtualDevice{VirtualDevice: c.Hardware.Device}),
		extraConfig:    mustMarshal(&types.ArrayOfOptionValue{OptionValue: c.ExtraConfig}),
		allocations:    append(mustMarshal(c.CpuAllocation), mustMarshal(c.MemoryAllocation)...),
	}
}

// configChanges lists the property changes between two captures, as vCenter reports them.
func configChanges(vm *simulator.VirtualMachine, was, now vmConfigState) []types.PropertyChange {
	c := vm.Config
	var changes []types.PropertyChange
	add := func(changed bool, props ...types.PropertyChange) {
		if changed {
			changes = append(changes, props...)
		}
	}
	add(was.name != now.name,
		types.PropertyChange{Name: "name", Val: vm.Name},
		types.PropertyChange{Name: "config.name", Val: c.Name},
		types.PropertyChange{Name: "summary.config.name", Val: vm.Summary.Config.Name})
	add(was.annotation != now.annotation,
		types.PropertyChange{Name: "config.annotation", Val: c.Annotation},
		types.PropertyChange{Name: "summary.config.annotation", Val: c.Annotation})
	add(was.guestID != now.guestID,
		types.PropertyChange{Name: "config.guestId", Val: c.GuestId},
		types.PropertyChange{Name: "config.guestFullName", Val: c.GuestFullName},
		types.PropertyChange{Name: "summary.config.guestId", Val: c.GuestId},
		types.PropertyChange{Name: "summary.config.guestFullName", Val: c.GuestFullName})
	add(was.numCPU != now.numCPU,
		types.PropertyChange{Name: "config.hardware.numCPU", Val: c.Hardware.NumCPU},
		types.PropertyChange{Name: "summary.config.numCpu", Val: c.Hardware.NumCPU})
	add(was.coresPerSocket != now.coresPerSocket,
		types.PropertyChange{Name: "config.hardware.numCoresPerSocket", Val: c.Hardware.NumCoresPerSocket})
	add(was.memoryMB != now.memoryMB,
		types.PropertyChange{Name: "config.hardware.memoryMB", Val: c.Hardware.MemoryMB},
		types.PropertyChange{Name: "summary.config.memorySizeMB", Val: c.Hardware.MemoryMB})
	add(!bytes.Equal(was.devices, now.devices),
		types.PropertyChange{Name: "config.hardware.device", Val: c.Hardware.Device})
	add(!bytes.Equal(was.extraConfig, now.extraConfig),
		types.PropertyChange{Name: "config.extraConfig", Val: c.ExtraConfig})
	add(!bytes.Equal(was.allocations, now.allocations),
		types.PropertyChange{Name: "config.cpuAllocation", Val: c.CpuAllocation},
		types.PropertyChange{Name: "config.memoryAllocation", Val: c.MemoryAllocation})
	return changes
}

// wrapReconfigure announces the config.* properties ReconfigVM_Task changed (the simulator
// announces none of them) and keeps MAC addresses unique when NICs were added.
func (s *sim) wrapReconfigure(task *simulator.Task) {
	vm, ok := simulator.Map.Get(*task.Info.Entity).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	var was vmConfigState
	wrapTask(task, func() { was = captureConfig(vm) }, func(types.AnyType) {
		now := captureConfig(vm)
		if !bytes.Equal(was.devices, now.devices) {
			s.assignMACs(vm)
			now = captureConfig(vm)
		}
		if changes := configChanges(vm, was, now); len(changes) > 0 {
			simulator.Map.Update(vm, changes) // the task runs with the VM locked
		}
	})
}

// placement is where a VM lives; its reverse references must list it.
type placement struct {
	host       *types.ManagedObjectReference
	pool       *types.ManagedObjectReference
	datastores []types.ManagedObjectReference
}

func capturePlacement(vm *simulator.VirtualMachine) placement {
	p := placement{datastores: append([]types.ManagedObjectReference(nil), vm.Datastore...)}
	if vm.Runtime.Host != nil {
		h := *vm.Runtime.Host
		p.host = &h
	}
	if vm.ResourcePool != nil {
		rp := *vm.ResourcePool
		p.pool = &rp
	}
	return p
}

// relink moves vm between the reverse lists (host.vm, resourcePool.vm, datastore.vm).
// The VM's own lock may be held; the other objects are locked one at a time.
func relink(vm types.ManagedObjectReference, was, now placement) {
	if !sameRef(was.host, now.host) {
		if was.host != nil {
			if h, ok := simulator.Map.Get(*was.host).(*simulator.HostSystem); ok {
				simulator.Map.RemoveReference(h, &h.Vm, vm)
			}
		}
		if now.host != nil {
			if h, ok := simulator.Map.Get(*now.host).(*simulator.HostSystem); ok {
				simulator.Map.AddReference(h, &h.Vm, vm)
			}
		}
	}
	if !sameRef(was.pool, now.pool) {
		if was.pool != nil {
			if rp := poolVMs(*was.pool); rp != nil {
				simulator.Map.RemoveReference(rp.obj, rp.vms, vm)
			}
		}
		if now.pool != nil {
			if rp := poolVMs(*now.pool); rp != nil {
				simulator.Map.AddReference(rp.obj, rp.vms, vm)
			}
		}
	}
	for _, ds := range was.datastores {
		if simulator.FindReference(now.datastores, ds) == nil {
			if d, ok := simulator.Map.Get(ds).(*simulator.Datastore); ok {
				simulator.Map.RemoveReference(d, &d.Vm, vm)
			}
		}
	}
	for _, ds := range now.datastores {
		if d, ok := simulator.Map.Get(ds).(*simulator.Datastore); ok {
			simulator.Map.AddReference(d, &d.Vm, vm)
		}
	}
}

type vmList struct {
	obj mo.Reference
	vms *[]types.ManagedObjectReference
}

func poolVMs(ref types.ManagedObjectReference) *vmList {
	switch p := simulator.Map.Get(ref).(type) {
	case *simulator.ResourcePool:
		return &vmList{p, &p.Vm}
	case *simulator.VirtualApp:
		return &vmList{p, &p.Vm}
	}
	return nil
}

func sameRef(a, b *types.ManagedObjectReference) bool {
	return (a == nil && b == nil) || (a != nil && b != nil && *a == *b)
}

// wrapRelocate: RelocateVM_Task updates the VM's host, pool and datastores but not the
// lists on the other side, so host.vm kept listing VMs that had left.
func (s *sim) wrapRelocate(task *simulator.Task) {
	vm, ok := simulator.Map.Get(*task.Info.Entity).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	var was placement
	wrapTask(task, func() { was = capturePlacement(vm) }, func(types.AnyType) {
		now := capturePlacement(vm)
		relink(vm.Self, was, now)
		if !sameRef(was.host, now.host) {
			setEnvironmentBrowser(vm)
		}
	})
}

// setEnvironmentBrowser keeps vm.environmentBrowser on the compute resource of its host.
func setEnvironmentBrowser(vm *simulator.VirtualMachine) {
	host, ok := simulator.Map.Get(*vm.Runtime.Host).(*simulator.HostSystem)
	if !ok || host.Parent == nil {
		return
	}
	var browser *types.ManagedObjectReference
	switch cr := simulator.Map.Get(*host.Parent).(type) {
	case *simulator.ClusterComputeResource:
		browser = cr.EnvironmentBrowser
	case *mo.ComputeResource:
		browser = cr.EnvironmentBrowser
	}
	if browser != nil {
		simulator.Map.Update(vm, []types.PropertyChange{{Name: "environmentBrowser", Val: *browser}})
	}
}

// templateChanged announces MarkAsTemplate/MarkAsVirtualMachine (also done by a clone with
// spec.template): the simulator flips config.template and resourcePool silently, and leaves
// the template in (or a new VM out of) its pool's vm list.
func templateChanged(vm *simulator.VirtualMachine, was placement) {
	var changes []types.PropertyChange
	simulator.Map.WithLock(vm, func() {
		var pool interface{}
		if vm.ResourcePool != nil {
			pool = *vm.ResourcePool
		}
		changes = []types.PropertyChange{
			{Name: "config.template", Val: vm.Config.Template},
			{Name: "summary.config.template", Val: vm.Config.Template},
			{Name: "resourcePool", Val: pool},
			{Name: "runtime.host", Val: *vm.Runtime.Host},
			{Name: "summary.runtime.host", Val: *vm.Runtime.Host},
		}
		simulator.Map.Update(vm, changes)
	})
	var now placement
	simulator.Map.WithLock(vm, func() { now = capturePlacement(vm) })
	relink(vm.Self, was, now)
}

func mustMarshal(v interface{}) []byte {
	b, err := xml.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("marshal %T: %s", v, err))
	}
	return b
}
