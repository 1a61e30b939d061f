package main

import (
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Fixes for the PropertyCollector, the part of the API our code leans on most.
//
// propertyCollector replaces the simulator's PropertyCollector singleton. The simulator
// makes each session's default collector with reflect.New of the registered type, so every
// session gets one of these; it must work from its zero value, which embedding the
// simulator's struct by value gives. Collectors made with CreatePropertyCollector stay the
// simulator's own type and need none of this.
type propertyCollector struct {
	simulator.PropertyCollector
}

func installPropertyCollector() {
	pc := &propertyCollector{}
	pc.Self = serviceContent().PropertyCollector
	simulator.Map.Put(pc)
}

// ---- Fetch

// FetchResponse and fetchBody mirror the simulator's internal Fetch types (simulator/internal
// cannot be imported from here). The response element is named after the Res type, so the
// type must be called FetchResponse.
type FetchResponse struct {
	Returnval types.AnyType `xml:"returnval,omitempty,typeattr"`
}

type fetchBody struct {
	Res    *FetchResponse `xml:"FetchResponse,omitempty"`
	Fault_ *soap.Fault    `xml:"http://schemas.xmlsoap.org/soap/envelope/ Fault,omitempty"`
}

func (b *fetchBody) Fault() *soap.Fault { return b.Fault_ }

// Fetch: pyVmomi >= 8 reads every `obj.property` with this undocumented method. The
// simulator answers it with a RetrievePropertiesEx and indexes MissingSet[0] when there is
// no value, but an unset property (vm.snapshot, template.resourcePool, vm.parentVApp) has
// neither a value nor a MissingSet entry: the handler panics and the client sees the
// connection drop (RemoteDisconnected). vCenter answers with an empty response (None).
//
// req is an interface{} because its type lives in simulator/internal; the dispatcher calls
// this method through reflection, which accepts that.
func (pc *propertyCollector) Fetch(ctx *simulator.Context, req interface{}) soap.HasFault {
	rv := reflect.ValueOf(req).Elem()
	this := rv.FieldByName("This").Interface().(types.ManagedObjectReference)
	prop := rv.FieldByName("Prop").String()

	// ServiceInstance.content and the super-type lookups the simulator special-cases stay
	// with the original; everything that names a registered object is answered here.
	if this.Type == "ServiceInstance" || ctx.Map.Get(this) == nil {
		out := reflect.ValueOf(&pc.PropertyCollector).MethodByName("Fetch").Call(
			[]reflect.Value{reflect.ValueOf(ctx), reflect.ValueOf(req)})
		return out[0].Interface().(soap.HasFault)
	}

	res := pc.RetrievePropertiesEx(ctx, &types.RetrievePropertiesEx{
		SpecSet: []types.PropertyFilterSpec{{
			PropSet:   []types.PropertySpec{{Type: this.Type, PathSet: []string{prop}}},
			ObjectSet: []types.ObjectSpec{{Obj: this}},
		}},
	})
	if res.Fault() != nil {
		return &fetchBody{Fault_: res.Fault()}
	}
	objects := res.(*methods.RetrievePropertiesExBody).Res.Returnval.Objects
	if len(objects) == 0 {
		return &fetchBody{Fault_: simulator.Fault("", &types.ManagedObjectNotFound{Obj: this})}
	}
	switch obj := objects[0]; {
	case len(obj.PropSet) > 0:
		return &fetchBody{Res: &FetchResponse{Returnval: obj.PropSet[0].Val}}
	case len(obj.MissingSet) > 0: // e.g. an invalid property path
		f := obj.MissingSet[0].Fault
		return &fetchBody{Fault_: simulator.Fault(f.LocalizedMessage, f.Fault)}
	default:
		return &fetchBody{Res: &FetchResponse{}}
	}
}

// ---- Updates for each session's default collector
//
// To hear about changes, WaitForUpdatesEx registers the collector as a Registry handler,
// keyed by its moref. Every session's default collector has the same moref
// ("propertyCollector"), so each session that waits unregisters the previous one: a
// watcher in one session stops getting updates as soon as a worker in another session
// calls WaitForTask. And a registered collector queues every change in the inventory until
// its next WaitForUpdatesEx with a version, which clients that only wait for tasks never
// make, so the queue grows for as long as the process runs.
//
// Instead, each session's default collector is fed by a collectorFeed with its own key,
// which passes changes on only while the collector has filters, and unregisters itself when
// nobody has waited for feedIdle (or the session logs out).

const feedIdle = 30 * time.Minute // vCenter's default session idle timeout

type collectorFeed struct {
	session string
	owner   *simulator.Session
	pc      *simulator.PropertyCollector // nil once reset, until the session uses it again

	mu       sync.Mutex // also held while the simulator changes pc.Filter
	waiting  int
	lastWait time.Time
}

type feedRegistry struct {
	mu    sync.Mutex
	feeds map[string]*collectorFeed
}

// feeds is package state because the collectors that use it are created by the
// simulator (reflect.New), which leaves no way to hand them a pointer.
var feeds = &feedRegistry{feeds: map[string]*collectorFeed{}}

// attach returns the session's feed, registered with the Registry.
func (r *feedRegistry) attach(ctx *simulator.Context, pc *simulator.PropertyCollector) *collectorFeed {
	r.mu.Lock()
	defer r.mu.Unlock()
	f, ok := r.feeds[ctx.Session.Key]
	if !ok {
		f = &collectorFeed{session: ctx.Session.Key, lastWait: time.Now()}
		r.feeds[f.session] = f
	}
	f.mu.Lock()
	f.owner, f.pc = ctx.Session, pc
	f.mu.Unlock()
	simulator.Map.AddHandler(f) // idempotent: keyed by the feed's reference
	return f
}

func (r *feedRegistry) lookup(session string) *collectorFeed {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.feeds[session]
}

func (r *feedRegistry) detach(session string) {
	r.mu.Lock()
	f, ok := r.feeds[session]
	delete(r.feeds, session)
	r.mu.Unlock()
	if ok {
		simulator.Map.RemoveHandler(f)
	}
}

func (f *collectorFeed) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VmportalCollectorFeed", Value: f.session}
}

