package main

import (
	"context"
	"fmt"
	"log"
	"sort"
	"sync"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// The default inventory, shaped like one of our sites:
//
//	DC0
//	  host/DC0_C0 (DC0_C0_H0..H3), host/DC0_C1 (DC0_C1_H0..H3)  -clusters, -hosts
//	  datastore/LocalDS_0, LocalDS_1, mounted on every host      -datastores
//	  network/DC0_DVPG0 (on DVS0; the templates' NICs), VM Network
//	  vm/Templates/debian-12, vm/Templates/ubuntu-24.04           powered-off templates
//	  vm/vmportal                                                  where pools put their VMs
//	  vm/scale-00001..                                             -vms (powered on)
const (
	datacenterName = "DC0"
	vmNetworkName  = "DC0_DVPG0"
	templateFolder = "Templates"
	poolFolder     = "vmportal"
)

// vmShape is the hardware of a VM we create.
type vmShape struct {
	name     string
	guestID  string
	cpus     int32
	memoryMB int64
	diskGB   int64
}

var templates = []vmShape{
	{name: "debian-12", guestID: "debian12_64Guest", cpus: 2, memoryMB: 2048, diskGB: 16},
	{name: "ubuntu-24.04", guestID: "ubuntu64Guest", cpus: 2, memoryMB: 2048, diskGB: 16},
}

// Host hardware of a current two-socket server; the simulator's default (2 cores, 4 GB)
// would make placement by free capacity meaningless after a couple of clones.
const (
	hostCPUPackages = 2
	hostCPUCores    = 32
	hostCPUThreads  = 64
	hostCPUMhz      = 2600
	hostMemoryBytes = 512 << 30
)

// buildSite turns the simulator's generated inventory (datacenter, clusters, hosts,
// datastores, DVS) into the default site.
func (s *sim) buildSite() error {
	ctx := context.Background()
	finder := find.NewFinder(s.client, true)
	dc, err := finder.Datacenter(ctx, datacenterName)
	if err != nil {
		return err
	}
	finder.SetDatacenter(dc)
	folders, err := dc.Folders(ctx)
	if err != nil {
		return err
	}

	fixSharedStorage()
	hosts := sortedHosts()
	for _, h := range hosts {
		sizeHost(h)
	}
	s.setHostStates(hosts)
	updateClusterSummaries()

	tmplFolder, err := folders.VmFolder.CreateFolder(ctx, templateFolder)
	if err != nil {
		return err
	}
	if _, err := folders.VmFolder.CreateFolder(ctx, poolFolder); err != nil {
		return err
	}

	network, err := finder.Network(ctx, vmNetworkName)
	if err != nil {
		return err
	}
	nic, err := network.EthernetCardBackingInfo(ctx)
	if err != nil {
		return err
	}
	datastores, err := finder.DatastoreList(ctx, "*")
	if err != nil {
		return err
	}
	sort.Slice(datastores, func(i, j int) bool { return datastores[i].Name() < datastores[j].Name() })

	usable := usableHosts(hosts)
	if len(usable) == 0 {
		return fmt.Errorf("no connected host outside maintenance mode to place the templates on")
	}
	for i, shape := range templates {
		host := usable[0] // templates live in the first cluster; pools copy them elsewhere
		vm, err := s.createVM(ctx, tmplFolder, host, datastores[i%len(datastores)], nic, shape)
		if err != nil {
			return fmt.Errorf("template %s: %w", shape.name, err)
		}
		if err := vm.MarkAsTemplate(ctx); err != nil {
			return fmt.Errorf("template %s: %w", shape.name, err)
		}
	}

	if s.opts.vms > 0 {
		return s.createScaleVMs(ctx, folders.VmFolder, usable, datastores, nic)
	}
	return nil
}

// createScaleVMs adds -vms powered-on VMs, round robin over the usable hosts of every
// cluster, so that inventory reads and watches can be measured at a realistic size.
func (s *sim) createScaleVMs(ctx context.Context, folder *object.Folder, hosts []*simulator.HostSystem, datastores []*object.Datastore, nic types.BaseVirtualDeviceBackingInfo) error {
	started := time.Now()
	jobs := make(chan int)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ { // creation is mostly file I/O in the datastore directories
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				shape := vmShape{name: fmt.Sprintf("scale-%05d", i+1), guestID: templates[i%len(templates)].guestID, cpus: 2, memoryMB: 4096, diskGB: 40}
				vm, err := s.createVM(ctx, folder, hosts[i%len(hosts)], datastores[i%len(datastores)], nic, shape)
				if err == nil {
					if fault := taskFault(vm.PowerOn(ctx)); fault != nil {
						err = fmt.Errorf("power on: %T", fault)
					}
				}
				if err != nil {
					select {
					case errs <- fmt.Errorf("%s: %w", shape.name, err):
					default:
					}
				}
			}
		}()
	}
	for i := 0; i < s.opts.vms; i++ {
		select {
		case err := <-errs:
			close(jobs)
			wg.Wait()
			return err
		case jobs <- i:
		}
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	log.Printf("created %d scale VMs in %s", s.opts.vms, time.Since(started).Round(time.Millisecond))
	return nil
}

