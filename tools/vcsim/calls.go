package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

// callStats is the simulator's own record of the task methods it served: how many calls of
// each are in flight now, the most that ever were at once, and how many there were. Tests
// read it from GET /_vcsim/calls to prove limits that span processes and hosts (the most
// CloneVM_Task calls in flight at once), which no client can see by itself. Since a task
// here completes inside its call, a call in flight is a task in flight.
type callStats struct {
	mu       sync.Mutex
	inFlight map[string]int
	max      map[string]int
	total    map[string]int
}

func newCallStats() *callStats {
	return &callStats{inFlight: map[string]int{}, max: map[string]int{}, total: map[string]int{}}
}

func (c *callStats) begin(method string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inFlight[method]++
	c.total[method]++
	if c.inFlight[method] > c.max[method] {
		c.max[method] = c.inFlight[method]
	}
}

func (c *callStats) end(method string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inFlight[method]--
}

type callCount struct {
	InFlight    int `json:"in_flight"`
	MaxInFlight int `json:"max_in_flight"`
	Total       int `json:"total"`
}

// ServeHTTP answers GET /_vcsim/calls with the counts by method; POST /_vcsim/calls/reset
// starts a new record (the maximum from what is in flight now, totals from zero).
func (c *callStats) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	if r.Method == http.MethodPost && r.URL.Path == "/_vcsim/calls/reset" {
		for m := range c.max {
			c.max[m] = c.inFlight[m]
			c.total[m] = 0
		}
	}
	out := map[string]callCount{}
	for m := range c.total {
		out[m] = callCount{InFlight: c.inFlight[m], MaxInFlight: c.max[m], Total: c.total[m]}
	}
	c.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// serveDatastoreRename renames a datastore, as vCenter's Rename_Task does (the stock
// simulator answers MethodNotFound): its name and summary.name change, and /folder finds it
// by the new name only.
func (f *frontend) serveDatastoreRename(w http.ResponseWriter, r *http.Request, body []byte, call soapCall) {
	ds, ok := simulator.Map.Get(call.this).(*simulator.Datastore)
	method, err := simulator.UnmarshalBody(types.TypeFunc(), body)
	if !ok || err != nil || !f.hasSession(r) {
		f.next.ServeHTTP(w, r) // the simulator answers with the right fault
		return
	}
	req, ok := method.Body.(*types.Rename_Task)
	if !ok {
		f.next.ServeHTTP(w, r)
		return
	}
	name := req.NewName
	if strings.TrimSpace(name) == "" {
		writeFault(w, "a datastore name cannot be empty", &types.InvalidArgument{InvalidProperty: "newName"})
		return
	}
	old := ds.Name
	res := simulator.RenameTask(ds, &types.Rename_Task{This: call.this, NewName: name}).(*methods.Rename_TaskBody)
	if ds.Name == old {
		writeSOAP(w, http.StatusOK, `<Rename_TaskResponse xmlns="urn:vim25"><returnval type="Task">`+
			res.Res.Returnval.Value+`</returnval></Rename_TaskResponse>`)
		return // the task failed (a duplicate name): nothing else changes
	}
	summary := ds.Summary
	summary.Name = ds.Name
	simulator.Map.Update(ds, []types.PropertyChange{{Name: "summary", Val: summary}})
	// vCenter rewrites the datastore paths of the VMs on it ("[old] x" becomes "[new] x"):
	// clones of a template read its files by those paths.
	rewrite := func(p string) string {
		if strings.HasPrefix(p, "["+old+"]") {
			return "[" + name + "]" + strings.TrimPrefix(p, "["+old+"]")
		}
		return p
	}
	for _, ref := range ds.Vm {
		vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
		if !ok || vm.Config == nil {
			continue
		}
		simulator.Map.WithLock(vm, func() {
			files := vm.Config.Files
			files.VmPathName = rewrite(files.VmPathName)
			files.SnapshotDirectory = rewrite(files.SnapshotDirectory)
			files.SuspendDirectory = rewrite(files.SuspendDirectory)
			files.LogDirectory = rewrite(files.LogDirectory)
			for _, dev := range vm.Config.Hardware.Device {
				if b, ok := dev.GetVirtualDevice().Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
					info := b.GetVirtualDeviceFileBackingInfo()
					info.FileName = rewrite(info.FileName)
				}
			}
			vm.Summary.Config.VmPathName = files.VmPathName
			simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.files", Val: files}})
		})
	}
	writeSOAP(w, http.StatusOK, `<Rename_TaskResponse xmlns="urn:vim25"><returnval type="Task">`+
		res.Res.Returnval.Value+`</returnval></Rename_TaskResponse>`)
}
