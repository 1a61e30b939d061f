package main

import (
	"bytes"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"path"
	"reflect"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

// frontend is the HTTP handler in front of the simulator's ServeMux. It sees each SOAP
// request before the simulator does, which is where latency and failures are injected, and
// where requests that need the decoded request body (CloneVM_Task) or a notification after
// a non-task method (MarkAsTemplate) are handled.
type frontend struct {
	sim        *sim
	next       http.Handler
	faults     *faultConfig
	collectors *collectorLocks
	calls      *callStats
}

func (s *sim) frontend() http.Handler {
	return &frontend{sim: s, next: s.model.Service.ServeMux, faults: &s.opts.faults, collectors: newCollectorLocks(),
		calls: newCallStats()}
}

// maxSOAPBody bounds what is read into memory (an OVF import spec is the largest we send).
const maxSOAPBody = 64 << 20

func (f *frontend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPost && (r.URL.Path == "/sdk" || r.URL.Path == "/sdk/vimService"):
		f.serveSOAP(w, r)
	case strings.HasPrefix(r.URL.Path, "/_vcsim/calls"):
		f.calls.ServeHTTP(w, r)
	case r.URL.Path == "/_vcsim/host-stats":
		serveHostStats(w, r)
	case r.URL.Path == "/guestFile":
		// Guest file transfers are authorised by their one-time token, as on ESXi.
		f.sim.guestFiles.serveTransfer(w, r)
	case strings.HasPrefix(r.URL.Path, "/folder/") || strings.HasPrefix(r.URL.Path, "/nfc/"):
		// The simulator serves datastore files and NFC uploads to anyone; vCenter wants
		// a session (or basic auth on /folder).
		if !f.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Basic realm="VMware HTTP server"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		f.next.ServeHTTP(w, r)
	default:
		f.next.ServeHTTP(w, r)
	}
}

func (f *frontend) serveSOAP(w http.ResponseWriter, r *http.Request) {
	body, err := ioutil.ReadAll(io.LimitReader(r.Body, maxSOAPBody))
	_ = r.Body.Close()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.Body = ioutil.NopCloser(bytes.NewReader(body))
	call := peekCall(body)

	switch call.method {
	case "LoginByToken", "LoginExtensionByCertificate":
		// The simulator accepts any SAML token or client certificate, which would get
		// around the required password.
		writeFault(w, "Login failure", &types.InvalidLogin{})
		return
	}

	if strings.HasSuffix(call.method, "_Task") {
		// Counted from before the injected latency: a slow vCenter still has the task.
		f.calls.begin(call.method)
		defer f.calls.end(call.method)
	}
	f.faults.wait(call.method)
	if f.faults.shouldFail(call.method) && simulator.Map.Get(call.this) != nil && f.hasSession(r) {
		f.injectFailure(w, call)
		return
	}

	switch {
	case call.method == "CloneVM_Task":
		f.serveClone(w, r, body)
	case call.method == "Rename_Task" && call.this.Type == "Datastore":
		f.serveDatastoreRename(w, r, body, call)
	case guestFileCalls[call.method]:
		f.serveGuestFiles(w, r, body)
	case call.method == "MarkAsTemplate" || call.method == "MarkAsVirtualMachine":
		f.serveTemplateChange(w, r, call)
	case serialisedCollectorCalls[call.method]:
		f.collectors.serve(w, r, call, f.next)
	case call.method == "Logout":
		f.next.ServeHTTP(w, r)
		f.collectors.loggedOut(r)
	default:
		f.next.ServeHTTP(w, r)
	}
}

// soapCall is the method name and target (_this) of a SOAP request.
type soapCall struct {
	method string
	this   types.ManagedObjectReference
}

