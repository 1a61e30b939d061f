// Command vcsim is vmportal's vSphere simulator: govmomi's vcsim (Debian's govmomi 0.24.2)
// with a default inventory shaped like a small real site, and fixes for the places where the
// stock simulator would let our pyVmomi code pass tests that real vCenter would fail.
//
// The fixes are applied from outside the library, through three documented extension points:
//   - a Registry handler (hooks.go) that sees every object put/update/remove, and wraps the
//     Execute function of tasks before they run (clone, reconfigure, relocate, maintenance);
//   - a wrapper type for the PropertyCollector singleton (fetch.go);
//   - HTTP middleware in front of the SOAP endpoint (frontend.go): fault injection, latency,
//     login hardening and notifications for the few non-task methods that need them.
//
// Build: GOPATH=/usr/share/gocode GO111MODULE=off go build -o bin/vcsim .  (or ./build.sh)
// Once the simulator accepts requests it prints exactly one line on stdout:
//
//	VCSIM_URL=https://USER:PASSWORD@127.0.0.1:PORT/sdk
//
// Everything else (progress, warnings) goes to stderr.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io/ioutil"
	"log"
	"math/rand"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

// options holds the parsed command line.
type options struct {
	listen      string
	username    string
	password    string
	tls         bool
	pidFile     string
	trace       bool
	seed        int64
	sessionIdle time.Duration

	clusters   int
	hosts      int
	datastores int
	vms        int
	maintHosts int
	discHosts  int

	hostStats   time.Duration
	guestCIDR   *net.IPNet
	guestIPWait time.Duration
	guestLogin  string
	taskTTL     time.Duration

	faults faultConfig

	datastoreDir string
	saveDir      string
	loadDir      string
}

