package main

import (
	"bytes"
	"context"
	"hash/fnv"
	"log"
	"sort"
	"sync"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

// CloneVM_Task in the simulator ignores most of the clone spec and corrupts its source:
//   - the clone is handed the source's own device objects, so clones share one disk, the
//     source's disk path changes on every clone, and concurrent clone/destroy panics;
//   - powerOn, customization, config (numCPUs, memoryMB, annotation) and location.host are
//     ignored (the clone stays on the source's host, even in another cluster);
//   - a second VM with the same name in one folder is accepted (vCenter: DuplicateName);
//   - a linked clone without a snapshot, or from another VM's snapshot, is accepted.
//
// The frontend decodes each CloneVM_Task request and parks it here; when the simulator
// creates the clone task, the registry hook (wrapClone) picks the request up and wraps the
// task, so all of the above happens inside the task, as on vCenter.

// cloneRequests hands a decoded request from the frontend to the task hook. The simulator
// gives no way to tell two tasks on one source apart, so requests on a source are passed
// one at a time (clones of one source are serialised by the simulator anyway).
type cloneRequests struct {
	stripes [64]sync.Mutex

	mu      sync.Mutex
	pending map[types.ManagedObjectReference]*types.CloneVM_Task
}

func newCloneRequests() *cloneRequests {
	return &cloneRequests{pending: map[types.ManagedObjectReference]*types.CloneVM_Task{}}
}

// begin parks req until the task hook takes it; call the returned func once the simulator
// has answered.
func (c *cloneRequests) begin(req *types.CloneVM_Task) (end func()) {
	h := fnv.New32a()
	_, _ = h.Write([]byte(req.This.Value))
	stripe := &c.stripes[h.Sum32()%uint32(len(c.stripes))]
	stripe.Lock()
	c.mu.Lock()
	c.pending[req.This] = req
	c.mu.Unlock()
	return func() {
		c.take(req.This)
		stripe.Unlock()
	}
}

func (c *cloneRequests) take(source types.ManagedObjectReference) *types.CloneVM_Task {
	c.mu.Lock()
	defer c.mu.Unlock()
	req := c.pending[source]
	delete(c.pending, source)
	return req
}

// checkCloneRefs validates the objects a clone request names. vCenter rejects unknown
// objects with a SOAP fault before creating a task; the simulator would panic on some
// (location.datastore) and drop the connection.
func checkCloneRefs(req *types.CloneVM_Task) types.BaseMethodFault {
	check := func(ref *types.ManagedObjectReference, prop string, kinds ...string) types.BaseMethodFault {
		if ref == nil {
			return nil
		}
		if simulator.Map.Get(*ref) == nil {
			return &types.ManagedObjectNotFound{Obj: *ref}
		}
		for _, k := range kinds {
			if ref.Type == k {
				return nil
			}
		}
		return &types.InvalidArgument{InvalidProperty: prop}
	}
	loc := req.Spec.Location
	for _, f := range []types.BaseMethodFault{
		check(&req.Folder, "folder", "Folder"),
		check(loc.Pool, "spec.location.pool", "ResourcePool", "VirtualApp"),
		check(loc.Host, "spec.location.host", "HostSystem"),
		check(loc.Datastore, "spec.location.datastore", "Datastore"),
		check(req.Spec.Snapshot, "spec.snapshot", "VirtualMachineSnapshot"),
	} {
		if f != nil {
			return f
		}
	}
	return nil
}

func (s *sim) wrapClone(task *simulator.Task) {
	req := s.clones.take(*task.Info.Entity)
	if req == nil {
		return // an injected failure, or a clone made by the simulator itself
	}
	run := task.Execute
	task.Execute = func(t *simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return s.clone(t, req, run)
	}
}

// clone runs as the clone task, with the source VM locked by the simulator's dispatcher.
func (s *sim) clone(t *simulator.Task, req *types.CloneVM_Task, run func(*simulator.Task) (types.AnyType, types.BaseMethodFault)) (types.AnyType, types.BaseMethodFault) {
	src, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	if !ok {
		return nil, &types.ManagedObjectNotFound{Obj: req.This}
	}
	// Everything vCenter refuses is refused before anything is created.
	host, fault := checkClone(src, req)
	if fault != nil {
		return nil, fault
	}
	release, fault := s.names.reserve(req.Folder, req.Name)
	if fault != nil {
		return nil, fault
	}
	defer release()

	// Let the simulator clone private copies of the source's devices; it rewrites the disk
	// backings of whatever it is given and hands the objects to the clone.
	devices := src.Config.Hardware.Device
	src.Config.Hardware.Device = copyDevices(devices)
	res, fault := run(t)
	src.Config.Hardware.Device = devices
	if fault != nil {
		return nil, fault
	}

	ref := res.(types.ManagedObjectReference)
	if fault := s.finishClone(src, req, ref, host); fault != nil {
		log.Printf("clone %q failed after creation, removing it: %T", req.Name, fault)
		s.discard(ref)
		return nil, fault
	}
	return ref, nil
}

// checkClone returns the host the clone goes to (nil: leave it to the simulator).
func checkClone(src *simulator.VirtualMachine, req *types.CloneVM_Task) (*types.ManagedObjectReference, types.BaseMethodFault) {
	spec := req.Spec
	if req.Name == "" {
		return nil, &types.InvalidArgument{InvalidProperty: "name"}
	}
	if f, ok := simulator.Map.Get(req.Folder).(*simulator.Folder); !ok || !hasString(f.ChildType, "VirtualMachine") {
		return nil, &types.NotSupported{}
	}
	if spec.Snapshot != nil {
		snap, ok := simulator.Map.Get(*spec.Snapshot).(*simulator.VirtualMachineSnapshot)
		if !ok || snap.Vm != src.Self {
			return nil, &types.InvalidArgument{InvalidProperty: "spec.snapshot"}
		}
	} else if isLinked(spec) {
		// Sharing the source's disks is only safe from a read-only snapshot point.
		return nil, &types.InvalidArgument{InvalidProperty: "spec.snapshot"}
	}

	pool := spec.Location.Pool
	if pool == nil && !src.Config.Template {
		pool = src.ResourcePool
	}
	if pool == nil {
		return nil, nil // the simulator answers InvalidArgument spec.location.pool, like vCenter
	}
	hosts := poolHosts(*pool)

	if h := spec.Location.Host; h != nil {
		if simulator.FindReference(hosts, *h) == nil {
			return nil, &types.InvalidArgument{InvalidProperty: "spec.location.host"}
		}
		return h, hostFault(*h)
	}
	// No host given: place the clone like DRS would, on a usable host of the pool's
	// cluster (the fewest VMs first), instead of the source's host.
	var best *types.ManagedObjectReference
	bestVMs := 0
	for i := range hosts {
		h, ok := simulator.Map.Get(hosts[i]).(*simulator.HostSystem)
		if !ok || hostFault(hosts[i]) != nil {
			continue
		}
		var n int
		simulator.Map.WithLock(h, func() { n = len(h.Vm) })
		if best == nil || n < bestVMs {
			best, bestVMs = &hosts[i], n
		}
	}
	if best == nil {
		return nil, &types.NoCompatibleHost{Host: hosts}
	}
	return best, nil
}

func isLinked(spec types.VirtualMachineCloneSpec) bool {
	return spec.Location.DiskMoveType == string(types.VirtualMachineRelocateDiskMoveOptionsCreateNewChildDiskBacking)
}

// hostFault is what vCenter answers when asked to place a VM on a host it cannot use.
func hostFault(ref types.ManagedObjectReference) types.BaseMethodFault {
	h, ok := simulator.Map.Get(ref).(*simulator.HostSystem)
	if !ok {
		return &types.ManagedObjectNotFound{Obj: ref}
	}
	var state types.HostSystemConnectionState
	var maint bool
	simulator.Map.WithLock(h, func() { state, maint = h.Runtime.ConnectionState, h.Runtime.InMaintenanceMode })
	switch {
	case state != types.HostSystemConnectionStateConnected:
		return &types.HostNotConnected{}
	case maint:
		return &types.InvalidHostState{Host: &ref}
	}
	return nil
}

// poolHosts lists the hosts of the compute resource that owns a resource pool or vApp.
func poolHosts(pool types.ManagedObjectReference) []types.ManagedObjectReference {
	var owner types.ManagedObjectReference
	switch p := simulator.Map.Get(pool).(type) {
	case *simulator.ResourcePool:
		owner = p.Owner
	case *simulator.VirtualApp:
		owner = p.Owner
	default:
		return nil
	}
	var hosts []types.ManagedObjectReference
	switch cr := simulator.Map.Get(owner).(type) {
	case *simulator.ClusterComputeResource:
		simulator.Map.WithLock(cr, func() { hosts = append(hosts, cr.Host...) })
	case *mo.ComputeResource:
		hosts = append(hosts, cr.Host...)
	}
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].Value < hosts[j].Value })
	return hosts
}

