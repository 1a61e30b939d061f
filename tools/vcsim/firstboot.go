package main

import (
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/ioutil"
	"net"
	"net/http"
	"os"
	"path"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

// First boot, as far as a simulator can play a guest.
//
// cloud-init: a real guest reads its meta-data from guestinfo (VMware datasource) or from
// a NoCloud seed ISO in its CD-ROM drive, names itself local-hostname and configures the
// network config's fixed address. The simulator has no guest, so at power-on the tools
// emulation (guest.go) asks seedIdentity what such a guest would report. Only the identity
// is read; user-data (passwords, keys, packages) is not interpreted.
//
// Guest operations: the stock simulator serves GuestFileManager only for VMs backed by a
// Docker container, and has no MakeDirectoryInGuest. guestFiles keeps a small in-memory
// file system per powered-on VM instead, enough for InitiateFileTransferToGuest/FromGuest
// (with the /guestFile URLs they return) and MakeDirectoryInGuest. -guest-login
// user:password makes it refuse other credentials, like a template with a known account.

// seedIdentity is the host name and fixed IPv4 address a cloud-init guest would take from
// its seed, or empty strings. The VM must be locked.
func seedIdentity(vm *simulator.VirtualMachine) (hostname, ip string, prefix int32) {
	var meta, network []byte
	if raw := extraConfigValue(vm, "guestinfo.metadata"); raw != "" {
		meta = decodeGuestinfo(raw, extraConfigValue(vm, "guestinfo.metadata.encoding"))
	} else if iso := seedISOPath(vm); iso != "" {
		meta, network = readSeedISO(iso)
	}
	if meta == nil {
		return "", "", 0
	}
	var md struct {
		LocalHostname string          `json:"local-hostname"`
		Network       json.RawMessage `json:"network"`
	}
	if err := json.Unmarshal(meta, &md); err != nil {
		return "", "", 0 // YAML meta-data: a real guest could read it, we only read JSON
	}
	if network == nil && len(md.Network) > 0 {
		network = md.Network
		var encoded string // "network" may itself be encoded, with "network.encoding"
		if json.Unmarshal(md.Network, &encoded) == nil {
			var enc struct {
				Encoding string `json:"network.encoding"`
			}
			_ = json.Unmarshal(meta, &enc)
			network = decodeGuestinfo(encoded, enc.Encoding)
		}
	}
	ip, prefix = firstFixedAddress(network)
	return md.LocalHostname, ip, prefix
}

func extraConfigValue(vm *simulator.VirtualMachine, key string) string {
	for _, o := range vm.Config.ExtraConfig {
		if v := o.GetOptionValue(); v.Key == key {
			return fmt.Sprint(v.Value)
		}
	}
	return ""
}

// decodeGuestinfo undoes cloud-init's guestinfo encodings ("base64", "gzip+base64").
func decodeGuestinfo(value, encoding string) []byte {
	switch encoding {
	case "":
		return []byte(value)
	case "base64", "b64":
		b, err := base64.StdEncoding.DecodeString(value)
		if err != nil {
			return nil
		}
		return b
	case "gzip+base64", "gz+b64":
		b, err := base64.StdEncoding.DecodeString(value)
		if err != nil {
			return nil
		}
		r, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil
		}
		out, err := ioutil.ReadAll(io.LimitReader(r, 1<<20))
		if err != nil {
			return nil
		}
		return out
	}
	return nil
}

// firstFixedAddress reads a netplan v2 network config (JSON) for its first static IPv4.
func firstFixedAddress(network []byte) (string, int32) {
	var nc struct {
		Network   json.RawMessage `json:"network"` // {"network": {...}} or the config itself
		Ethernets map[string]struct {
			Addresses []string `json:"addresses"`
		} `json:"ethernets"`
	}
	if json.Unmarshal(network, &nc) != nil {
		return "", 0
	}
	if len(nc.Ethernets) == 0 && len(nc.Network) > 0 {
		return firstFixedAddress(nc.Network)
	}
	for _, eth := range nc.Ethernets {
		for _, a := range eth.Addresses {
			if ip, n, err := net.ParseCIDR(a); err == nil && ip.To4() != nil {
				ones, _ := n.Mask.Size()
				return ip.String(), int32(ones)
			}
		}
	}
	return "", 0
}

