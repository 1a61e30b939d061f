package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/url"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

// sim ties the govmomi simulator to vmportal's additions. simulator.Map (the object
// registry) is a package global in govmomi, so there is one sim per process.
type sim struct {
	model *simulator.Model
	opts  *options

	// client talks to the simulator in process (Service.RoundTrip) with its internal
	// session: no HTTP, no fault injection, no latency.
	client *vim25.Client

	tlsConfig *tls.Config

	macs   *macAllocator
	guests *guestTools
	// guestFiles plays the guest side of GuestFileManager (see firstboot.go).
	guestFiles *guestFiles
	clones     *cloneRequests
	names      *nameReservations
	tasks      *taskTracker
}

func newSimulator(model *simulator.Model, opts *options) (*sim, error) {
	s := &sim{
		model:  model,
		opts:   opts,
		macs:   newMACAllocator(),
		clones: newCloneRequests(),
		names:  newNameReservations(),
		tasks:  newTaskTracker(),
	}
	s.guests = newGuestTools(opts.guestCIDR, opts.guestIPWait)
	s.guestFiles = newGuestFiles(opts.guestLogin)

	simulator.Map.AddHandler(&registryHooks{sim: s})
	installPropertyCollector()

	var err error
	s.client, err = vim25.NewClient(context.Background(), model.Service)
	if err != nil {
		return nil, fmt.Errorf("in-process client: %w", err)
	}

	// NewServer registers every HTTP endpoint (SOAP, datastore /folder, NFC) on the service's
	// ServeMux and makes the login check use our credentials. Its own listener cannot take
	// our middleware, so it is closed at once; the mux is served on the public listener.
	if opts.tls {
		model.Service.TLS = new(tls.Config)
	}
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword(opts.username, opts.password)}
	internal := model.Service.NewServer()
	if opts.tls {
		s.tlsConfig = internal.Server.TLS.Clone()
	}
	internal.Close()
	return s, nil
}

// advertise points the URLs the simulator hands out (service tickets, vcsim.server.url)
// at the public listener instead of the closed internal one.
func (s *sim) advertise(u *url.URL) {
	simulator.Map.SessionManager().ServiceHostName = u.Host
	m := simulator.Map.OptionManager()
	for _, setting := range m.Setting {
		o := setting.GetOptionValue()
		if o.Key == "vcsim.server.url" {
			o.Value = (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
		} else if strings.HasSuffix(o.Key, ".uri") {
			if v, err := url.Parse(fmt.Sprint(o.Value)); err == nil {
				v.Scheme, v.Host = u.Scheme, u.Host
				o.Value = v.String()
			}
		}
	}
}

// taskOutcome reads the result of a task the simulator ran synchronously.
func taskOutcome(ref types.ManagedObjectReference) (types.AnyType, types.BaseMethodFault) {
	task, ok := simulator.Map.Get(ref).(*simulator.Task)
	if !ok {
		return nil, &types.ManagedObjectNotFound{Obj: ref}
	}
	var info types.TaskInfo
	simulator.Map.WithLock(task, func() { info = task.Info })
	if info.Error != nil {
		return nil, info.Error.Fault
	}
	return info.Result, nil
}

func serviceContent() types.ServiceContent {
	return simulator.Map.Get(vim25.ServiceInstance).(*simulator.ServiceInstance).Content
}