// peekCall reads just enough of the envelope to find the method and _this.
func peekCall(body []byte) soapCall {
	var call soapCall
	dec := xml.NewDecoder(bytes.NewReader(body))
	inBody := false
	for {
		tok, err := dec.Token()
		if err != nil {
			return call
		}
		switch t := tok.(type) {
		case xml.StartElement:
			switch {
			case !inBody:
				inBody = t.Name.Local == "Body"
			case call.method == "":
				call.method = t.Name.Local
			case t.Name.Local == "_this":
				for _, a := range t.Attr {
					if a.Name.Local == "type" && a.Name.Space == "" { // not xsi:type
						call.this.Type = a.Value
					}
				}
				var value string
				if err := dec.DecodeElement(&value, &t); err == nil {
					call.this.Value = strings.TrimSpace(value)
				}
				return call
			default:
				return call
			}
		}
	}
}

// serveClone validates the objects a CloneVM_Task names, then parks the decoded request
// for the clone task hook (see clone.go).
func (f *frontend) serveClone(w http.ResponseWriter, r *http.Request, body []byte) {
	method, err := simulator.UnmarshalBody(types.TypeFunc(), body)
	if err != nil || !f.hasSession(r) {
		f.next.ServeHTTP(w, r) // the simulator answers with the right fault
		return
	}
	req, ok := method.Body.(*types.CloneVM_Task)
	if !ok || simulator.Map.Get(req.This) == nil {
		f.next.ServeHTTP(w, r)
		return
	}
	if fault := checkCloneRefs(req); fault != nil {
		writeFault(w, "", fault)
		return
	}
	// Answer into a buffer: the request stays parked only while the simulator runs it,
	// not while the answer travels to a slow client.
	rec := httptest.NewRecorder()
	end := f.sim.clones.begin(req)
	f.next.ServeHTTP(rec, r)
	end()
	copyResponse(w, rec)
}

// serveTemplateChange announces MarkAsTemplate/MarkAsVirtualMachine once they succeeded,
// before the caller gets its answer.
func (f *frontend) serveTemplateChange(w http.ResponseWriter, r *http.Request, call soapCall) {
	vm, ok := simulator.Map.Get(call.this).(*simulator.VirtualMachine)
	if !ok {
		f.next.ServeHTTP(w, r)
		return
	}
	var was placement
	simulator.Map.WithLock(vm, func() { was = capturePlacement(vm) })
	rec := httptest.NewRecorder()
	f.next.ServeHTTP(rec, r)
	if rec.Code == http.StatusOK {
		templateChanged(vm, was)
	}
	copyResponse(w, rec)
}

// hasSession tells whether the request carries a live session cookie, by asking the
// simulator for the time with it.
func (f *frontend) hasSession(r *http.Request) bool {
	cookie := r.Header.Get("Cookie")
	if !strings.Contains(cookie, soap.SessionCookieName) {
		return false
	}
	const currentTime = `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><CurrentTime xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></CurrentTime></soapenv:Body></soapenv:Envelope>`
	probe := httptest.NewRequest(http.MethodPost, "/sdk", strings.NewReader(currentTime))
	probe.Header.Set("Cookie", cookie)
	probe.Header.Set("User-Agent", r.UserAgent())
	probe.RemoteAddr = r.RemoteAddr // the session records the client address
	rec := httptest.NewRecorder()
	f.next.ServeHTTP(rec, probe)
	return rec.Code == http.StatusOK
}

// authorized accepts a live session or basic auth with the simulator's credentials.
func (f *frontend) authorized(r *http.Request) bool {
	if user, pass, ok := r.BasicAuth(); ok {
		return user == f.sim.opts.username && pass == f.sim.opts.password
	}
	return f.hasSession(r)
}

