package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

// -save DIR / -load DIR keep the inventory across restarts (`make demo`). DIR holds
//
//	inventory/   one XML file per object, in the format of `govc object.save`, which
//	             simulator.Model.Load reads
//	datastores/  the datastores' files (VM directories), one directory per datastore
//
// Tasks, events, sessions and pending guest customizations are not kept.

func inventoryDir(dir string) string  { return filepath.Join(dir, "inventory") }
func datastoresDir(dir string) string { return filepath.Join(dir, "datastores") }

// hasSavedInventory tells whether -load has something to load; the first run of
// `-load DIR -save DIR` starts from the default inventory.
func hasSavedInventory(dir string) bool {
	files, _ := filepath.Glob(filepath.Join(inventoryDir(dir), "*.xml"))
	return len(files) > 0
}

// save writes the inventory and moves the datastores' files into dir.
func (s *sim) save(dir string) error {
	ctx := context.Background()
	tmp := inventoryDir(dir) + ".new"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	n, err := s.writeInventory(ctx, tmp)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(inventoryDir(dir)); err != nil {
		return err
	}
	if err := os.Rename(tmp, inventoryDir(dir)); err != nil {
		return err
	}

	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		src := ds.Info.GetDatastoreInfo().Url
		dst := filepath.Join(datastoresDir(dir), ds.Name)
		if filepath.Clean(src) == filepath.Clean(dst) {
			continue // loaded from this directory: the files are already there
		}
		if err := os.RemoveAll(dst); err != nil {
			return err
		}
		if err := copyTree(src, dst); err != nil {
			return fmt.Errorf("datastore %s: %w", ds.Name, err)
		}
	}
	log.Printf("saved %d objects to %s", n, dir)
	return nil
}

// writeInventory retrieves every object Model.Load needs and writes one file per object.
// Model.Load expects the ServiceInstance first, hence the sequence prefix.
func (s *sim) writeInventory(ctx context.Context, dir string) (int, error) {
	c := s.client
	n := 0
	write := func(objects []types.ObjectContent) error {
		for _, obj := range objects {
			obj.MissingSet = nil
			name := filepath.Join(dir, fmt.Sprintf("%06d-%s.xml", n, strings.ReplaceAll(obj.Obj.Encode(), "/", "_")))
			f, err := os.Create(name)
			if err != nil {
				return err
			}
			enc := xml.NewEncoder(f)
			enc.Indent("", "  ")
			err = enc.Encode(obj)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			n++
		}
		return nil
	}

	pc := property.DefaultCollector(c)
	var content []types.ObjectContent
	if err := pc.RetrieveOne(ctx, vim25.ServiceInstance, []string{"content"}, &content); err != nil {
		return n, err
	}
	if err := write(content); err != nil {
		return n, err
	}

	all := types.NewBool(true)
	var specs []types.PropertyFilterSpec
	for _, ref := range mo.References(c.ServiceContent) {
		spec := types.PropertySpec{Type: ref.Type, All: all}
		if ref.Type == "LicenseManager" || ref.Type == "ServiceManager" {
			spec.All = nil // some of their properties cannot be encoded; the defaults will do
		}
		specs = append(specs, types.PropertyFilterSpec{ObjectSet: []types.ObjectSpec{{Obj: ref}}, PropSet: []types.PropertySpec{spec}})
	}

	// Every managed entity, plus the per-host and per-cluster helper objects they refer to.
	cv, err := view.NewManager(c).CreateContainerView(ctx, c.ServiceContent.RootFolder, nil, true)
	if err != nil {
		return n, err
	}
	defer func() { _ = cv.Destroy(ctx) }()
	follow := func(name, kind, path string) types.BaseSelectionSpec {
		return &types.TraversalSpec{SelectionSpec: types.SelectionSpec{Name: name}, Type: kind, Path: path}
	}
	specs = append(specs, types.PropertyFilterSpec{
		ObjectSet: []types.ObjectSpec{{
			Obj:  cv.Reference(),
			Skip: types.NewBool(true),
			SelectSet: []types.BaseSelectionSpec{
				&types.TraversalSpec{Type: "ContainerView", Path: "view", SelectSet: []types.BaseSelectionSpec{
					&types.SelectionSpec{Name: "browser"}, &types.SelectionSpec{Name: "dsBrowser"},
					&types.SelectionSpec{Name: "dsSystem"}, &types.SelectionSpec{Name: "netSystem"},
				}},
				follow("browser", "ComputeResource", "environmentBrowser"),
				follow("dsBrowser", "Datastore", "browser"),
				follow("dsSystem", "HostSystem", "configManager.datastoreSystem"),
				follow("netSystem", "HostSystem", "configManager.networkSystem"),
			},
		}},
		PropSet: []types.PropertySpec{
			{Type: "ManagedEntity", All: all},
			{Type: "EnvironmentBrowser", All: all},
			{Type: "HostDatastoreBrowser", All: all},
			{Type: "HostDatastoreSystem", All: all},
			{Type: "HostNetworkSystem", All: all},
		},
	})

	// Snapshots are not managed entities; they are found through each VM's snapshot tree.
	var snapshots []types.ObjectSpec
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		simulator.Map.WithLock(vm, func() {
			if vm.Snapshot != nil {
				for _, ref := range snapshotRefs(vm.Snapshot.RootSnapshotList) {
					snapshots = append(snapshots, types.ObjectSpec{Obj: ref})
				}
			}
		})
	}
	if len(snapshots) > 0 {
		specs = append(specs, types.PropertyFilterSpec{
			ObjectSet: snapshots,
			PropSet:   []types.PropertySpec{{Type: "VirtualMachineSnapshot", All: all}},
		})
	}

	req := types.RetrievePropertiesEx{This: pc.Reference(), SpecSet: specs}
	res, err := methods.RetrievePropertiesEx(ctx, c, &req)
	if err != nil {
		return n, err
	}
	for result := res.Returnval; result != nil; {
		if err := write(result.Objects); err != nil {
			return n, err
		}
		if result.Token == "" {
			break
		}
		next, err := methods.ContinueRetrievePropertiesEx(ctx, c, &types.ContinueRetrievePropertiesEx{This: req.This, Token: result.Token})
		if err != nil {
			return n, err
		}
		result = &next.Returnval
	}
	return n, nil
}