// seedISOPath is the local file of the ISO in the VM's connected CD-ROM drive, if any.
func seedISOPath(vm *simulator.VirtualMachine) string {
	for _, d := range vm.Config.Hardware.Device {
		cd, ok := d.(*types.VirtualCdrom)
		if !ok || (cd.Connectable != nil && !cd.Connectable.StartConnected && !cd.Connectable.Connected) {
			continue
		}
		b, ok := cd.Backing.(*types.VirtualCdromIsoBackingInfo)
		if !ok {
			continue
		}
		if p := localDatastoreFile(b.FileName); p != "" {
			return p
		}
	}
	return ""
}

// localDatastoreFile maps "[ds] dir/file" to the simulator's directory for datastore ds.
func localDatastoreFile(name string) string {
	if !strings.HasPrefix(name, "[") {
		return ""
	}
	end := strings.Index(name, "]")
	if end < 0 {
		return ""
	}
	dsName, rel := name[1:end], strings.TrimSpace(name[end+1:])
	for _, obj := range simulator.Map.All("Datastore") {
		ds, ok := obj.(*simulator.Datastore)
		if ok && ds.Name == dsName {
			return path.Join(ds.Info.GetDatastoreInfo().Url, rel)
		}
	}
	return ""
}

// readSeedISO reads meta-data and network-config from a NoCloud seed (volume "cidata").
// Only the ISO 9660 names are looked at (vmportal writes METADATA.;1 and NETWORKC.;1
// beside the Rock Ridge/Joliet names a Linux guest uses).
func readSeedISO(file string) (meta, network []byte) {
	f, err := os.Open(file)
	if err != nil {
		return nil, nil
	}
	defer f.Close()
	const sector = 2048
	pvd := make([]byte, sector)
	if _, err := f.ReadAt(pvd, 16*sector); err != nil || pvd[0] != 1 || string(pvd[1:6]) != "CD001" {
		return nil, nil
	}
	if label := strings.TrimSpace(string(pvd[40:72])); !strings.EqualFold(label, "cidata") {
		return nil, nil
	}
	root := pvd[156 : 156+34]
	dirLBA, dirLen := binary.LittleEndian.Uint32(root[2:6]), binary.LittleEndian.Uint32(root[10:14])
	if dirLen > 1<<20 {
		return nil, nil
	}
	dir := make([]byte, dirLen)
	if _, err := f.ReadAt(dir, int64(dirLBA)*sector); err != nil {
		return nil, nil
	}
	for off := 0; off < len(dir); {
		n := int(dir[off])
		if n == 0 { // records do not cross sectors: skip to the next one
			off = (off/sector + 1) * sector
			continue
		}
		if off+n > len(dir) || n < 34 {
			break
		}
		rec := dir[off : off+n]
		nameLen := int(rec[32])
		if 33+nameLen <= n {
			name := strings.ToUpper(strings.SplitN(string(rec[33:33+nameLen]), ";", 2)[0])
			lba, size := binary.LittleEndian.Uint32(rec[2:6]), binary.LittleEndian.Uint32(rec[10:14])
			if size <= 1<<20 && (name == "METADATA." || name == "METADATA" || strings.HasPrefix(name, "NETWORKC")) {
				data := make([]byte, size)
				if _, err := f.ReadAt(data, int64(lba)*sector); err == nil {
					if strings.HasPrefix(name, "METADATA") {
						meta = data
					} else {
						network = data
					}
				}
			}
		}
		off += n
	}
	return meta, network
}

// ---------------------------------------------------------------- guest operations

type guestFiles struct {
	login string // "user:password", or "" for any non-empty credentials

	mu     sync.Mutex
	files  map[types.ManagedObjectReference]map[string][]byte
	dirs   map[types.ManagedObjectReference]map[string]bool
	grants map[string]transferGrant // by token
}

type transferGrant struct {
	vm     types.ManagedObjectReference
	path   string
	upload bool
	size   int64
	over   bool
}