// usageError makes main exit with status 2, as flag parsing errors do.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func parseOptions(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("vcsim", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: vcsim -username USER -password PASSWORD [flags]\n\n")
		fs.PrintDefaults()
	}

	fs.StringVar(&o.listen, "l", "127.0.0.1:18989", "listen `address` (host:port); port 0 picks a free port")
	fs.StringVar(&o.username, "username", "", "login user (required)")
	fs.StringVar(&o.password, "password", "", "login password (required)")
	fs.BoolVar(&o.tls, "tls", true, "serve https with the simulator's self-signed certificate (SAN 127.0.0.1, ::1, example.com); -tls=false serves http")
	fs.StringVar(&o.pidFile, "pidfile", "", "write the process id to this `file` once ready (removed on exit)")
	fs.BoolVar(&o.trace, "trace", false, "log every SOAP request and response to stderr")
	fs.Int64Var(&o.seed, "seed", 0, "random seed for fault injection, latency jitter, host load and MAC addresses (0: time based)")
	fs.DurationVar(&o.sessionIdle, "session-idle", 0, "log out sessions idle for this long, as vCenter does after 30m (0: never)")

	fs.IntVar(&o.clusters, "clusters", 2, "clusters in datacenter DC0 (DC0_C0, DC0_C1, ...)")
	fs.IntVar(&o.hosts, "hosts", 4, "hosts per cluster (DC0_C0_H0, ...)")
	fs.IntVar(&o.datastores, "datastores", 2, "datastores shared by every host (LocalDS_0, ...)")
	fs.IntVar(&o.vms, "vms", 0, "extra powered-on VMs spread over the clusters' usable hosts, in DC0/vm (for benchmarks)")
	fs.IntVar(&o.maintHosts, "maint-hosts", 0, "put the first `N` hosts (by name) in maintenance mode")
	fs.IntVar(&o.discHosts, "disconnected-hosts", 0, "mark the last `N` hosts (by name) disconnected")

	fs.DurationVar(&o.hostStats, "host-stats", 0, "randomise host and VM quickStats every `interval` (0: static)")
	guestCIDR := fs.String("guest-ip", "", "give powered-on VMs without a customized IP an address from this `CIDR` (e.g. 10.20.0.0/16)")
	fs.DurationVar(&o.guestIPWait, "guest-ip-delay", 0, "how long after power-on the -guest-ip address appears (like DHCP)")
	fs.StringVar(&o.guestLogin, "guest-login", "", "`user:password` guest operations accept (default: any non-empty credentials)")
	fs.DurationVar(&o.taskTTL, "task-ttl", 10*time.Minute, "forget completed tasks this old that are no longer in recentTask (0: keep forever)")

	fs.IntVar(&o.faults.delay, "delay", 0, "latency in `ms` added to every SOAP call")
	methodDelay := fs.String("method-delay", "", "per-method latency, `Method:ms,...` (e.g. CloneVM_Task:500,PowerOnVM_Task:200), added to -delay")
	fs.Float64Var(&o.faults.jitter, "jitter", 0, "latency jitter as a coefficient of variation (0.2: stddev is 20% of the latency)")
	fs.Float64Var(&o.faults.failRate, "fail-rate", 0, "probability (0..1) that a call to one of -fail-methods fails")
	failMethods := fs.String("fail-methods", "*_Task", "comma `list` of methods -fail-rate applies to, with * wildcards (*_Task: every task method)")
	fs.StringVar(&o.faults.faultName, "fail-fault", "SystemError", "vim fault `type` of injected failures (e.g. InsufficientResourcesFault, NoDiskSpace, InvalidState)")

	fs.StringVar(&o.datastoreDir, "datastore-dir", "", "where the datastores' scratch directories go (default: $TMPDIR, else /dev/shm when it has 1 GiB free, else /tmp)")
	fs.StringVar(&o.saveDir, "save", "", "on SIGINT/SIGTERM save the inventory and datastore files to `dir`")
	fs.StringVar(&o.loadDir, "load", "", "start from the inventory saved in `dir` by -save (the default inventory if there is none yet)")

	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return nil, err
		}
		return nil, usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return nil, usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}

	// The simulator would otherwise accept any non-empty user and password, and our code
	// must be tested against a server that rejects wrong credentials.
	if o.username == "" || o.password == "" {
		return nil, usageError{"-username and -password are required (the simulator refuses to run without credentials)"}
	}
	for _, c := range []struct {
		name string
		val  int
		min  int
	}{
		{"clusters", o.clusters, 1}, {"hosts", o.hosts, 1}, {"datastores", o.datastores, 1},
		{"vms", o.vms, 0}, {"maint-hosts", o.maintHosts, 0}, {"disconnected-hosts", o.discHosts, 0},
		{"delay", o.faults.delay, 0},
	} {
		if c.val < c.min {
			return nil, usageError{fmt.Sprintf("-%s must be at least %d", c.name, c.min)}
		}
	}
	if o.maintHosts+o.discHosts > o.clusters*o.hosts {
		return nil, usageError{"-maint-hosts plus -disconnected-hosts exceeds the number of hosts"}
	}
	if o.faults.failRate < 0 || o.faults.failRate > 1 {
		return nil, usageError{"-fail-rate must be between 0 and 1"}
	}
	if o.faults.jitter < 0 {
		return nil, usageError{"-jitter must not be negative"}
	}
	if *guestCIDR != "" {
		_, n, err := net.ParseCIDR(*guestCIDR)
		if err != nil || n.IP.To4() == nil {
			return nil, usageError{fmt.Sprintf("-guest-ip %q is not an IPv4 CIDR", *guestCIDR)}
		}
		if ones, _ := n.Mask.Size(); ones > 24 {
			return nil, usageError{"-guest-ip needs a /24 or larger network"}
		}
		o.guestCIDR = n
	}
	var err error
	if o.faults.methodDelay, err = parseMethodDelays(*methodDelay); err != nil {
		return nil, usageError{err.Error()}
	}
	o.faults.methods = splitList(*failMethods)
	if o.faults.fault, err = faultByName(o.faults.faultName); err != nil {
		return nil, usageError{err.Error()}
	}
	if o.loadDir != "" {
		if fi, err := os.Stat(o.loadDir); err == nil && !fi.IsDir() {
			return nil, usageError{fmt.Sprintf("-load %q is not a directory", o.loadDir)}
		}
	}
	return o, nil
}

func parseMethodDelays(s string) (map[string]int, error) {
	delays := map[string]int{}
	for _, item := range splitList(s) {
		parts := strings.SplitN(item, ":", 2)
		ms, err := strconv.Atoi(strings.TrimSpace(parts[len(parts)-1]))
		if len(parts) != 2 || err != nil || ms < 0 || parts[0] == "" {
			return nil, fmt.Errorf("-method-delay item %q is not Method:milliseconds", item)
		}
		delays[strings.TrimSpace(parts[0])] = ms
	}
	return delays, nil
}

func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

func main() {
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	log.SetPrefix("vcsim: ")

	opts, err := parseOptions(os.Args[1:])
	if err == flag.ErrHelp {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "vcsim: %s\n", err)
		os.Exit(2)
	}
	if err := run(opts); err != nil {
		log.Printf("error: %s", err)
		os.Exit(1)
	}
}