// createVM creates a powered-off VM with a thin disk and a vmxnet3 NIC on host.
func (s *sim) createVM(ctx context.Context, folder *object.Folder, host *simulator.HostSystem, ds *object.Datastore, backing types.BaseVirtualDeviceBackingInfo, shape vmShape) (*object.VirtualMachine, error) {
	var devices object.VirtualDeviceList
	scsi, err := devices.CreateSCSIController("pvscsi")
	if err != nil {
		return nil, err
	}
	devices = append(devices, scsi)
	disk := devices.CreateDisk(scsi.(types.BaseVirtualController), ds.Reference(), "")
	disk.CapacityInKB = shape.diskGB << 20
	disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo).ThinProvisioned = types.NewBool(true)
	devices = append(devices, disk)
	nic, err := devices.CreateEthernetCard("vmxnet3", backing)
	if err != nil {
		return nil, err
	}
	devices = append(devices, nic)

	changes, err := devices.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd)
	if err != nil {
		return nil, err
	}
	for _, c := range changes {
		if c.GetVirtualDeviceConfigSpec().Device == disk {
			c.GetVirtualDeviceConfigSpec().FileOperation = types.VirtualDeviceConfigSpecFileOperationCreate
		}
	}
	spec := types.VirtualMachineConfigSpec{
		Name:         shape.name,
		GuestId:      shape.guestID,
		NumCPUs:      shape.cpus,
		MemoryMB:     shape.memoryMB,
		Files:        &types.VirtualMachineFileInfo{VmPathName: "[" + ds.Name() + "]"},
		DeviceChange: changes,
	}

	pool := object.NewResourcePool(s.client, rootPool(host))
	hostRef := object.NewHostSystem(s.client, host.Self)
	task, err := folder.CreateVM(ctx, spec, pool, hostRef)
	if fault := taskFault(task, err); fault != nil {
		return nil, fmt.Errorf("%T", fault)
	}
	res, _ := taskOutcome(task.Reference())
	return object.NewVirtualMachine(s.client, res.(types.ManagedObjectReference)), nil
}

// rootPool is the root resource pool of a host's cluster.
func rootPool(host *simulator.HostSystem) types.ManagedObjectReference {
	switch cr := simulator.Map.Get(*host.Parent).(type) {
	case *simulator.ClusterComputeResource:
		return *cr.ResourcePool
	case *mo.ComputeResource:
		return *cr.ResourcePool
	}
	panic("host without compute resource: " + host.Name)
}

func sortedHosts() []*simulator.HostSystem {
	var hosts []*simulator.HostSystem
	for _, e := range simulator.Map.All("HostSystem") {
		hosts = append(hosts, e.(*simulator.HostSystem))
	}
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].Name < hosts[j].Name })
	return hosts
}

func usableHosts(hosts []*simulator.HostSystem) []*simulator.HostSystem {
	var usable []*simulator.HostSystem
	for _, h := range hosts {
		if hostFault(h.Self) == nil {
			usable = append(usable, h)
		}
	}
	return usable
}

func sizeHost(h *simulator.HostSystem) {
	simulator.Map.WithLock(h, func() {
		simulator.Map.Update(h, []types.PropertyChange{
			{Name: "summary.hardware.numCpuPkgs", Val: int16(hostCPUPackages)},
			{Name: "summary.hardware.numCpuCores", Val: int16(hostCPUCores)},
			{Name: "summary.hardware.numCpuThreads", Val: int16(hostCPUThreads)},
			{Name: "summary.hardware.cpuMhz", Val: int32(hostCPUMhz)},
			{Name: "summary.hardware.memorySize", Val: int64(hostMemoryBytes)},
			{Name: "hardware.cpuInfo.numCpuPackages", Val: int16(hostCPUPackages)},
			{Name: "hardware.cpuInfo.numCpuCores", Val: int16(hostCPUCores)},
			{Name: "hardware.cpuInfo.numCpuThreads", Val: int16(hostCPUThreads)},
			{Name: "hardware.cpuInfo.hz", Val: int64(hostCPUMhz) * 1000 * 1000},
			{Name: "hardware.memorySize", Val: int64(hostMemoryBytes)},
		})
	})
}

