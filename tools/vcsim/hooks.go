package main

import (
	"context"
	"log"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// registryHooks is registered with simulator.Map.AddHandler, so it sees every object the
// simulator creates, changes through Map.Update, or removes. Tasks are Put before they run,
// which lets a hook wrap Task.Execute: a fix applied there is part of the task, so the task
// only reaches "success" (and its caller only gets an answer) once the fix is done, and a
// fix that fails turns into the task's error, as it would on vCenter.
type registryHooks struct {
	sim *sim
}

func (h *registryHooks) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VmportalHooks", Value: "vmportal-hooks"}
}

func (h *registryHooks) PutObject(obj mo.Reference) {
	task, ok := obj.(*simulator.Task)
	if !ok {
		return
	}
	h.sim.tasks.add(task.Self)
	fixTaskEntity(task)

	switch task.Info.DescriptionId {
	case "VirtualMachine.cloneVm":
		h.sim.wrapClone(task)
	case "Folder.createVm": // CreateVM_Task, ImportVApp, and the VM creation inside every clone
		wrapTask(task, nil, func(res types.AnyType) { h.sim.ensureUniqueMACs(res) })
	case "VirtualMachine.reconfigVm":
		h.sim.wrapReconfigure(task)
	case "VirtualMachine.relocateVm":
		h.sim.wrapRelocate(task)
	case "HostSystem.enterMaintenanceMode", "HostSystem.exitMaintenanceMode":
		wrapTask(task, nil, func(types.AnyType) { notifyMaintenance(*task.Info.Entity) })
	}
}

func (h *registryHooks) UpdateObject(obj mo.Reference, changes []types.PropertyChange) {
	if obj.Reference().Type != "VirtualMachine" {
		return
	}
	for _, c := range changes {
		if c.Name != "runtime.powerState" {
			continue
		}
		// Every power path (tasks, ShutdownGuest, reset) ends up here, with the VM locked
		// by the caller.
		state, ok := c.Val.(types.VirtualMachinePowerState)
		if vm, found := simulator.Map.Get(obj.Reference()).(*simulator.VirtualMachine); ok && found {
			h.sim.guests.powerChanged(vm, state)
		}
		return
	}
}

func (h *registryHooks) RemoveObject(ref types.ManagedObjectReference) {
	switch ref.Type {
	case "VirtualMachine":
		h.sim.macs.release(ref)
		h.sim.guests.forget(ref)
		h.sim.guestFiles.forget(ref)
	case "Task":
		h.sim.tasks.remove(ref)
	}
}

// wrapTask runs before() ahead of the task's own work and after() once it succeeded.
// Both run inside the task, with whatever locks the simulator holds for it.
func wrapTask(task *simulator.Task, before func(), after func(types.AnyType)) {
	run := task.Execute
	task.Execute = func(t *simulator.Task) (types.AnyType, types.BaseMethodFault) {
		if before != nil {
			before()
		}
		res, fault := run(t)
		if fault == nil && after != nil {
			after(res)
		}
		return res, fault
	}
}

// managedEntityTypes are the types TaskInfo.entity may hold (vim.ManagedEntity subtypes).
var managedEntityTypes = map[string]bool{
	"Folder": true, "Datacenter": true, "ComputeResource": true, "ClusterComputeResource": true,
	"HostSystem": true, "ResourcePool": true, "VirtualApp": true, "VirtualMachine": true,
	"Datastore": true, "StoragePod": true, "Network": true, "OpaqueNetwork": true,
	"DistributedVirtualPortgroup": true, "DistributedVirtualSwitch": true,
	"VmwareDistributedVirtualSwitch": true,
}

