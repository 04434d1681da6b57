// Package controller is the config node's daemon: the node registry on an
// embedded state store, the fabric CA, the HTTPS JSON API that the `fabric`
// CLI talks to, the event log, and the boot services (package pxe) that read
// the registry live.
package controller

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fabric-project/fabric/controller/ca"
	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/controller/store"
	"github.com/fabric-project/fabric/internal/atomicfile"
	"github.com/fabric-project/fabric/pxe"
	"github.com/fabric-project/fabric/storagenode/witness"
	"golang.org/x/sync/errgroup"
)

// Files inside the state directory.
const (
	StoreFile        = "fabric.db"
	AdminTokenFile   = "admin.token"
	ClientConfigFile = "client.json"
	CADir            = "ca"
)

// Config configures a controller.
type Config struct {
	StateDir string // store, CA and admin credential; created if missing
	// APIAddr is where the HTTPS API listens (host:port).
	APIAddr string
	// APIHosts are the names and addresses put in the API certificate
	// besides localhost and 127.0.0.1.
	APIHosts []string
	// BootSubnet is the boot network; node addresses come from it.
	BootSubnet netip.Prefix
	// ServerIP is the config node's own address on the boot network; it is
	// never assigned to a node.
	ServerIP netip.Addr
	// FirstIP is the lowest address assigned automatically (default: the
	// subnet's tenth address).
	FirstIP netip.Addr
	// BootRouter is the default gateway handed to nodes (optional).
	BootRouter netip.Addr
	// RootShelf is the first AoE shelf for hardware nodes' root volumes
	// (default 1).
	RootShelf uint16
	// Boot configures the boot services; they run when Boot.Iface is set.
	// The controller fills in the backend, server address, subnet and
	// controller URL.
	Boot pxe.Config
	// HA turns on the failure detector: a hardware node that its agent,
	// the storage nodes and ping all find dead is fenced through the
	// storage and its instances restarted elsewhere (controller/fence.go).
	HA bool
	// LocalStorage, if set, runs a storage node in the controller's
	// process (the one-machine install). It is a member like any other:
	// the controller never opens its pool (controller/localstorage.go).
	LocalStorage *LocalStorage
	// HWNodeRootImage is the image cloned into each hardware node's root
	// volume when it is registered ("" = root volumes are made by hand).
	HWNodeRootImage string
	// VCPUOvercommit is how many guest vCPUs a host CPU may carry
	// (default 4). Memory is never overcommitted.
	VCPUOvercommit int
	// AgentTimeout: a hardware node silent for this long is dead
	// (default DefaultAgentTimeout).
	AgentTimeout time.Duration
	// CertTTL is the lifetime of node certificates (default
	// DefaultCertTTL); agents renew at half of it.
	CertTTL time.Duration
	// BootWindow is how long after DHCP binds a node's address its boot
	// script may carry an enrollment token (default DefaultBootWindow);
	// BootTokenTTL how long that token stays usable (DefaultBootTokenTTL).
	BootWindow, BootTokenTTL time.Duration
	// PrepareTimeout bounds the destination's disk attach before a
	// migration, MigrateTimeout the migration itself.
	PrepareTimeout, MigrateTimeout time.Duration
	Logger                         *slog.Logger
}

// Controller is a running controller's state.
type Controller struct {
	cfg   Config
	log   *slog.Logger
	st    store.Store
	reg   *Registry
	ca    *ca.CA
	token string

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every committed change
	gen     uint64        // counts committed changes: the agents' desired-state generation

	agents    *agents
	storage   *storageNodes
	vols      remoteVolumes   // where volumes live: the storage nodes that report
	wit       *witness.Server // the witness of the pairs the controller made
	watchOnce sync.Once
	// storageWatchOnce starts the storage watch (events) once.
	storageWatchOnce sync.Once
	placeMu          sync.Mutex      // serialises placement decisions
	migSeq           uint64          // under placeMu
	inflight         map[string]bool // instances a Migrate call is working on, under placeMu
	settling         atomic.Bool     // a settleOrphans pass runs

	unknownMu   sync.Mutex
	unknownSeen map[string]time.Time

	verdictMu sync.Mutex
	verdicts  map[string][2]string // the failure detector's verdict per node: state, why

	consoles consoleRequests // what `fabric instance console` asks of the agents

	started time.Time // agents not heard from since may still be alive
}