// finishClone applies what the simulator ignored. Failing here fails the clone task.
func (s *sim) finishClone(src *simulator.VirtualMachine, req *types.CloneVM_Task, ref types.ManagedObjectReference, host *types.ManagedObjectReference) types.BaseMethodFault {
	clone, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return &types.ManagedObjectNotFound{Obj: ref}
	}
	spec := req.Spec

	// Where the simulator put it: the source's host, in the requested pool. A template
	// clone has already lost its pool (MarkAsTemplate) but is still in the pool's list.
	var created, now placement
	simulator.Map.WithLock(clone, func() {
		created = capturePlacement(clone)
		if spec.Template {
			created.pool = spec.Location.Pool
			if created.pool == nil {
				created.pool = src.ResourcePool
			}
		}

		var changes []types.PropertyChange
		if host != nil && *host != *clone.Runtime.Host {
			changes = append(changes,
				types.PropertyChange{Name: "runtime.host", Val: *host},
				types.PropertyChange{Name: "summary.runtime.host", Val: *host})
		}
		if spec.Template {
			changes = append(changes,
				types.PropertyChange{Name: "config.template", Val: true},
				types.PropertyChange{Name: "summary.config.template", Val: true},
				types.PropertyChange{Name: "resourcePool", Val: nil})
		}
		was := captureConfig(clone)
		applyCloneConfig(clone, spec.Config)
		if isLinked(spec) {
			linkDisks(clone, *spec.Snapshot)
		}
		s.assignMACs(clone) // NICs added through spec.config.deviceChange
		changes = append(changes, configChanges(clone, was, captureConfig(clone))...)
		if len(changes) > 0 {
			simulator.Map.Update(clone, changes)
		}
		if host != nil {
			setEnvironmentBrowser(clone)
		}
		now = capturePlacement(clone)
	})
	relink(ref, created, now)

	if spec.Template {
		return nil // customization and power-on do not apply to templates
	}
	// Through the in-process client, so these behave exactly as the API calls would:
	// a pending customization is applied at power-on, tools start, events are posted.
	ctx := context.Background()
	vm := object.NewVirtualMachine(s.client, ref)
	if spec.Customization != nil {
		if fault := taskFault(vm.Customize(ctx, *spec.Customization)); fault != nil {
			return fault
		}
	}
	if spec.PowerOn {
		if fault := taskFault(vm.PowerOn(ctx)); fault != nil {
			return fault
		}
	}
	return nil
}

