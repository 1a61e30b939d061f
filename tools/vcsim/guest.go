package main

import (
	"encoding/binary"
	"fmt"
	"math/rand"
	"net"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// guestTools plays VMware Tools. The simulator reports guestToolsNotRunning forever and never
// an IP (unless a guest customization set one), so code that waits for tools or an address
// after power-on would time out against it, or worse, be written never to wait.
//
// On power-on: tools running, guestState running, hostName (customized name, else the VM
// name), and an IP: the customized fixed IP at once, else (with -guest-ip) a DHCP-like
// address from the CIDR after -guest-ip-delay, stable per VM across reboots.
// On power-off or suspend all of that is cleared again.
type guestTools struct {
	delay time.Duration

	mu       sync.Mutex
	ips      *ipPool // nil without -guest-ip
	identity map[types.ManagedObjectReference]guestIdentity
	boots    map[types.ManagedObjectReference]uint64 // power-on count, to drop stale delayed IPs
}

// guestIdentity is what the guest reported on its last boot, reported again on the next.
type guestIdentity struct {
	hostName string
	ip       string
	prefix   int32
	fixed    bool // set by customization: appears with tools, no DHCP delay
}

func newGuestTools(cidr *net.IPNet, delay time.Duration) *guestTools {
	g := &guestTools{
		delay:    delay,
		identity: map[types.ManagedObjectReference]guestIdentity{},
		boots:    map[types.ManagedObjectReference]uint64{},
	}
	if cidr != nil {
		g.ips = newIPPool(cidr)
	}
	return g
}

// powerChanged runs inside Map.Update of runtime.powerState, with the VM locked. The
// simulator applies a pending customization just before, so vm.Guest already holds its
// hostname and fixed IP.
func (g *guestTools) powerChanged(vm *simulator.VirtualMachine, state types.VirtualMachinePowerState) {
	if state != types.VirtualMachinePowerStatePoweredOn {
		g.stopped(vm)
		return
	}

	// A cloud-init guest names itself and sets its address from its seed.
	seedHost, seedIP, seedPrefix := seedIdentity(vm)
	g.mu.Lock()
	id := g.identity[vm.Self]
	if vm.Guest.HostName != "" {
		id.hostName = vm.Guest.HostName
	}
	if seedHost != "" {
		id.hostName = seedHost
	}
	if id.hostName == "" {
		id.hostName = vm.Name
	}
	if vm.Guest.IpAddress != "" { // customization (or extraConfig SET.guest.ipAddress)
		id.ip, id.prefix, id.fixed = vm.Guest.IpAddress, 24, true
		if g.ips != nil {
			g.ips.claim(vm.Self, id.ip)
		}
	}
	if vm.Guest.IpAddress == "" && seedIP != "" {
		id.ip, id.prefix, id.fixed = seedIP, seedPrefix, true
		if g.ips != nil {
			g.ips.claim(vm.Self, id.ip)
		}
	}
	if id.ip == "" && g.ips != nil {
		id.ip, id.prefix = g.ips.allocate(vm.Self)
	}
	g.identity[vm.Self] = id
	g.boots[vm.Self]++
	boot := g.boots[vm.Self]
	g.mu.Unlock()

	simulator.Map.Update(vm, []types.PropertyChange{
		{Name: "guest.toolsRunningStatus", Val: string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)},
		{Name: "guest.toolsStatus", Val: types.VirtualMachineToolsStatusToolsOk},
		{Name: "guest.toolsVersionStatus2", Val: string(types.VirtualMachineToolsVersionStatusGuestToolsCurrent)},
		{Name: "guest.toolsVersion", Val: "12352"},
		{Name: "guest.guestState", Val: "running"},
		{Name: "guest.guestId", Val: vm.Config.GuestId},
		{Name: "guest.guestFullName", Val: vm.Config.GuestFullName},
		{Name: "guest.hostName", Val: id.hostName},
		{Name: "guestHeartbeatStatus", Val: types.ManagedEntityStatusGreen},
		{Name: "summary.guest.toolsRunningStatus", Val: string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)},
		{Name: "summary.guest.toolsStatus", Val: types.VirtualMachineToolsStatusToolsOk},
		{Name: "summary.guest.guestId", Val: vm.Config.GuestId},
		{Name: "summary.guest.guestFullName", Val: vm.Config.GuestFullName},
		{Name: "summary.guest.hostName", Val: id.hostName},
		{Name: "summary.quickStats.guestHeartbeatStatus", Val: types.ManagedEntityStatusGreen},
	})

	switch {
	case id.ip == "":
	case id.fixed || g.delay == 0:
		setGuestIP(vm, id)
	default:
		ref := vm.Self
		time.AfterFunc(g.delay, func() {
			vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
			if !ok {
				return // destroyed meanwhile
			}
			simulator.Map.WithLock(vm, func() {
				g.mu.Lock()
				current := g.boots[ref] == boot
				g.mu.Unlock()
				if current && vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
					setGuestIP(vm, id)
				}
			})
		})
	}
}