func newGuestFiles(login string) *guestFiles {
	return &guestFiles{
		login:  login,
		files:  map[types.ManagedObjectReference]map[string][]byte{},
		dirs:   map[types.ManagedObjectReference]map[string]bool{},
		grants: map[string]transferGrant{},
	}
}

var guestFileCalls = map[string]bool{
	"InitiateFileTransferToGuest":   true,
	"InitiateFileTransferFromGuest": true,
	"MakeDirectoryInGuest":          true,
}

// check is what a guest (and its tools) would refuse before any file operation.
func (g *guestFiles) check(vmRef types.ManagedObjectReference, auth types.BaseGuestAuthentication) types.BaseMethodFault {
	vm, ok := simulator.Map.Get(vmRef).(*simulator.VirtualMachine)
	if !ok {
		return &types.ManagedObjectNotFound{Obj: vmRef}
	}
	var power types.VirtualMachinePowerState
	var tools string
	simulator.Map.WithLock(vm, func() { power, tools = vm.Runtime.PowerState, vm.Guest.ToolsRunningStatus })
	if power != types.VirtualMachinePowerStatePoweredOn {
		return &types.InvalidPowerState{RequestedState: types.VirtualMachinePowerStatePoweredOn, ExistingState: power}
	}
	if tools != string(types.VirtualMachineToolsRunningStatusGuestToolsRunning) {
		return &types.GuestOperationsUnavailable{}
	}
	creds, ok := auth.(*types.NamePasswordAuthentication)
	if !ok || creds.Username == "" || creds.Password == "" {
		return &types.InvalidGuestLogin{}
	}
	if g.login != "" && creds.Username+":"+creds.Password != g.login {
		return &types.InvalidGuestLogin{}
	}
	return nil
}

func (f *frontend) serveGuestFiles(w http.ResponseWriter, r *http.Request, body []byte) {
	method, err := simulator.UnmarshalBody(types.TypeFunc(), body)
	if err != nil || !f.hasSession(r) {
		f.next.ServeHTTP(w, r) // the simulator answers with the right fault
		return
	}
	g := f.sim.guestFiles
	switch req := method.Body.(type) {
	case *types.MakeDirectoryInGuest:
		if fault := g.check(req.Vm, req.Auth); fault != nil {
			writeFault(w, "", fault)
			return
		}
		if fault := g.mkdir(req.Vm, req.DirectoryPath, req.CreateParentDirectories); fault != nil {
			writeFault(w, "", fault)
			return
		}
		writeSOAP(w, http.StatusOK, `<MakeDirectoryInGuestResponse xmlns="urn:vim25"></MakeDirectoryInGuestResponse>`)
	case *types.InitiateFileTransferToGuest:
		if fault := g.check(req.Vm, req.Auth); fault != nil {
			writeFault(w, "", fault)
			return
		}
		if fault := g.canWrite(req.Vm, req.GuestFilePath, req.Overwrite); fault != nil {
			writeFault(w, "", fault)
			return
		}
		url := g.grant(r, transferGrant{vm: req.Vm, path: path.Clean(req.GuestFilePath), upload: true,
			size: req.FileSize, over: req.Overwrite})
		writeSOAP(w, http.StatusOK, `<InitiateFileTransferToGuestResponse xmlns="urn:vim25"><returnval>`+
			escape(url)+`</returnval></InitiateFileTransferToGuestResponse>`)
	case *types.InitiateFileTransferFromGuest:
		if fault := g.check(req.Vm, req.Auth); fault != nil {
			writeFault(w, "", fault)
			return
		}
		data, ok := g.read(req.Vm, req.GuestFilePath)
		if !ok {
			writeFault(w, "", &types.FileNotFound{FileFault: types.FileFault{File: req.GuestFilePath}})
			return
		}
		url := g.grant(r, transferGrant{vm: req.Vm, path: path.Clean(req.GuestFilePath)})
		writeSOAP(w, http.StatusOK, fmt.Sprintf(`<InitiateFileTransferFromGuestResponse xmlns="urn:vim25"><returnval>`+
			`<attributes xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="GuestPosixFileAttributes"></attributes>`+
			`<size>%d</size><url>%s</url></returnval></InitiateFileTransferFromGuestResponse>`, len(data), escape(url)))
	default:
		f.next.ServeHTTP(w, r)
	}
}