func snapshotRefs(tree []types.VirtualMachineSnapshotTree) []types.ManagedObjectReference {
	var refs []types.ManagedObjectReference
	for _, node := range tree {
		refs = append(refs, node.Snapshot)
		refs = append(refs, snapshotRefs(node.ChildSnapshotList)...)
	}
	return refs
}

// afterLoad repairs what Model.Load does not restore, then applies the host flags.
func (s *sim) afterLoad(dir string) error {
	// Datastores now live in dir (their saved URLs point at deleted temporary directories).
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		url := filepath.Join(datastoresDir(dir), ds.Name)
		if err := os.MkdirAll(url, 0o755); err != nil {
			return err
		}
		simulator.Map.WithLock(ds, func() {
			ds.Info.GetDatastoreInfo().Url = url
			simulator.Map.Update(ds, []types.PropertyChange{{Name: "summary.url", Val: url}})
		})
	}

	// Model.Load knows no simulator type for snapshots and loads plain mo objects, on
	// which the snapshot methods do not exist.
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		if vm.Snapshot == nil {
			continue
		}
		for _, ref := range snapshotRefs(vm.Snapshot.RootSnapshotList) {
			if plain, ok := simulator.Map.Get(ref).(*mo.VirtualMachineSnapshot); ok {
				simulator.Map.Put(&simulator.VirtualMachineSnapshot{VirtualMachineSnapshot: *plain})
			}
		}
	}

	// The registry's moref counter restarts at zero, so new objects would reuse loaded
	// morefs and silently replace them. Advance it past the highest loaded number.
	// The saved file names end in Type:value.xml, snapshots and host helpers included.
	files, err := filepath.Glob(filepath.Join(inventoryDir(dir), "*.xml"))
	if err != nil {
		return err
	}
	highest := 0
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".xml")
		if i := strings.LastIndexByte(name, '-'); i >= 0 {
			if v, err := strconv.Atoi(name[i+1:]); err == nil && v > highest {
				highest = v
			}
		}
	}
	for {
		f := simulator.Map.NewEntity(&mo.Folder{}) // takes the next number, registers nothing
		if v, _ := strconv.Atoi(strings.TrimPrefix(f.Entity().Self.Value, "folder-")); v > highest {
			break
		}
	}

	fixSharedStorage()
	hosts := sortedHosts()
	s.setHostStates(hosts)
	updateClusterSummaries()
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		simulator.Map.WithLock(vm, func() {
			s.assignMACs(vm)
			s.guests.restore(vm)
		})
	}
	return nil
}

func copyTree(src, dst string) error {
	return filepath.Walk(src, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if info.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(target)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
}