func copyResponse(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

// faultConfig is the -delay/-method-delay/-jitter/-fail-* configuration.
type faultConfig struct {
	delay       int
	methodDelay map[string]int
	jitter      float64

	failRate  float64
	methods   []string
	faultName string
	fault     reflect.Type

	injected int64
}

// wait sleeps for the configured latency of method, like a slow vCenter.
func (c *faultConfig) wait(method string) {
	ms := float64(c.delay + c.methodDelay[method])
	if ms <= 0 {
		return
	}
	if c.jitter > 0 {
		ms += rand.NormFloat64() * c.jitter * ms
	}
	if ms > 0 {
		time.Sleep(time.Duration(ms * float64(time.Millisecond)))
	}
}

func (c *faultConfig) shouldFail(method string) bool {
	if c.failRate <= 0 || method == "" {
		return false
	}
	for _, pattern := range c.methods {
		if ok, _ := path.Match(pattern, method); ok {
			return rand.Float64() < c.failRate
		}
	}
	return false
}

// faultByName resolves a -fail-fault name to a vim fault type.
func faultByName(name string) (reflect.Type, error) {
	typ, ok := types.TypeFunc()(name)
	fault := reflect.TypeOf((*types.BaseMethodFault)(nil)).Elem()
	if !ok || typ.Kind() != reflect.Struct || !reflect.PtrTo(typ).Implements(fault) {
		return nil, fmt.Errorf("-fail-fault %q is not a vim fault type (e.g. SystemError, InsufficientResourcesFault)", name)
	}
	return typ, nil
}

func (c *faultConfig) newFault() types.BaseMethodFault {
	fault := reflect.New(c.fault).Interface().(types.BaseMethodFault)
	if se, ok := fault.(*types.SystemError); ok {
		se.Reason = "injected by vcsim -fail-rate"
	}
	return fault
}

// injectFailure fails a call the way vCenter would: a task method returns a task that
// ends in error with the fault; any other method answers with a SOAP fault.
func (f *frontend) injectFailure(w http.ResponseWriter, call soapCall) {
	n := atomic.AddInt64(&f.faults.injected, 1)
	log.Printf("fail-rate: injected %s #%d into %s on %s", f.faults.faultName, n, call.method, refString(call.this))
	fault := f.faults.newFault()
	if !strings.HasSuffix(call.method, "_Task") {
		writeFault(w, "injected by vcsim -fail-rate", fault)
		return
	}
	name := strings.TrimSuffix(call.method, "_Task")
	name = strings.ToLower(name[:1]) + name[1:]
	task := simulator.CreateTask(call.this, name, func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, fault
	})
	ref := task.Run()
	writeSOAP(w, http.StatusOK, fmt.Sprintf(`<%sResponse xmlns="urn:vim25"><returnval type="Task">%s</returnval></%sResponse>`,
		call.method, ref.Value, call.method))
}

const (
	envelopeStart = `<?xml version="1.0" encoding="UTF-8"?>` + "\n" +
		`<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>`
	envelopeEnd = `</soapenv:Body></soapenv:Envelope>`
)

func writeSOAP(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, envelopeStart+body+envelopeEnd)
}

// writeFault answers with a SOAP fault carrying a vim fault, in the simulator's format.
func writeFault(w http.ResponseWriter, msg string, fault types.BaseMethodFault) {
	kind := reflect.TypeOf(fault).Elem().Name()
	var detail bytes.Buffer
	enc := xml.NewEncoder(&detail)
	err := enc.EncodeElement(fault, xml.StartElement{
		Name: xml.Name{Local: kind + "Fault"},
		Attr: []xml.Attr{
			{Name: xml.Name{Local: "xmlns"}, Value: "urn:vim25"},
			{Name: xml.Name{Local: "xsi:type"}, Value: kind},
		},
	})
	if err == nil {
		err = enc.Flush()
	}
	if err != nil {
		log.Printf("encoding %s: %s", kind, err)
		detail.Reset()
	}
	var text bytes.Buffer
	_ = xml.EscapeText(&text, []byte(msg))
	writeSOAP(w, http.StatusInternalServerError, fmt.Sprintf(
		`<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring><detail>%s</detail></soapenv:Fault>`,
		text.String(), detail.String()))
}
