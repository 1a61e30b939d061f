package main

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// serveHostStats answers POST /_vcsim/host-stats?host=NAME&cpu=PCT&mem=PCT: it sets one
// host's quickStats to those shares of its capacity, through Map.Update so watchers see
// the change as they would on vCenter. Tests use it to load one host and leave the others
// idle (-host-stats only randomises every host, which cannot set up "this one is busy").
func serveHostStats(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST host=NAME&cpu=PCT&mem=PCT", http.StatusMethodNotAllowed)
		return
	}
	q := r.URL.Query()
	cpu, errCPU := strconv.ParseFloat(q.Get("cpu"), 64)
	mem, errMem := strconv.ParseFloat(q.Get("mem"), 64)
	if errCPU != nil || errMem != nil || cpu < 0 || mem < 0 {
		http.Error(w, "cpu and mem must be percentages", http.StatusBadRequest)
		return
	}
	for _, h := range sortedHosts() {
		if h.Name != q.Get("host") {
			continue
		}
		simulator.Map.WithLock(h, func() {
			hw := h.Summary.Hardware
			cpuMhz := float64(hw.CpuMhz) * float64(hw.NumCpuCores)
			memMB := float64(hw.MemorySize >> 20)
			simulator.Map.Update(h, []types.PropertyChange{
				{Name: "summary.quickStats.overallCpuUsage", Val: int32(cpuMhz * cpu / 100)},
				{Name: "summary.quickStats.overallMemoryUsage", Val: int32(memMB * mem / 100)},
			})
		})
		fmt.Fprintf(w, "%s cpu=%g%% mem=%g%%\n", h.Name, cpu, mem)
		return
	}
	http.Error(w, "no host named "+q.Get("host"), http.StatusNotFound)
}