// fixTaskEntity: the simulator sets TaskInfo.entity to whatever object the method ran on.
// For snapshot tasks that is a VirtualMachineSnapshot and for FileManager/VirtualDiskManager
// tasks a manager; neither is a ManagedEntity, and pyVmomi raises TypeError when it reads
// such a task.info (WaitForTask included). vCenter names the VM for snapshot tasks and
// leaves the entity unset for the managers. It also sets entityName to the object's name,
// where the simulator puts the moid.
func fixTaskEntity(task *simulator.Task) {
	info := &task.Info
	if info.Entity == nil {
		return
	}
	if !managedEntityTypes[info.Entity.Type] {
		snap, ok := simulator.Map.Get(*info.Entity).(*simulator.VirtualMachineSnapshot)
		if !ok {
			info.Entity, info.EntityName = nil, ""
			return
		}
		vm := snap.Vm
		info.Entity = &vm
	}
	if e, ok := simulator.Map.Get(*info.Entity).(mo.Entity); ok && e.Entity().Name != "" {
		info.EntityName = e.Entity().Name
	}
}

// notifyMaintenance: Enter/ExitMaintenanceMode_Task set the flag without Map.Update, so
// PropertyCollector watchers never heard of it.
func notifyMaintenance(ref types.ManagedObjectReference) {
	host, ok := simulator.Map.Get(ref).(*simulator.HostSystem)
	if !ok {
		return
	}
	// The task runs with the host locked.
	simulator.Map.Update(host, []types.PropertyChange{
		{Name: "runtime.inMaintenanceMode", Val: host.Runtime.InMaintenanceMode},
		{Name: "summary.runtime.inMaintenanceMode", Val: host.Runtime.InMaintenanceMode},
	})
}

// taskTracker remembers every Task so that collectTasks can free them: the simulator keeps
// each Task (and through its Execute closure the objects it touched) forever, about 100 KB
// per clone, which grows without bound in long demo runs and benchmarks.
type taskTracker struct {
	mu    sync.Mutex
	refs  map[types.ManagedObjectReference]struct{}
	freed int
}

func newTaskTracker() *taskTracker {
	return &taskTracker{refs: map[types.ManagedObjectReference]struct{}{}}
}

func (t *taskTracker) add(ref types.ManagedObjectReference) {
	t.mu.Lock()
	t.refs[ref] = struct{}{}
	t.mu.Unlock()
}

func (t *taskTracker) remove(ref types.ManagedObjectReference) {
	t.mu.Lock()
	delete(t.refs, ref)
	t.mu.Unlock()
}

func (t *taskTracker) snapshot() []types.ManagedObjectReference {
	t.mu.Lock()
	defer t.mu.Unlock()
	refs := make([]types.ManagedObjectReference, 0, len(t.refs))
	for ref := range t.refs {
		refs = append(refs, ref)
	}
	return refs
}

// collectTasks removes completed tasks older than ttl. Tasks still listed in
// TaskManager.recentTask (the last 200) are kept, because clients read them from there.
func (s *sim) collectTasks(ctx context.Context, ttl time.Duration) {
	every := ttl / 4
	if every > time.Minute {
		every = time.Minute
	}
	if every < time.Second {
		every = time.Second
	}
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		tm := simulator.Map.Get(*simulator.Map.Get(vim25.ServiceInstance).(*simulator.ServiceInstance).Content.TaskManager).(*simulator.TaskManager)
		recent := map[types.ManagedObjectReference]bool{}
		tm.Lock()
		for _, ref := range tm.RecentTask {
			recent[ref] = true
		}
		tm.Unlock()

		cutoff := time.Now().Add(-ttl)
		freed := 0
		for _, ref := range s.tasks.snapshot() {
			task, ok := simulator.Map.Get(ref).(*simulator.Task)
			if !ok || recent[ref] {
				continue
			}
			var old bool
			simulator.Map.WithLock(task, func() {
				old = task.Info.CompleteTime != nil && task.Info.CompleteTime.Before(cutoff)
			})
			if old {
				simulator.Map.Remove(ref)
				freed++
			}
		}
		if freed > 0 {
			log.Printf("task-ttl: freed %d completed tasks", freed)
		}
	}
}