func escape(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

func (g *guestFiles) grant(r *http.Request, t transferGrant) string {
	token := make([]byte, 16)
	_, _ = rand.Read(token)
	key := hex.EncodeToString(token)
	g.mu.Lock()
	g.grants[key] = t
	g.mu.Unlock()
	scheme := "https"
	if r.TLS == nil {
		scheme = "http"
	}
	// Host "*" as vCenter hands out for its own address (clients put in the host they used).
	return fmt.Sprintf("%s://*/guestFile?id=%s&token=%s", scheme, t.vm.Value, key)
}

func (g *guestFiles) mkdir(vm types.ManagedObjectReference, dir string, parents bool) types.BaseMethodFault {
	dir = path.Clean(dir)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.dirs[vm] == nil {
		g.dirs[vm] = map[string]bool{}
	}
	if g.dirs[vm][dir] {
		return &types.FileAlreadyExists{FileFault: types.FileFault{File: dir}}
	}
	if parent := path.Dir(dir); !parents && !g.isDir(vm, parent) {
		return &types.FileNotFound{FileFault: types.FileFault{File: parent}}
	}
	for d := dir; d != "/" && d != "."; d = path.Dir(d) {
		g.dirs[vm][d] = true
	}
	return nil
}

// isDir: "/", "/root", "/home/*" and "/tmp" exist in every guest. g.mu must be held.
func (g *guestFiles) isDir(vm types.ManagedObjectReference, dir string) bool {
	return dir == "/" || dir == "/root" || dir == "/home" || dir == "/tmp" || path.Dir(dir) == "/home" || g.dirs[vm][dir]
}

func (g *guestFiles) canWrite(vm types.ManagedObjectReference, file string, overwrite bool) types.BaseMethodFault {
	file = path.Clean(file)
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.isDir(vm, path.Dir(file)) {
		return &types.FileNotFound{FileFault: types.FileFault{File: path.Dir(file)}}
	}
	if _, exists := g.files[vm][file]; exists && !overwrite {
		return &types.FileAlreadyExists{FileFault: types.FileFault{File: file}}
	}
	return nil
}

func (g *guestFiles) read(vm types.ManagedObjectReference, file string) ([]byte, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	data, ok := g.files[vm][path.Clean(file)]
	return data, ok
}

// serveTransfer is the /guestFile endpoint the transfer URLs point at.
func (g *guestFiles) serveTransfer(w http.ResponseWriter, r *http.Request) {
	token := r.URL.Query().Get("token")
	g.mu.Lock()
	t, ok := g.grants[token]
	if ok {
		delete(g.grants, token) // one transfer per URL, as on ESXi
	}
	g.mu.Unlock()
	if !ok {
		http.Error(w, "unknown or used transfer token", http.StatusForbidden)
		return
	}
	switch {
	case r.Method == http.MethodPut && t.upload:
		data, err := ioutil.ReadAll(io.LimitReader(r.Body, 16<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if t.size > 0 && int64(len(data)) != t.size {
			http.Error(w, fmt.Sprintf("expected %d bytes, got %d", t.size, len(data)), http.StatusBadRequest)
			return
		}
		g.mu.Lock()
		if g.files[t.vm] == nil {
			g.files[t.vm] = map[string][]byte{}
		}
		g.files[t.vm][t.path] = data
		g.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	case r.Method == http.MethodGet && !t.upload:
		data, ok := g.read(t.vm, t.path)
		if !ok {
			http.Error(w, "file not found", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		_, _ = w.Write(data)
	default:
		http.Error(w, "method not allowed for this transfer", http.StatusMethodNotAllowed)
	}
}

// forget drops a destroyed or powered-off VM's files. An in-memory guest has no disk:
// a real one would keep its files across reboots, but our VMs are never rebooted.
func (g *guestFiles) forget(vm types.ManagedObjectReference) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.files, vm)
	delete(g.dirs, vm)
}