// setGuestIP reports ip on the first NIC, as tools do. The VM must be locked.
func setGuestIP(vm *simulator.VirtualMachine, id guestIdentity) {
	if len(vm.Guest.Net) > 0 {
		nic := &vm.Guest.Net[0]
		nic.IpAddress = []string{id.ip}
		nic.IpConfig = &types.NetIpConfigInfo{IpAddress: []types.NetIpConfigInfoIpAddress{{
			IpAddress: id.ip, PrefixLength: id.prefix, State: string(types.NetIpConfigInfoIpAddressStatusPreferred),
		}}}
	}
	simulator.Map.Update(vm, []types.PropertyChange{
		{Name: "guest.ipAddress", Val: id.ip},
		{Name: "guest.net", Val: vm.Guest.Net},
		{Name: "summary.guest.ipAddress", Val: id.ip},
	})
}

func (g *guestTools) stopped(vm *simulator.VirtualMachine) {
	g.mu.Lock()
	g.boots[vm.Self]++
	g.mu.Unlock()

	for i := range vm.Guest.Net {
		vm.Guest.Net[i].IpAddress = nil
		vm.Guest.Net[i].IpConfig = nil
	}
	simulator.Map.Update(vm, []types.PropertyChange{
		{Name: "guest.toolsRunningStatus", Val: string(types.VirtualMachineToolsRunningStatusGuestToolsNotRunning)},
		{Name: "guest.toolsStatus", Val: types.VirtualMachineToolsStatusToolsNotRunning},
		{Name: "guest.guestState", Val: "notRunning"},
		{Name: "guest.hostName", Val: ""},
		{Name: "guest.ipAddress", Val: ""},
		{Name: "guest.net", Val: vm.Guest.Net},
		{Name: "guestHeartbeatStatus", Val: types.ManagedEntityStatusGray},
		{Name: "summary.guest.toolsRunningStatus", Val: string(types.VirtualMachineToolsRunningStatusGuestToolsNotRunning)},
		{Name: "summary.guest.toolsStatus", Val: types.VirtualMachineToolsStatusToolsNotRunning},
		{Name: "summary.guest.hostName", Val: ""},
		{Name: "summary.guest.ipAddress", Val: ""},
		{Name: "summary.quickStats.guestHeartbeatStatus", Val: types.ManagedEntityStatusGray},
	})
}

// restore takes over the guest identity of a VM loaded (-load) while powered on.
// The VM must be locked.
func (g *guestTools) restore(vm *simulator.VirtualMachine) {
	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn || vm.Guest == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	id := guestIdentity{hostName: vm.Guest.HostName, ip: vm.Guest.IpAddress, prefix: 24, fixed: true}
	if id.ip != "" && g.ips != nil && g.ips.contains(id.ip) {
		g.ips.claim(vm.Self, id.ip)
		id.prefix, id.fixed = g.ips.prefix, false
	}
	g.identity[vm.Self] = id
}

// forget drops a destroyed VM's identity and returns its address to the pool.
func (g *guestTools) forget(ref types.ManagedObjectReference) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.identity, ref)
	delete(g.boots, ref)
	if g.ips != nil {
		g.ips.release(ref)
	}
}

// ipPool hands out addresses of a CIDR, skipping the network's first ten (gateways, DNS)
// and the broadcast address, and never an address another VM holds.
type ipPool struct {
	base   uint32
	size   uint32
	prefix int32
	next   uint32
	owner  map[uint32]types.ManagedObjectReference
}

const reservedLowIPs = 10

func newIPPool(n *net.IPNet) *ipPool {
	ones, bits := n.Mask.Size()
	return &ipPool{
		base:   binary.BigEndian.Uint32(n.IP.To4()),
		size:   1 << uint(bits-ones),
		prefix: int32(ones),
		next:   reservedLowIPs,
		owner:  map[uint32]types.ManagedObjectReference{},
	}
}