func run(opts *options) error {
	started := time.Now()
	seed := opts.seed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	rand.Seed(seed)

	// From here on SIGINT/SIGTERM only queue up, so that even a stop during start-up
	// removes the datastore directories.
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)

	// Bind first: a busy port should fail in milliseconds, not after building the inventory.
	ln, err := net.Listen("tcp", opts.listen)
	if err != nil {
		return err
	}
	defer ln.Close()

	// The simulator keeps each datastore in a temporary directory (every VM has a few small
	// files there); on a slow disk creating them dominates start-up and clone times.
	if err := os.Setenv("TMPDIR", scratchDir(opts.datastoreDir)); err != nil {
		return err
	}
	simulator.Trace = opts.trace
	simulator.SessionIdleTimeout = opts.sessionIdle

	model := simulator.VPX()
	model.Datacenter = 1
	model.Cluster = opts.clusters
	model.ClusterHost = opts.hosts
	model.Host = 0    // no standalone hosts: every host is in a cluster, as on our sites
	model.Machine = 0 // no filler VMs: -vms adds VMs that look like ours (disk, NIC, tools)
	model.Datastore = opts.datastores
	model.Portgroup = 1
	model.Autostart = false
	load := opts.loadDir != "" && hasSavedInventory(opts.loadDir)
	if load {
		err = model.Load(inventoryDir(opts.loadDir))
	} else {
		err = model.Create()
	}
	// Removes the datastores' temporary directories (-save has copied what it keeps).
	defer model.Remove()
	if err != nil {
		return fmt.Errorf("creating the inventory: %w", err)
	}

	sim, err := newSimulator(model, opts)
	if err != nil {
		return err
	}
	if load {
		log.Printf("loading the inventory saved in %s", opts.loadDir)
		err = sim.afterLoad(opts.loadDir)
	} else {
		err = sim.buildSite()
	}
	if err != nil {
		return fmt.Errorf("building the inventory: %w", err)
	}

	scheme := "http"
	if opts.tls {
		scheme = "https"
		ln = tls.NewListener(ln, sim.tlsConfig)
	}
	public := &url.URL{
		Scheme: scheme,
		Host:   advertisedHost(ln.Addr().(*net.TCPAddr)),
		Path:   vim25.Path,
		User:   url.UserPassword(opts.username, opts.password),
	}
	sim.advertise(public)

	server := &http.Server{
		Handler:  sim.frontend(),
		ErrorLog: log.New(quietTLSErrors{}, "", 0),
	}
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()
	// Close rather than Shutdown: WaitForUpdatesEx long polls would hold Shutdown up.
	defer server.Close()

	ctx, stopLoops := context.WithCancel(context.Background())
	defer stopLoops()
	if opts.taskTTL > 0 {
		go sim.collectTasks(ctx, opts.taskTTL)
	}
	if opts.hostStats > 0 {
		go sim.varyLoad(ctx, opts.hostStats)
	}

	if opts.pidFile != "" {
		if err := ioutil.WriteFile(opts.pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			return err
		}
		defer os.Remove(opts.pidFile)
	}

	select {
	case sig := <-signals:
		log.Printf("%s during start-up: shutting down", sig)
		return nil
	default:
	}
	count := model.Count()
	log.Printf("ready in %s: %d clusters, %d hosts, %d datastores, %d VMs (seed %d)",
		time.Since(started).Round(time.Millisecond), count.Cluster, count.Host, count.Datastore, count.Machine, seed)
	// Tests and `make demo` wait for this line; os.Stdout is unbuffered, so it is flushed.
	fmt.Fprintf(os.Stdout, "VCSIM_URL=%s\n", public)

	select {
	case sig := <-signals:
		log.Printf("%s: shutting down", sig)
	case err := <-served:
		return fmt.Errorf("serving: %w", err)
	}
	go func() {
		<-signals
		log.Printf("second signal: exiting now")
		os.Exit(1)
	}()

	_ = server.Close()
	stopLoops()
	if opts.saveDir != "" {
		if err := sim.save(opts.saveDir); err != nil {
			return fmt.Errorf("saving to %s: %w", opts.saveDir, err)
		}
	}
	return nil
}

// scratchDir picks where datastore directories are created.
func scratchDir(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if dir := os.Getenv("TMPDIR"); dir != "" {
		return dir
	}
	const shm, minFree = "/dev/shm", 1 << 30
	var st syscall.Statfs_t
	if syscall.Statfs(shm, &st) == nil && st.Bavail*uint64(st.Bsize) >= minFree && syscall.Access(shm, 2 /* W_OK */) == nil {
		return shm
	}
	return os.TempDir()
}

// advertisedHost is the host:port clients should use; a wildcard listen address is
// advertised as the loopback address, which always reaches it.
func advertisedHost(addr *net.TCPAddr) string {
	ip := addr.IP
	if ip == nil || ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1)
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(addr.Port))
}

// quietTLSErrors drops the "TLS handshake error" lines clients that do not trust the
// self-signed certificate cause, and passes everything else (panics) to the log.
type quietTLSErrors struct{}

func (quietTLSErrors) Write(p []byte) (int, error) {
	if !bytes.Contains(p, []byte("TLS handshake error")) {
		log.Print(string(p))
	}
	return len(p), nil
}

// refString formats a managed object reference for log lines.
func refString(ref types.ManagedObjectReference) string { return ref.Type + ":" + ref.Value }