// applyCloneConfig applies the parts of spec.config the simulator's clone drops (it keeps
// only extraConfig, instanceUuid and deviceChange). The clone must be locked.
func applyCloneConfig(vm *simulator.VirtualMachine, c *types.VirtualMachineConfigSpec) {
	if c == nil {
		return
	}
	if c.NumCPUs > 0 {
		vm.Config.Hardware.NumCPU = c.NumCPUs
		vm.Summary.Config.NumCpu = c.NumCPUs
	}
	if c.NumCoresPerSocket > 0 {
		vm.Config.Hardware.NumCoresPerSocket = c.NumCoresPerSocket
	}
	if c.MemoryMB > 0 {
		vm.Config.Hardware.MemoryMB = int32(c.MemoryMB)
		vm.Summary.Config.MemorySizeMB = int32(c.MemoryMB)
	}
	if c.Annotation != "" {
		vm.Config.Annotation = c.Annotation
		vm.Summary.Config.Annotation = c.Annotation
	}
	if c.GuestId != "" {
		vm.Config.GuestId, vm.Config.GuestFullName = c.GuestId, c.GuestId
		vm.Summary.Config.GuestId, vm.Summary.Config.GuestFullName = c.GuestId, c.GuestId
	}
	if c.CpuAllocation != nil {
		vm.Config.CpuAllocation = c.CpuAllocation
	}
	if c.MemoryAllocation != nil {
		vm.Config.MemoryAllocation = c.MemoryAllocation
	}
}

