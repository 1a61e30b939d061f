package main

import (
	"context"
	"math/rand"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// varyLoad (-host-stats) gives hosts and powered-on VMs changing quickStats. The simulator's
// are constant (every host at 67 MHz / 1404 MB, VMs at zero), so load-based placement would
// always pick the same host and its tests would prove nothing. Changes go through
// Map.Update, so PropertyCollector watchers see them as they would on vCenter.
func (s *sim) varyLoad(ctx context.Context, every time.Duration) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		randomiseLoad()
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

func randomiseLoad() {
	for _, h := range sortedHosts() {
		simulator.Map.WithLock(h, func() {
			if h.Runtime.ConnectionState != types.HostSystemConnectionStateConnected {
				return // a disconnected host reports nothing
			}
			hw := h.Summary.Hardware
			cpuMhz := float64(hw.CpuMhz) * float64(hw.NumCpuCores)
			memMB := float64(hw.MemorySize >> 20)
			simulator.Map.Update(h, []types.PropertyChange{
				{Name: "summary.quickStats.overallCpuUsage", Val: int32(cpuMhz * between(0.05, 0.85))},
				{Name: "summary.quickStats.overallMemoryUsage", Val: int32(memMB * between(0.10, 0.80))},
			})
		})
	}
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		simulator.Map.WithLock(vm, func() {
			if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
				return
			}
			hw := vm.Config.Hardware
			memMB := float64(hw.MemoryMB)
			simulator.Map.Update(vm, []types.PropertyChange{
				{Name: "summary.quickStats.overallCpuUsage", Val: int32(float64(hw.NumCPU) * hostCPUMhz * between(0.01, 0.60))},
				{Name: "summary.quickStats.guestMemoryUsage", Val: int32(memMB * between(0.05, 0.90))},
				{Name: "summary.quickStats.hostMemoryUsage", Val: int32(memMB * between(0.30, 1.00))},
			})
		})
	}
}

func between(lo, hi float64) float64 { return lo + rand.Float64()*(hi-lo) }