// setHostStates applies -maint-hosts (first hosts by name) and -disconnected-hosts (last).
func (s *sim) setHostStates(hosts []*simulator.HostSystem) {
	for i := 0; i < s.opts.maintHosts && i < len(hosts); i++ {
		h := hosts[i]
		simulator.Map.WithLock(h, func() {
			simulator.Map.Update(h, []types.PropertyChange{
				{Name: "runtime.inMaintenanceMode", Val: true},
				{Name: "summary.runtime.inMaintenanceMode", Val: true},
			})
		})
		log.Printf("%s is in maintenance mode", h.Name)
	}
	for i := 0; i < s.opts.discHosts && i < len(hosts); i++ {
		h := hosts[len(hosts)-1-i]
		simulator.Map.WithLock(h, func() {
			simulator.Map.Update(h, []types.PropertyChange{
				{Name: "runtime.connectionState", Val: types.HostSystemConnectionStateDisconnected},
				{Name: "summary.runtime.connectionState", Val: types.HostSystemConnectionStateDisconnected},
				{Name: "overallStatus", Val: types.ManagedEntityStatusGray},
				{Name: "summary.overallStatus", Val: types.ManagedEntityStatusGray},
				{Name: "summary.quickStats.overallCpuUsage", Val: int32(0)},
				{Name: "summary.quickStats.overallMemoryUsage", Val: int32(0)},
				{Name: "configIssue", Val: []types.BaseEvent{&types.HostConnectionLostEvent{
					HostEvent: types.HostEvent{Event: types.Event{CreatedTime: time.Now(), FullFormattedMessage: "Host " + h.Name + " is not responding"}},
				}}},
			})
		})
		log.Printf("%s is disconnected", h.Name)
	}
}

// updateClusterSummaries recomputes capacity as vCenter does (the simulator adds MHz per
// host instead of MHz x cores, and counts hosts in maintenance as effective).
func updateClusterSummaries() {
	for _, e := range simulator.Map.All("ClusterComputeResource") {
		cr := e.(*simulator.ClusterComputeResource)
		simulator.Map.WithLock(cr, func() {
			s := cr.Summary.GetComputeResourceSummary()
			*s = types.ComputeResourceSummary{OverallStatus: types.ManagedEntityStatusGreen}
			for _, ref := range cr.Host {
				h := simulator.Map.Get(ref).(*simulator.HostSystem)
				hw := h.Summary.Hardware
				cpu := int32(hw.CpuMhz) * int32(hw.NumCpuCores)
				s.TotalCpu += cpu
				s.TotalMemory += hw.MemorySize
				s.NumCpuCores += hw.NumCpuCores
				s.NumCpuThreads += hw.NumCpuThreads
				s.NumHosts++
				if hostFault(ref) == nil {
					s.EffectiveCpu += cpu
					s.EffectiveMemory += hw.MemorySize >> 20 // MB
					s.NumEffectiveHosts++
				}
			}
			simulator.Map.Update(cr, []types.PropertyChange{{Name: "summary", Val: cr.Summary}})
		})
	}
}

// fixSharedStorage repairs how the simulator records datastores mounted on several hosts:
// each host's mount replaced the datastore object, so datastore.host listed only the last
// host, and the datastore folder listed each datastore once per host. Networks likewise
// listed no hosts.
func fixSharedStorage() {
	mounts := map[types.ManagedObjectReference][]types.ManagedObjectReference{}
	nets := map[types.ManagedObjectReference][]types.ManagedObjectReference{}
	for _, h := range sortedHosts() {
		for _, ds := range h.Datastore {
			mounts[ds] = append(mounts[ds], h.Self)
		}
		for _, n := range h.Network {
			nets[n] = append(nets[n], h.Self)
		}
	}
	for ref, hosts := range mounts {
		ds, ok := simulator.Map.Get(ref).(*simulator.Datastore)
		if !ok {
			continue
		}
		simulator.Map.WithLock(ds, func() {
			var list []types.DatastoreHostMount
			for _, h := range hosts {
				list = append(list, types.DatastoreHostMount{Key: h, MountInfo: types.HostMountInfo{
					Path:       ds.Info.GetDatastoreInfo().Url,
					AccessMode: string(types.HostMountModeReadWrite),
					Mounted:    types.NewBool(true),
					Accessible: types.NewBool(true),
				}})
			}
			simulator.Map.Update(ds, []types.PropertyChange{{Name: "host", Val: list}})
		})
	}
	for ref, hosts := range nets {
		switch n := simulator.Map.Get(ref).(type) {
		case *mo.Network:
			simulator.Map.WithLock(n, func() { simulator.Map.Update(n, []types.PropertyChange{{Name: "host", Val: hosts}}) })
		case *simulator.DistributedVirtualPortgroup:
			simulator.Map.WithLock(n, func() { simulator.Map.Update(n, []types.PropertyChange{{Name: "host", Val: hosts}}) })
		}
	}
	for _, e := range simulator.Map.All("Folder") {
		f := e.(*simulator.Folder)
		simulator.Map.WithLock(f, func() {
			seen := map[types.ManagedObjectReference]bool{}
			unique := f.ChildEntity[:0]
			for _, c := range f.ChildEntity {
				if !seen[c] {
					seen[c] = true
					unique = append(unique, c)
				}
			}
			f.ChildEntity = unique
		})
	}
}
