// Package hwnode is the hardware node agent (`fabricd hwnode`): it enrolls
// with the controller, reports the node's capacity and instances in
// heartbeats, and brings the local libvirtd to the state the controller
// asks for: domains defined, started, stopped, undefined, and live-migrated
// peer-to-peer to another hardware node. Guest disks are AoE volumes,
// through the kernel aoe driver where it exists, else through the agent's
// own initiator behind an NBD export on loopback (the same URL on every
// node, so libvirt sees shared storage).
package hwnode

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/internal/atomicfile"
	"github.com/fabric-project/fabric/internal/backoff"
)

// Disk modes.
const (
	DiskKernel = "kernel" // /dev/etherd/e<shelf>.<slot> from the aoe driver
	DiskNBD    = "nbd"    // the agent's initiator behind an NBD export
)

// Config configures an agent.
type Config struct {
	Node       string // registered node name
	Controller string // https://host:port
	CAFile     string // the fabric CA certificate
	// CAPin ("sha256:HEX", default fabric.ca= of the kernel command
	// line): with no CAFile yet, the agent takes the CA from the
	// controller's TLS handshake if it matches, and writes CAFile.
	CAPin string
	// Token is the one-time enrollment token (from the kernel command
	// line's fabric.token= when empty).
	Token    string
	StateDir string // holds the agent credential

	LibvirtSocket string // default /run/libvirt/libvirt-sock
	// Hypervisor: kvm, qemu (software emulation) or xen; "" or "auto"
	// asks libvirt, looks for /dev/kvm and for vmx or svm in the CPU flags.
	Hypervisor string
	// MigrationURI is how peers' libvirtd reach this one, e.g.
	// qemu+tcp://10.0.0.11/system, or qemu+tls://10.0.0.11/system with
	// LibvirtPKIDir.
	MigrationURI string
	// LibvirtPKIDir, when set, receives the node certificate in the
	// files libvirt's TLS reads (see writeLibvirtPKI), after enrollment
	// and every renewal; LibvirtAdminURI (virt-admin -c) is how libvirtd
	// is told to reload them.
	LibvirtPKIDir, LibvirtAdminURI string

	DiskMode string // kernel, nbd, or ""/"auto"
	AoEIface string // interface for the agent's initiator (nbd mode)
	NBDAddr  string // loopback address of the NBD server; default 127.0.0.1:10809
	// DiskServer is the control socket of a separate `fabricd
	// hwnode-disks` (nbd mode): guests keep their disks while the agent
	// restarts. Empty: the agent serves NBD itself.
	DiskServer string

	Kernel, Initrd string // instance kernel and initramfs on this host
	Bridge         string // bridge guest NICs join; default br0
	Emulator       string // default /usr/bin/qemu-system-x86_64
	SerialDir      string // guests' serial console logs; "" for a pty

	VCPUs     int // offered; default the host's CPUs
	MemoryMiB int // offered; default host memory minus 512 MiB

	ShutdownTimeout time.Duration // graceful stop before destroy; default 30s
	MaxDowntime     time.Duration // migration downtime target; default 50ms
	// Watchdog is a watchdog device (/dev/watchdog) the agent feeds every
	// second; WatchdogTimeout is set on it. Empty: none.
	Watchdog        string
	WatchdogTimeout time.Duration
	// IsolationPause: with the controller and every storage node silent
	// this long, the agent pauses its guests (isolation.go); default
	// DefaultIsolationPause, negative: never.
	IsolationPause time.Duration
	Wait           time.Duration // heartbeat long-poll; default 2s
	Logger         *slog.Logger
}

// Defaults of Config.
const (
	DefaultShutdownTimeout = 30 * time.Second
	DefaultMaxDowntime     = 50 * time.Millisecond
)