// linkDisks makes a linked clone look like one: each disk gets the snapshot's disk as
// its parent backing (the simulator creates independent disks either way).
func linkDisks(vm *simulator.VirtualMachine, snapshot types.ManagedObjectReference) {
	snap, ok := simulator.Map.Get(snapshot).(*simulator.VirtualMachineSnapshot)
	if !ok {
		return
	}
	var parents []*types.VirtualDiskFlatVer2BackingInfo
	for _, d := range snap.Config.Hardware.Device {
		if disk, ok := d.(*types.VirtualDisk); ok {
			if b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
				parents = append(parents, b)
			}
		}
	}
	i := 0
	for _, d := range vm.Config.Hardware.Device {
		disk, ok := d.(*types.VirtualDisk)
		if !ok || i >= len(parents) {
			continue
		}
		if b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
			p := *parents[i]
			p.Parent, p.Uuid = nil, ""
			b.Parent = &p
			i++
		}
	}
}

// discard removes a clone whose post-processing failed, as vCenter rolls back a clone.
func (s *sim) discard(ref types.ManagedObjectReference) {
	ctx := context.Background()
	vm := object.NewVirtualMachine(s.client, ref)
	if state, err := vm.PowerState(ctx); err == nil && state != types.VirtualMachinePowerStatePoweredOff {
		if fault := taskFault(vm.PowerOff(ctx)); fault != nil {
			log.Printf("discard %s: power off: %T", ref.Value, fault)
		}
	}
	if fault := taskFault(vm.Destroy(ctx)); fault != nil {
		log.Printf("discard %s: destroy: %T", ref.Value, fault)
	}
}

// taskFault is the fault an in-process task call ended with, if any.
func taskFault(task *object.Task, err error) types.BaseMethodFault {
	if err != nil {
		if soap.IsSoapFault(err) {
			if f, ok := soap.ToSoapFault(err).VimFault().(types.BaseMethodFault); ok {
				return f
			}
		}
		if soap.IsVimFault(err) {
			return soap.ToVimFault(err)
		}
		return &types.SystemError{Reason: err.Error()}
	}
	_, fault := taskOutcome(task.Reference())
	return fault
}

// nameReservations enforces vCenter's rule that VM names are unique within a folder,
// including between clones still in flight.
type nameReservations struct {
	mu   sync.Mutex
	held map[nameKey]bool
}

type nameKey struct {
	folder types.ManagedObjectReference
	name   string
}

func newNameReservations() *nameReservations {
	return &nameReservations{held: map[nameKey]bool{}}
}

func (n *nameReservations) reserve(folder types.ManagedObjectReference, name string) (release func(), fault types.BaseMethodFault) {
	n.mu.Lock()
	defer n.mu.Unlock()
	key := nameKey{folder, name}
	if n.held[key] {
		return nil, &types.DuplicateName{Name: name, Object: folder}
	}
	if existing := childVMNamed(folder, name); existing != nil {
		return nil, &types.DuplicateName{Name: name, Object: *existing}
	}
	n.held[key] = true
	return func() {
		n.mu.Lock()
		delete(n.held, key)
		n.mu.Unlock()
	}, nil
}

func childVMNamed(folder types.ManagedObjectReference, name string) *types.ManagedObjectReference {
	f, ok := simulator.Map.Get(folder).(*simulator.Folder)
	if !ok {
		return nil
	}
	var children []types.ManagedObjectReference
	simulator.Map.WithLock(f, func() { children = append(children, f.ChildEntity...) })
	for i, child := range children {
		if child.Type != "VirtualMachine" && child.Type != "VirtualApp" {
			continue
		}
		if e, ok := simulator.Map.Get(child).(mo.Entity); ok && e.Entity().Name == name {
			return &children[i]
		}
	}
	return nil
}

// copyDevices deep-copies a device list (through XML, which knows every device type).
func copyDevices(devices []types.BaseVirtualDevice) []types.BaseVirtualDevice {
	var out types.ArrayOfVirtualDevice
	dec := xml.NewDecoder(bytes.NewReader(mustMarshal(&types.ArrayOfVirtualDevice{VirtualDevice: devices})))
	dec.TypeFunc = types.TypeFunc()
	if err := dec.Decode(&out); err != nil {
		panic("copying devices: " + err.Error())
	}
	return out.VirtualDevice
}

func hasString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