// New opens the state directory (initialising it on first use).
func New(cfg Config) (*Controller, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("controller: no state directory configured")
	}
	if !cfg.BootSubnet.IsValid() || !cfg.BootSubnet.Addr().Is4() || cfg.BootSubnet.Bits() > 30 {
		return nil, fmt.Errorf("controller: boot subnet %q must be an IPv4 prefix of /30 or wider", cfg.BootSubnet)
	}
	cfg.BootSubnet = cfg.BootSubnet.Masked()
	if !cfg.FirstIP.IsValid() {
		a := cfg.BootSubnet.Addr()
		for i := 0; i < 10 && cfg.BootSubnet.Contains(a.Next()); i++ {
			a = a.Next()
		}
		cfg.FirstIP = a
	}
	if !cfg.BootSubnet.Contains(cfg.FirstIP) {
		return nil, fmt.Errorf("controller: first address %s is outside the boot subnet %s", cfg.FirstIP, cfg.BootSubnet)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("controller: state directory: %w", err)
	}
	fca, err := ca.LoadOrCreate(filepath.Join(cfg.StateDir, CADir))
	if err != nil {
		return nil, err
	}
	token, err := loadOrCreateToken(filepath.Join(cfg.StateDir, AdminTokenFile))
	if err != nil {
		return nil, err
	}
	st, err := store.OpenBolt(filepath.Join(cfg.StateDir, StoreFile))
	if err != nil {
		return nil, err
	}
	c := &Controller{cfg: cfg, log: log, st: st, ca: fca, token: token,
		changed: make(chan struct{}), unknownSeen: map[string]time.Time{},
		agents: newAgents(cfg.AgentTimeout), storage: newStorageNodes(cfg.AgentTimeout), gen: 1, inflight: map[string]bool{}, started: time.Now()}
	c.vols = remoteVolumes{c: c, timeout: 2 * time.Minute}
	if c.wit, err = witness.New(filepath.Join(cfg.StateDir, WitnessFile), witnessLease, log.With("part", "witness")); err != nil {
		st.Close()
		return nil, err
	}
	reserved := map[netip.Addr]bool{}
	if cfg.ServerIP.IsValid() {
		reserved[cfg.ServerIP] = true
	}
	if cfg.RootShelf == 0 {
		cfg.RootShelf = 1
	}
	if cfg.RootShelf == 0xffff {
		return nil, errors.New("controller: root shelf 65535 is the AoE broadcast shelf")
	}
	c.cfg = cfg
	c.reg = &Registry{st: st, subnet: cfg.BootSubnet, first: cfg.FirstIP, reserved: reserved, rootShelf: cfg.RootShelf, now: time.Now, notify: c.broadcast, log: log}
	return c, nil
}

// Registry returns the node registry.
func (c *Controller) Registry() *Registry { return c.reg }

// CACertPEM returns the fabric CA certificate.
func (c *Controller) CACertPEM() []byte { return c.ca.CertPEM }

// AdminToken returns the admin credential.
func (c *Controller) AdminToken() string { return c.token }

// Close writes the leases still queued and closes the state store.
func (c *Controller) Close() error {
	c.reg.flushLeases()
	return c.st.Close()
}

func (c *Controller) broadcast() {
	c.mu.Lock()
	close(c.changed)
	c.changed = make(chan struct{})
	c.gen++
	c.mu.Unlock()
}

func (c *Controller) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

func (c *Controller) changedCh() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

func newToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails on Linux
	return hex.EncodeToString(b)
}

func loadOrCreateToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		t := strings.TrimSpace(string(b))
		if len(t) < 32 {
			return "", fmt.Errorf("controller: admin credential %s is too short; delete it to make a new one", path)
		}
		return t, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("controller: admin credential: %w", err)
	}
	t := newToken()
	if err := atomicfile.Write(path, []byte(t+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("controller: admin credential: %w", err)
	}
	return t, nil
}

// ClientConfig is what the `fabric` CLI reads to find the controller.
type ClientConfig struct {
	Controller string `json:"controller"`
	CAFile     string `json:"ca_file"`
	TokenFile  string `json:"token_file"`
}

// TLSConfig returns the API server's TLS configuration, with a certificate
// for the configured hosts issued by the fabric CA.
func (c *Controller) TLSConfig() (*tls.Config, error) {
	hosts := append([]string{"localhost", "127.0.0.1", "::1"}, c.cfg.APIHosts...)
	if c.cfg.ServerIP.IsValid() {
		hosts = append(hosts, c.cfg.ServerIP.String())
	}
	if h, _, err := net.SplitHostPort(c.cfg.APIAddr); err == nil {
		if a, err := netip.ParseAddr(h); err == nil && !a.IsUnspecified() {
			hosts = append(hosts, a.String()) // the address agents beside it (LocalStorage) dial
		}
	}
	cert, err := c.ca.IssueServer(hosts, 90*24*time.Hour)
	if err != nil {
		return nil, err
	}
	// Agents present their node certificate; the CLI presents none and
	// authenticates with a token. A certificate that is given must be
	// the fabric CA's and unexpired, or the handshake fails.
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
		ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: c.ca.Pool()}, nil
}