func (p *ipPool) allocate(vm types.ManagedObjectReference) (string, int32) {
	usable := p.size - reservedLowIPs - 1
	for i := uint32(0); i < usable; i++ {
		offset := reservedLowIPs + (p.next-reservedLowIPs+i)%usable
		if _, taken := p.owner[p.base+offset]; !taken {
			p.next = offset + 1
			p.owner[p.base+offset] = vm
			return ipString(p.base + offset), p.prefix
		}
	}
	return "", 0 // exhausted: the VM boots without an address, as with an empty DHCP pool
}

// claim records an address set by customization, so it is not handed out again.
func (p *ipPool) claim(vm types.ManagedObjectReference, ip string) {
	if v4 := net.ParseIP(ip).To4(); v4 != nil {
		p.owner[binary.BigEndian.Uint32(v4)] = vm
	}
}

func (p *ipPool) contains(ip string) bool {
	v4 := net.ParseIP(ip).To4()
	return v4 != nil && binary.BigEndian.Uint32(v4)-p.base < p.size
}

func (p *ipPool) release(vm types.ManagedObjectReference) {
	for ip, owner := range p.owner {
		if owner == vm {
			delete(p.owner, ip)
		}
	}
}

func ipString(v uint32) string {
	return fmt.Sprintf("%d.%d.%d.%d", v>>24, v>>16&0xff, v>>8&0xff, v&0xff)
}

// macAllocator keeps MAC addresses unique across the inventory. The simulator copies the
// source's MAC into every clone and derives new ones from three characters of the VM
// uuid, so duplicates appear after a few hundred VMs; DHCP reservations and anything keyed
// by MAC would silently collide. Addresses come from 00:50:56:80:00:00-00:50:56:bf:ff:ff,
// the range vCenter itself assigns from.
type macAllocator struct {
	mu    sync.Mutex
	next  uint32
	owner map[string]types.ManagedObjectReference
	byVM  map[types.ManagedObjectReference][]string
}

const macSpace = 1 << 22 // 0x80_00_00 .. 0xbf_ff_ff

func newMACAllocator() *macAllocator {
	return &macAllocator{
		next:  uint32(rand.Intn(macSpace)),
		owner: map[string]types.ManagedObjectReference{},
		byVM:  map[types.ManagedObjectReference][]string{},
	}
}

// claim records that vm uses mac; false if another VM already does.
func (m *macAllocator) claim(vm types.ManagedObjectReference, mac string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if owner, taken := m.owner[mac]; taken {
		return owner == vm
	}
	m.owner[mac] = vm
	m.byVM[vm] = append(m.byVM[vm], mac)
	return true
}

func (m *macAllocator) allocate(vm types.ManagedObjectReference) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	for {
		v := 0x800000 + m.next%macSpace
		m.next++
		mac := fmt.Sprintf("00:50:56:%02x:%02x:%02x", v>>16, v>>8&0xff, v&0xff)
		if _, taken := m.owner[mac]; !taken {
			m.owner[mac] = vm
			m.byVM[vm] = append(m.byVM[vm], mac)
			return mac
		}
	}
}

func (m *macAllocator) release(vm types.ManagedObjectReference) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, mac := range m.byVM[vm] {
		if m.owner[mac] == vm {
			delete(m.owner, mac)
		}
	}
	delete(m.byVM, vm)
}

// ensureUniqueMACs is the createVm task hook: res is the new VM.
func (s *sim) ensureUniqueMACs(res types.AnyType) {
	ref, ok := res.(types.ManagedObjectReference)
	if !ok {
		return
	}
	if vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine); ok {
		simulator.Map.WithLock(vm, func() { s.assignMACs(vm) })
	}
}

// assignMACs gives every NIC of vm an address no other VM has, keeping manual ones.
// The VM must be locked.
func (s *sim) assignMACs(vm *simulator.VirtualMachine) {
	changed := false
	for _, d := range vm.Config.Hardware.Device {
		nic, ok := d.(types.BaseVirtualEthernetCard)
		if !ok {
			continue
		}
		card := nic.GetVirtualEthernetCard()
		manual := card.AddressType == string(types.VirtualEthernetCardMacTypeManual)
		if card.MacAddress != "" && (s.macs.claim(vm.Self, card.MacAddress) || manual) {
			continue
		}
		card.MacAddress = s.macs.allocate(vm.Self)
		card.AddressType = string(types.VirtualEthernetCardMacTypeAssigned)
		for i := range vm.Guest.Net {
			if vm.Guest.Net[i].DeviceConfigId == card.Key {
				vm.Guest.Net[i].MacAddress = card.MacAddress
			}
		}
		changed = true
	}
	if changed {
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "config.hardware.device", Val: vm.Config.Hardware.Device},
			{Name: "guest.net", Val: vm.Guest.Net},
		})
	}
}