func (f *collectorFeed) wanted() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.waiting == 0 && time.Since(f.lastWait) > feedIdle {
		go feeds.detach(f.session) // not from inside the Registry's handler loop
		return false
	}
	return f.pc != nil && len(f.pc.Filter) > 0
}

// resetIfUnused replaces the session's default collector with a fresh one once its last
// filter is gone: changes queued for filters that no longer exist would stay in memory
// until a WaitForUpdatesEx with a version, which WaitForTask-style clients never make.
// The caller holds the collector's lock, so no call is running on it.
func (f *collectorFeed) resetIfUnused() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pc == nil || len(f.pc.Filter) > 0 || f.waiting > 0 {
		return
	}
	f.owner.Remove(f.pc.Self) // the session's next call gets a new collector
	f.pc = nil
}

func (f *collectorFeed) PutObject(obj mo.Reference) {
	if f.wanted() {
		f.pc.PutObject(obj)
	}
}

func (f *collectorFeed) UpdateObject(obj mo.Reference, changes []types.PropertyChange) {
	if f.wanted() {
		f.pc.UpdateObject(obj, changes)
	}
}

func (f *collectorFeed) RemoveObject(ref types.ManagedObjectReference) {
	if f.wanted() {
		f.pc.RemoveObject(ref)
	}
}

func (f *collectorFeed) waitStarts() {
	f.mu.Lock()
	f.waiting++
	f.lastWait = time.Now()
	f.mu.Unlock()
}

func (f *collectorFeed) waitEnds() {
	f.mu.Lock()
	f.waiting--
	f.lastWait = time.Now()
	f.mu.Unlock()
}

func (pc *propertyCollector) CreateFilter(ctx *simulator.Context, req *types.CreateFilter) soap.HasFault {
	f := feeds.attach(ctx, &pc.PropertyCollector)
	f.mu.Lock()
	defer f.mu.Unlock()
	return pc.PropertyCollector.CreateFilter(ctx, req)
}

func (pc *propertyCollector) WaitForUpdatesEx(ctx *simulator.Context, req *types.WaitForUpdatesEx) soap.HasFault {
	f := feeds.attach(ctx, &pc.PropertyCollector)
	f.waitStarts()
	defer f.waitEnds()
	res := pc.PropertyCollector.WaitForUpdatesEx(ctx, req)
	pc.unregisterShared(req.Version)
	return res
}

// WaitForUpdates is what pyVim's WaitForTask uses.
func (pc *propertyCollector) WaitForUpdates(ctx *simulator.Context, req *types.WaitForUpdates) soap.HasFault {
	f := feeds.attach(ctx, &pc.PropertyCollector)
	f.waitStarts()
	defer f.waitEnds()
	res := pc.PropertyCollector.WaitForUpdates(ctx, req)
	pc.unregisterShared(req.Version)
	return res
}