// Serve serves the HTTPS API on ln until ctx ends.
func (c *Controller) Serve(ctx context.Context, ln net.Listener) error {
	tc, err := c.TLSConfig()
	if err != nil {
		return err
	}
	if c.cfg.HA {
		c.watchOnce.Do(func() { go c.watchNodes(ctx) })
	}
	c.storageWatchOnce.Do(func() { go c.watchStorageLoop(ctx) })
	srv := &http.Server{Handler: c.Handler(), TLSConfig: tc, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(c.log.Handler(), slog.LevelDebug)}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	err = srv.ServeTLS(ln, "", "")
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Run listens on cfg.APIAddr, writes the client configuration next to the
// state and serves until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", c.cfg.APIAddr)
	if err != nil {
		return fmt.Errorf("controller: API listen: %w", err)
	}
	host := "127.0.0.1"
	if len(c.cfg.APIHosts) > 0 {
		host = c.cfg.APIHosts[0]
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	cc := ClientConfig{
		Controller: "https://" + net.JoinHostPort(host, port),
		CAFile:     filepath.Join(c.cfg.StateDir, CADir, ca.CertFile),
		TokenFile:  filepath.Join(c.cfg.StateDir, AdminTokenFile),
	}
	b, _ := json.MarshalIndent(cc, "", "  ")
	if err := atomicfile.Write(filepath.Join(c.cfg.StateDir, ClientConfigFile), append(b, '\n'), 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("controller: client config: %w", err)
	}
	_ = c.reg.Record(controllerapi.Event{Type: controllerapi.EventControllerUp, Message: "controller started, API at " + cc.Controller})
	c.log.Info("controller API listening", "addr", ln.Addr().String(), "client_config", filepath.Join(c.cfg.StateDir, ClientConfigFile))
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.Serve(ctx, ln) })
	if c.cfg.LocalStorage != nil {
		// Over loopback: the API certificate names 127.0.0.1 and ::1.
		loop := "127.0.0.1"
		if a, err := netip.ParseAddrPort(ln.Addr().String()); err == nil && !a.Addr().IsUnspecified() {
			loop = a.Addr().String()
		}
		g.Go(func() error { return c.runLocalStorage(ctx, "https://"+net.JoinHostPort(loop, port)) })
	}
	if c.cfg.Boot.Iface != "" {
		bc := c.BootConfig(cc.Controller)
		g.Go(func() error { return pxe.Run(ctx, bc) })
	}
	return g.Wait()
}

// BootConfig returns the boot services' configuration, wired to this
// controller's registry.
func (c *Controller) BootConfig(apiURL string) pxe.Config {
	bc := c.cfg.Boot
	bc.Backend = &bootBackend{c: c, offers: map[string]pxe.Lease{}, windows: map[string]bootWindow{}}
	if !bc.Network.ServerIP.IsValid() {
		bc.Network.ServerIP = c.cfg.ServerIP
	}
	bc.Network.Subnets = append([]pxe.Subnet{{Prefix: c.cfg.BootSubnet, Router: c.cfg.BootRouter}}, bc.Network.Subnets...)
	if bc.Controller == "" {
		bc.Controller = apiURL
	}
	if bc.CAPin == "" {
		bc.CAPin, _ = controllerapi.CAPin(c.ca.CertPEM)
	}
	if bc.Logger == nil {
		bc.Logger = c.log
	}
	return bc
}

// firstInAMinute reports whether key was not seen in the last minute, and
// notes it: repeated events (a machine retrying DHCP, an agent retrying
// with a revoked certificate) are recorded once a minute, not flood the
// log.
func (c *Controller) firstInAMinute(key string) bool {
	now := time.Now()
	c.unknownMu.Lock()
	defer c.unknownMu.Unlock()
	if t, ok := c.unknownSeen[key]; ok && now.Sub(t) < time.Minute {
		return false
	}
	if len(c.unknownSeen) > 4096 {
		clear(c.unknownSeen)
	}
	c.unknownSeen[key] = now
	return true
}

// UnknownMAC records that an unregistered MAC asked to boot, at most once a
// minute per MAC so that a machine retrying DHCP cannot flood the log.
func (c *Controller) UnknownMAC(mac net.HardwareAddr, where string) {
	k := mac.String()
	if !c.firstInAMinute("mac/" + k) {
		return
	}
	msg := fmt.Sprintf("unknown MAC %s asked to boot on %s; register it with `fabric node register --mac %s --role hwnode --name NAME`", k, where, k)
	c.log.Warn("unknown MAC asked to boot", "mac", k, "iface", where)
	if err := c.reg.Record(controllerapi.Event{Type: controllerapi.EventUnknownMAC, MAC: k, Message: msg}); err != nil {
		c.log.Error("recording event", "err", err)
	}
}