func (c *Config) defaults() {
	if c.IsolationPause == 0 {
		c.IsolationPause = DefaultIsolationPause
	}
	if c.LibvirtSocket == "" {
		c.LibvirtSocket = "/run/libvirt/libvirt-sock"
	}
	if c.NBDAddr == "" {
		c.NBDAddr = "127.0.0.1:10809"
	}
	if c.Bridge == "" {
		c.Bridge = "br0"
	}
	if c.Emulator == "" {
		c.Emulator = "/usr/bin/qemu-system-x86_64"
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.MaxDowntime <= 0 {
		c.MaxDowntime = DefaultMaxDowntime
	}
	if c.Wait <= 0 {
		c.Wait = 2 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Agent is a running hardware node agent.
type Agent struct {
	uri libvirt.ConnectURI // qemu:///system or xen:///system
	cfg Config
	log *slog.Logger
	api *controllerapi.Client
	id  *controllerapi.Identity
	lv  *libvirt.Libvirt

	renewRetry time.Time // no renewal attempt before
	triedToken string    // the last token enrollment was tried with (see nextToken)
	cap        controllerapi.Capacity

	dk    Disks
	local *DiskServer // in-process NBD serving (nbd mode without DiskServer)

	mu        sync.Mutex
	gen       uint64
	disks     map[string]Disk      // attached, by volume
	owners    map[string]string    // instance -> volume attached for it
	diskErr   map[string]string    // by instance
	stopping  map[string]time.Time // graceful shutdown asked at
	migrating map[string]bool
	done      map[uint64]bool // migrations run
	reports   []controllerapi.MigrationReport
	kick      chan struct{}
	soon      bool                  // reconcile again without waiting for a change
	retry     map[string]*stepRetry // by instance: its failing step's next try
	lvErr     string                // why libvirtd does not answer
	lastOK    time.Time             // the controller's last answer
	paused    map[string]time.Time  // guests paused while isolated, and when
	// consoles are the console requests of the last desired state not
	// answered yet; answered holds the IDs answered among them.
	consoles []controllerapi.ConsoleRequest
	answered map[uint64]bool
}

// identityFile holds the node's key and certificate, in StateDir.
const identityFile = "identity.pem"

// ErrRevoked is returned by Run when the controller refused the node's
// certificate: the node was removed or reset. The agent stops managing
// guests (they keep running, untouched) until it enrolls again.
var ErrRevoked = errors.New("hwnode: the controller revoked this node's certificate")

// New connects to libvirt and the controller (enrolling if the agent has
// no credential yet) and prepares the disk path.
func New(ctx context.Context, cfg Config) (*Agent, error) {
	cfg.defaults()
	a := &Agent{cfg: cfg, log: cfg.Logger, disks: map[string]Disk{}, owners: map[string]string{}, diskErr: map[string]string{},
		stopping: map[string]time.Time{}, migrating: map[string]bool{}, done: map[uint64]bool{}, kick: make(chan struct{}, 1),
		retry: map[string]*stepRetry{}, paused: map[string]time.Time{}}
	if cfg.Node == "" {
		return nil, errors.New("hwnode: no node name (--name)")
	}
	if cfg.Kernel == "" || cfg.Initrd == "" {
		return nil, errors.New("hwnode: no instance kernel and initrd (--kernel, --initrd)")
	}
	if cfg.SerialDir != "" {
		if err := os.MkdirAll(cfg.SerialDir, 0o750); err != nil {
			return nil, fmt.Errorf("hwnode: console log directory: %w", err)
		}
	}
	ca, err := loadCA(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if a.id, err = controllerapi.LoadIdentity(filepath.Join(cfg.StateDir, identityFile)); err != nil {
		return nil, fmt.Errorf("hwnode: %w", err)
	}
	if a.api, err = controllerapi.NewAgentClient(cfg.Controller, ca, a.id); err != nil {
		return nil, err
	}
	// libvirtd first: a node that cannot run guests must not spend its
	// one-time token.
	a.lv = libvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(cfg.LibvirtSocket), dialers.WithLocalTimeout(5*time.Second)))
	// libvirt's Xen driver for a Xen dom0, its QEMU driver otherwise;
	// "auto" takes whichever the daemon has.
	a.uri = libvirt.QEMUSystem
	if cfg.Hypervisor == Xen {
		a.uri = libvirt.XenSystem
	}
	err = a.lv.ConnectToURI(a.uri)
	if err != nil && (cfg.Hypervisor == "" || cfg.Hypervisor == "auto") {
		if xerr := a.lv.ConnectToURI(libvirt.XenSystem); xerr == nil {
			a.uri, err = libvirt.XenSystem, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("hwnode: libvirtd at %s (%s): %w", cfg.LibvirtSocket, a.uri, err)
	}
	if err := a.probe(); err != nil {
		a.lv.Disconnect()
		return nil, err
	}
	if err := a.enroll(ctx); err != nil {
		a.lv.Disconnect()
		return nil, err
	}
	a.certChanged(ctx)
	switch {
	case a.cap.Disk == DiskKernel:
		a.dk = kernelDisks{}
	case cfg.DiskServer != "":
		dc := NewDiskClient(cfg.DiskServer)
		mac, err := dc.MAC(ctx)
		if err != nil {
			a.lv.Disconnect()
			return nil, fmt.Errorf("hwnode: %w (start `fabricd hwnode-disks` first)", err)
		}
		a.dk, a.cap.AoEMAC = dc, mac
	default:
		if cfg.AoEIface == "" {
			a.lv.Disconnect()
			return nil, errors.New("hwnode: no kernel aoe driver here, and no --aoe-iface for the agent's own initiator")
		}
		ds, err := NewDiskServer(cfg.AoEIface, cfg.NBDAddr, a.log)
		if err != nil {
			a.lv.Disconnect()
			return nil, fmt.Errorf("hwnode: %w", err)
		}
		a.dk, a.local, a.cap.AoEMAC = ds, ds, ds.MAC()
	}
	return a, nil
}

// loadCA reads the fabric CA from CAFile or, on a PXE-booted node's first
// boot, fetches it from the controller against the pin and keeps it there.
func loadCA(ctx context.Context, cfg Config) ([]byte, error) {
	pin := cfg.CAPin
	if pin == "" {
		pin = controllerapi.KernelArg("fabric.ca")
	}
	ca, err := os.ReadFile(cfg.CAFile)
	switch {
	case err == nil && pin != "":
		if got, perr := controllerapi.CAPin(ca); perr != nil || got != pin {
			return nil, fmt.Errorf("hwnode: %s is not the CA the boot pinned (%s, %s has %s): remove it to fetch the fabric's", cfg.CAFile, pin, cfg.CAFile, got)
		}
		return ca, nil
	case err == nil:
		return ca, nil
	case !errors.Is(err, os.ErrNotExist) || pin == "":
		return nil, fmt.Errorf("hwnode: fabric CA: %w (copy the controller's STATE/ca/ca.crt here, or give --ca-pin)", err)
	}
	ca, err = controllerapi.FetchPinnedCARetrying(ctx, cfg.Controller, pin, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("hwnode: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(cfg.CAFile), 0o755); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(cfg.CAFile, ca, 0o644); err != nil {
		return nil, err
	}
	cfg.Logger.Info("fetched the fabric CA from the controller; it matches the pin", "pin", pin, "file", cfg.CAFile)
	return ca, nil
}

// enroll gets the node a certificate with its one-time token, unless it
// has one.
func (a *Agent) enroll(ctx context.Context) error {
	if a.id.Enrolled() && !a.certExpired() {
		return nil
	}
	if a.id.Enrolled() {
		// Down longer than the certificate's lifetime: only a new token
		// brings the node back.
		a.log.Warn("this node's certificate has expired; enrolling again with a token", "not_after", a.id.Leaf().NotAfter)
	}
	tok := a.nextToken()
	if tok == "" {
		return fmt.Errorf("hwnode: not enrolled (no valid certificate in %s) and no enrollment token: pass --token (`fabric node token %s`) or boot with fabric.token=",
			filepath.Join(a.cfg.StateDir, identityFile), a.cfg.Node)
	}
	if err := os.MkdirAll(a.cfg.StateDir, 0o700); err != nil {
		return err
	}
	r, err := a.api.EnrollRetrying(ctx, a.cfg.Node, tok, a.log)
	if err != nil {
		return fmt.Errorf("hwnode: %w", err)
	}
	a.log.Info("enrolled with the controller", "node", r.Node, "cert_not_after", r.NotAfter)
	return nil
}

// reenroll tries, once per token, to enroll again after the controller
// revoked the node's certificate (`fabric node reset`): with a token given
// for that (`fabric node token`, or the kernel command line of a new PXE
// boot). A spent or wrong token changes nothing.
func (a *Agent) reenroll(ctx context.Context) bool {
	tok := a.nextToken()
	if tok == "" {
		return false
	}
	r, err := a.api.Enroll(ctx, a.cfg.Node, tok)
	if err != nil {
		a.log.Warn("enrolling again after the certificate was revoked failed", "node", a.cfg.Node, "err", err)
		return false
	}
	a.log.Info("enrolled again after the certificate was revoked", "node", r.Node, "cert_not_after", r.NotAfter)
	a.certChanged(ctx)
	return true
}

// nextToken is the first enrollment token not tried yet: --token, then
// the kernel command line's fabric.token= (a new one after each PXE boot);
// "" when none is left. A token is spent by any attempt, so none is tried
// twice.
func (a *Agent) nextToken() string {
	for _, t := range []string{a.cfg.Token, controllerapi.KernelArg("fabric.token")} {
		if t != "" && t != a.triedToken {
			a.triedToken = t
			return t
		}
	}
	return ""
}

// certChanged passes a new certificate on to libvirtd (libvirt TLS).
func (a *Agent) certChanged(ctx context.Context) {
	if err := a.writeLibvirtPKI(ctx); err != nil {
		a.log.Warn("libvirt TLS credentials", "err", err)
	}
}

// renew replaces the node certificate once half its lifetime has passed;
// a failure is retried at the next heartbeat.
func (a *Agent) renew(ctx context.Context) {
	if !a.id.RenewDue(time.Now()) || time.Now().Before(a.renewRetry) {
		return
	}
	r, err := a.api.Renew(ctx, a.cfg.Node)
	if err != nil {
		if controllerapi.IsRevoked(err) {
			return // the heartbeat says so and stops the agent
		}
		a.renewRetry = time.Now().Add(5 * time.Second)
		a.log.Warn("certificate renewal failed; retrying", "err", err, "not_after", a.id.Leaf().NotAfter)
		return
	}
	a.log.Info("certificate renewed", "node", r.Node, "not_after", r.NotAfter)
	a.certChanged(ctx)
}

// hostUUID is the host UUID of libvirt's capabilities XML ("" if none).
func hostUUID(caps string) string {
	var c struct {
		UUID string `xml:"host>uuid"`
	}
	if xml.Unmarshal([]byte(caps), &c) != nil {
		return ""
	}
	return strings.TrimSpace(c.UUID)
}

// probe fills in the capacity, the hypervisor and the disk mode.
func (a *Agent) probe() error {
	_, memKiB, cpus, _, _, _, _, _, err := a.lv.NodeGetInfo()
	if err != nil {
		return fmt.Errorf("hwnode: libvirt node info: %w", err)
	}
	ver, _ := a.lv.ConnectGetLibVersion()
	typ, err := a.lv.ConnectGetType()
	if err != nil {
		return fmt.Errorf("hwnode: libvirt driver type: %w", err)
	}
	hv := a.cfg.Hypervisor
	if hv == "" || hv == "auto" {
		switch {
		case strings.EqualFold(typ, "xen"):
			hv = Xen
		case fileExists("/dev/kvm") && cpuVirt(readFile("/proc/cpuinfo")):
			hv = KVM
		default:
			hv = QEMU
		}
	}
	if hv != KVM && hv != QEMU && hv != Xen {
		return fmt.Errorf("hwnode: unknown hypervisor %q (kvm, qemu, xen)", hv)
	}
	mode := a.cfg.DiskMode
	if mode == "" || mode == "auto" {
		mode = DiskNBD
		if fileExists("/sys/module/aoe") {
			mode = DiskKernel
		}
	}
	if mode != DiskKernel && mode != DiskNBD {
		return fmt.Errorf("hwnode: unknown disk mode %q (kernel, nbd)", mode)
	}
	mem := int(memKiB/1024) - 512
	if a.cfg.MemoryMiB > 0 {
		mem = a.cfg.MemoryMiB
	}
	vcpus := int(cpus)
	if a.cfg.VCPUs > 0 {
		vcpus = a.cfg.VCPUs
	}
	a.cap = controllerapi.Capacity{VCPUs: vcpus, MemoryMiB: mem, Hypervisor: hv, Disk: mode, MigrationURI: a.cfg.MigrationURI,
		Libvirt: versionString(ver)}
	if caps, err := a.lv.ConnectGetCapabilities(); err == nil {
		a.cap.HostUUID = hostUUID(caps)
	}
	if hv != Xen {
		if v, err := a.lv.ConnectGetVersion(); err == nil && v > 0 {
			a.cap.Emulator = "QEMU " + versionString(v)
			a.cap.Warning = emulatorWarning(hv, v)
		}
		// libvirtd probes an emulator's capabilities on first use, which
		// took about 3 s of the first migration into a fresh node: have it
		// done now.
		if _, err := a.lv.ConnectGetDomainCapabilities(libvirt.OptString{a.cfg.Emulator}, libvirt.OptString{"x86_64"},
			libvirt.OptString{"pc"}, libvirt.OptString{hv}, 0); err != nil {
			a.log.Warn("libvirt domain capabilities", "emulator", a.cfg.Emulator, "err", err)
		}
	}
	return nil
}

// emulatorWarning says what is wrong with a hypervisor of type hv at
// libvirt's version number v (major*1e6 + minor*1e3 + micro), or "".
//
// QEMU before 9.0 loses a software-emulated (TCG) guest's memory writes
// during live migration: the dirty-page sync clears the bits of 64 pages
// at a time without resetting the vCPU's TLB entries, so stores through
// them are not marked dirty and those pages are never resent (upstream
// 03bfc2188f, "physmem: Fix migration dirty bitmap coherency with TCG
// memory access"). The guest's kernel then breaks on stale slab lists and
// per-CPU data: with Debian 12's 7.2 it did in 2 of 6 CI runs of the lab
// (about 15 migrations each), and scripts/tcgmigrate breaks it within 15.
// KVM tracks dirty pages in the kernel and is not affected.
func emulatorWarning(hv string, v uint64) string {
	if hv != QEMU || v >= 9000000 {
		return ""
	}
	return "QEMU " + versionString(v) + " loses memory writes of software-emulated guests during live migration (fixed in QEMU 9.0); their migrations can corrupt them: install QEMU 9.0 or later (Debian 12: bookworm-backports)"
}

// versionString spells a libvirt version number (major*1e6 + minor*1e3 +
// micro, for libvirt itself and for its hypervisor) as "7.2.0".
func versionString(v uint64) string {
	return fmt.Sprintf("%d.%d.%d", v/1000000, v/1000%1000, v%1000)
}

// certExpired reports whether the node's certificate has expired (the
// controller's TLS refuses it in the handshake).
func (a *Agent) certExpired() bool {
	l := a.id.Leaf()
	return l != nil && time.Now().After(l.NotAfter)
}

// certName is the node name in the current certificate.
func (a *Agent) certName() string {
	if l := a.id.Leaf(); l != nil {
		return l.Subject.CommonName
	}
	return a.cfg.Node
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func readFile(p string) string { b, _ := os.ReadFile(p); return string(b) }

// cpuVirt reports whether /proc/cpuinfo (its text) shows hardware
// virtualisation (Intel VT-x "vmx", AMD-V "svm"), as cpu-checker's kvm-ok
// asks. /dev/kvm alone is not enough: a kernel can offer it with no such
// CPU support (kvm_pvm, which runs only guests built for it), and there a
// normal guest's kernel hangs before its first line on the console.
func cpuVirt(cpuinfo string) bool {
	for _, line := range strings.Split(cpuinfo, "\n") {
		name, flags, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) != "flags" {
			continue
		}
		for _, f := range strings.Fields(flags) {
			if f == "vmx" || f == "svm" {
				return true
			}
		}
		return false
	}
	return false
}

// Run serves until ctx ends: the NBD server (nbd mode) and the heartbeat
// and reconcile loop.
func (a *Agent) Run(ctx context.Context) error {
	defer a.lv.Disconnect()
	if a.local != nil {
		ln, err := net.Listen("tcp", a.cfg.NBDAddr)
		if err != nil {
			return fmt.Errorf("hwnode: NBD listen: %w", err)
		}
		go func() { _ = a.local.Serve(ctx, ln, nil) }()
	}
	if a.cfg.Watchdog != "" {
		if err := feedWatchdog(ctx, a.cfg.Watchdog, a.cfg.WatchdogTimeout, a.log); err != nil {
			return err
		}
	}
	go a.watchIsolation(ctx)
	if a.cap.Warning != "" {
		a.log.Warn(a.cap.Warning, "node", a.cfg.Node, "emulator", a.cap.Emulator)
	}
	a.log.Info("hardware node agent running", "node", a.cfg.Node, "hypervisor", a.cap.Hypervisor, "disk", a.cap.Disk,
		"vcpus", a.cap.VCPUs, "memory_mib", a.cap.MemoryMiB, "libvirt", a.cap.Libvirt)
	retry := backoff.New(time.Second, 10*time.Second, 0.2)
	for ctx.Err() == nil {
		a.reconnect()
		a.renew(ctx)
		hb := a.status()
		hctx, cancel := context.WithCancel(ctx)
		lost := a.lv.Disconnected()
		go func() {
			select {
			case <-a.kick:
				cancel()
			case <-lost: // libvirtd went away: say so now
				if hb.LibvirtError == "" {
					cancel()
				}
			case <-hctx.Done():
			}
		}()
		a.mu.Lock()
		wait := a.cfg.Wait
		if a.soon {
			wait = 0
		}
		a.mu.Unlock()
		sent := time.Now()
		ds, err := a.api.Heartbeat(hctx, hb, wait)
		kicked := hctx.Err() != nil && ctx.Err() == nil
		cancel()
		if kicked {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if (controllerapi.IsRevoked(err) || a.certExpired()) && a.reenroll(ctx) {
				continue
			}
			if controllerapi.IsRevoked(err) {
				a.log.Error("the controller refused this node's certificate: the node was removed or reset; no longer managing guests", "node", a.cfg.Node, "err", err)
				return fmt.Errorf("%w: %v", ErrRevoked, err)
			}
			d := retry.Next()
			a.log.Warn("heartbeat failed", "err", err, "retry_in", d.Round(time.Millisecond), "attempt", retry.Failures())
			select {
			case <-time.After(d):
			case <-ctx.Done():
			}
			continue
		}
		retry.Reset()
		a.mu.Lock()
		a.soon = false // set again by this reconcile if it must retry
		a.lastOK = time.Now()
		a.mu.Unlock()
		a.resumeAfterIsolation(ds, sent)
		if ds.Node != "" && ds.Node != a.cfg.Node {
			a.log.Info("node renamed by the controller", "from", a.cfg.Node, "to", ds.Node)
			a.cfg.Node = ds.Node
		}
		a.ack(ds.Acked)
		a.wantConsoles(ds.Consoles)
		a.reconcile(ctx, ds)
		a.mu.Lock()
		a.gen = ds.Generation
		a.mu.Unlock()
	}
	return nil
}

// reconnect dials libvirtd again after the connection was lost (libvirtd
// restarted, say); guests keep running meanwhile.
func (a *Agent) reconnect() {
	if a.lv.IsConnected() {
		return
	}
	if err := a.lv.ConnectToURI(a.uri); err != nil {
		a.mu.Lock()
		if a.lvErr == "" {
			a.log.Warn("libvirtd does not answer", "socket", a.cfg.LibvirtSocket, "err", err)
		}
		a.lvErr = fmt.Sprintf("libvirtd at %s: %v", a.cfg.LibvirtSocket, err)
		a.mu.Unlock()
		return
	}
	a.log.Info("reconnected to libvirtd")
	a.mu.Lock()
	a.lvErr = ""
	a.mu.Unlock()
}

func (a *Agent) wake() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

func (a *Agent) ack(ids []uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range ids {
		for i, r := range a.reports {
			if r.ID == id {
				a.reports = append(a.reports[:i], a.reports[i+1:]...)
				break
			}
		}
	}
}

// managed lists the domains the agent manages, by name, with their state.
func (a *Agent) managed() (map[string]libvirt.Domain, map[string]int32, error) {
	doms, _, err := a.lv.ConnectListAllDomains(1, 0)
	if err != nil {
		return nil, nil, err
	}
	out, states := map[string]libvirt.Domain{}, map[string]int32{}
	for _, d := range doms {
		x, err := a.lv.DomainGetXMLDesc(d, 0)
		if err != nil {
			continue // gone meanwhile
		}
		if _, ok := managedVolume(x); !ok {
			continue
		}
		st, _, err := a.lv.DomainGetState(d, 0)
		if err != nil {
			continue
		}
		out[d.Name], states[d.Name] = d, st
	}
	return out, states, nil
}

func stateName(s int32) string {
	switch libvirt.DomainState(s) {
	case libvirt.DomainRunning:
		return "running"
	case libvirt.DomainBlocked:
		return "blocked"
	case libvirt.DomainPaused:
		return "paused"
	case libvirt.DomainShutdown:
		return "shutting-down"
	case libvirt.DomainShutoff:
		return "shutoff"
	case libvirt.DomainCrashed:
		return "crashed"
	case libvirt.DomainPmsuspended:
		return "suspended"
	}
	return "unknown"
}

// status is the heartbeat: capacity, every managed domain and every volume
// attached for an incoming migration.
func (a *Agent) status() controllerapi.Heartbeat {
	a.mu.Lock()
	hb := controllerapi.Heartbeat{Node: a.certName(), Generation: a.gen, Capacity: a.cap, Instances: []controllerapi.InstanceStatus{},
		Migrations: append([]controllerapi.MigrationReport(nil), a.reports...)}
	a.mu.Unlock()
	doms, states, err := a.managed()
	a.mu.Lock()
	switch {
	case err == nil:
		a.lvErr = ""
	case a.lvErr == "":
		a.lvErr = "listing domains: " + err.Error()
	}
	hb.LibvirtError = a.lvErr
	a.mu.Unlock()
	seen := map[string]bool{}
	for name := range doms {
		seen[name] = true
		hb.Instances = append(hb.Instances, controllerapi.InstanceStatus{Name: name, State: stateName(states[name])})
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, s := range hb.Instances {
		if d, ok := a.diskOf(s.Name); ok {
			hb.Instances[i].Disk = d
		}
		hb.Instances[i].Error = a.diskErr[s.Name]
	}
	for name := range a.diskErr {
		if !seen[name] {
			hb.Instances = append(hb.Instances, controllerapi.InstanceStatus{Name: name, State: "absent", Error: a.diskErr[name]})
			seen[name] = true
		}
	}
	for name := range a.owners {
		if !seen[name] {
			d, _ := a.diskOf(name)
			hb.Instances = append(hb.Instances, controllerapi.InstanceStatus{Name: name, State: "absent", Disk: d})
		}
	}
	hb.Consoles = a.consoleAnswers()
	return hb
}