// unregisterShared undoes the registration a first (version "") wait makes under the
// shared moref; the session's feed delivers instead.
func (pc *propertyCollector) unregisterShared(version string) {
	if version == "" {
		simulator.Map.RemoveHandler(&pc.PropertyCollector)
	}
}

// ---- Serialising calls that share a collector

// collectorLocks serialises, per session and collector, the calls that change a
// collector's filters or consume its updates. The simulator does not lock collectors
// (PropertyCollector opts out of the Registry's object locks), so threads sharing a
// session race on the filter list and on each filter's maps: with pyVim's WaitForTask from
// a thread pool the connection drops, or the process dies with "concurrent map writes".
// Reads (RetrievePropertiesEx) and CancelWaitForUpdates are not serialised: they must get
// through while a WaitForUpdatesEx is blocked on the same collector.
type collectorLocks struct {
	mu      sync.Mutex
	locks   map[collectorKey]*sync.Mutex
	filters map[collectorKey]string // (session, filter moid) -> collector moid
}

type collectorKey struct{ session, moid string }

var serialisedCollectorCalls = map[string]bool{
	"CreateFilter": true, "WaitForUpdates": true, "WaitForUpdatesEx": true,
	"DestroyPropertyFilter": true, "DestroyPropertyCollector": true,
}

var reFilterRef = regexp.MustCompile(`<returnval type="PropertyFilter">([^<]+)</returnval>`)

func newCollectorLocks() *collectorLocks {
	return &collectorLocks{locks: map[collectorKey]*sync.Mutex{}, filters: map[collectorKey]string{}}
}

// serve runs a collector call under its collector's lock.
func (c *collectorLocks) serve(w http.ResponseWriter, r *http.Request, call soapCall, next http.Handler) {
	cookie, err := r.Cookie(soap.SessionCookieName)
	if err != nil {
		next.ServeHTTP(w, r) // no session: the simulator refuses it
		return
	}
	session := cookie.Value
	collector := call.this.Value
	if call.this.Type == "PropertyFilter" {
		collector = c.owner(session, call.this.Value)
	}
	mu := c.lock(collectorKey{session, collector})
	mu.Lock()
	defer mu.Unlock()

	switch call.method {
	case "CreateFilter":
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		if m := reFilterRef.FindSubmatch(rec.Body.Bytes()); m != nil {
			c.mu.Lock()
			c.filters[collectorKey{session, string(m[1])}] = collector
			c.mu.Unlock()
		}
		copyResponse(w, rec)
	case "DestroyPropertyFilter":
		f := feeds.lookup(session)
		if f == nil || collector != serviceContent().PropertyCollector.Value {
			next.ServeHTTP(w, r)
		} else {
			// The feed reads the default collector's filter list; keep it still meanwhile
			// (answering into a buffer, so a slow client cannot hold the feed up).
			rec := httptest.NewRecorder()
			f.mu.Lock()
			next.ServeHTTP(rec, r)
			f.mu.Unlock()
			f.resetIfUnused()
			copyResponse(w, rec)
		}
		c.mu.Lock()
		delete(c.filters, collectorKey{session, call.this.Value})
		c.mu.Unlock()
	default:
		next.ServeHTTP(w, r)
	}
}

func (c *collectorLocks) owner(session, filter string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if collector, ok := c.filters[collectorKey{session, filter}]; ok {
		return collector
	}
	return serviceContent().PropertyCollector.Value
}

func (c *collectorLocks) lock(key collectorKey) *sync.Mutex {
	c.mu.Lock()
	defer c.mu.Unlock()
	mu, ok := c.locks[key]
	if !ok {
		mu = new(sync.Mutex)
		c.locks[key] = mu
	}
	return mu
}

// loggedOut drops the state of a session that logged out.
func (c *collectorLocks) loggedOut(r *http.Request) {
	cookie, err := r.Cookie(soap.SessionCookieName)
	if err != nil {
		return
	}
	feeds.detach(cookie.Value)
	c.mu.Lock()
	defer c.mu.Unlock()
	for key := range c.locks {
		if key.session == cookie.Value {
			delete(c.locks, key)
		}
	}
	for key := range c.filters {
		if key.session == cookie.Value {
			delete(c.filters, key)
		}
	}
}
