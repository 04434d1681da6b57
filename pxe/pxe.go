// Package pxe is the config node's boot services: a DHCPv4 server that
// answers only registered MACs (RFC 2131, with the PXE options of RFC 4578
// and iPXE's option 175), a read-only TFTP server for the iPXE binaries
// (RFC 1350, 2348, 2349), HTTP boot of per-MAC iPXE scripts, kernels and
// initrds, and IPv6 router advertisements (RFC 4861) that spare iPXE its
// IPv6 autoconfiguration wait.
package pxe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"golang.org/x/sync/errgroup"
)

// Config configures the boot services on one interface.
type Config struct {
	Iface    string // boot interface (DHCP and RA bind to it)
	Network  Network
	BootDir  string // TFTP root and HTTP /files/
	HTTPPort int    // default 8080
	TFTPPort int    // default 69
	// TFTPSinglePort answers every transfer from port 69 (one socket,
	// simple to firewall, no new sockets after start: needed when the
	// server runs on one thread of a process switched into a network
	// namespace, as in-process tests do). Off, each transfer gets its own
	// socket, the usual TFTP behaviour: about 5x the throughput with many
	// clients (docs/benchmarks.md).
	TFTPSinglePort bool
	DHCPPort       int // default 67
	// RA enables router advertisements on Iface.
	RA         bool
	Profiles   map[string]Profile
	Controller string // API URL handed to node agents
	CAPin      string // the fabric CA's pin handed to node agents (fabric.ca=)
	Backend    Backend
	Logger     *slog.Logger
}

// Services are the boot services with their sockets open.
type Services struct {
	cfg   Config
	root  *os.Root
	dconn net.PacketConn
	tconn net.PacketConn
	hln   net.Listener
	ra    *RAServer
	// DHCP is the DHCP server (its Stats can be read while serving).
	DHCP *DHCPServer
}

// Listen opens every socket of the boot services, in the calling thread's
// network namespace.
func Listen(cfg Config) (_ *Services, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Backend == nil {
		return nil, errors.New("pxe: no backend")
	}
	if !cfg.Network.ServerIP.Is4() {
		return nil, errors.New("pxe: the boot services need the config node's IPv4 address on the boot network")
	}
	s := &Services{}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	// A new config node has no boot directory yet: make it empty (the
	// iPXE binaries and kernels go there; see the README).
	if err := os.MkdirAll(cfg.BootDir, 0o755); err != nil {
		return nil, fmt.Errorf("pxe: boot directory: %w", err)
	}
	if s.root, err = os.OpenRoot(cfg.BootDir); err != nil {
		return nil, fmt.Errorf("pxe: boot directory: %w", err)
	}
	port := func(p, def int) int {
		if p == 0 {
			return def
		}
		return p
	}
	server := cfg.Network.ServerIP.String()
	httpAddr := net.JoinHostPort(server, strconv.Itoa(port(cfg.HTTPPort, 8080)))
	if cfg.Network.HTTPURL == "" {
		cfg.Network.HTTPURL = "http://" + httpAddr
	}
	if s.dconn, err = ListenDHCP(cfg.Iface, port(cfg.DHCPPort, 67)); err != nil {
		return nil, fmt.Errorf("pxe: DHCP on %s: %w", cfg.Iface, err)
	}
	if s.tconn, err = net.ListenPacket("udp4", net.JoinHostPort(server, strconv.Itoa(port(cfg.TFTPPort, 69)))); err != nil {
		return nil, fmt.Errorf("pxe: TFTP: %w", err)
	}
	if s.hln, err = net.Listen("tcp4", httpAddr); err != nil {
		return nil, fmt.Errorf("pxe: HTTP: %w", err)
	}
	if cfg.RA {
		s.ra = &RAServer{Iface: cfg.Iface, Logger: cfg.Logger}
		if err = s.ra.Listen(); err != nil {
			return nil, err
		}
	}
	cfg.Network.Iface = cfg.Iface
	s.cfg = cfg
	s.DHCP = &DHCPServer{Conn: s.dconn, Backend: cfg.Backend, Network: cfg.Network, Logger: cfg.Logger}
	if bc, err := ListenDHCPBroadcast(cfg.Iface, cfg.Network.ServerIP, port(cfg.DHCPPort, 67)); err != nil {
		cfg.Logger.Warn("broadcast replies leave by the UDP socket", "err", err)
	} else {
		s.DHCP.Broadcast = bc
	}
	return s, nil
}

func (s *Services) close() {
	if s.dconn != nil {
		s.dconn.Close()
	}
	if s.tconn != nil {
		s.tconn.Close()
	}
	if s.hln != nil {
		s.hln.Close()
	}
	if s.root != nil {
		s.root.Close()
	}
}

// Serve serves DHCP, TFTP, HTTP (and RA) until ctx ends or one fails.
func (s *Services) Serve(ctx context.Context) error {
	defer s.root.Close()
	cfg, log := s.cfg, s.cfg.Logger
	tftp := &TFTPServer{Root: s.root, Logger: log, SinglePort: s.cfg.TFTPSinglePort}
	hb := &HTTPBoot{Root: s.root, Backend: cfg.Backend, Profiles: cfg.Profiles, BaseURL: cfg.Network.HTTPURL, Controller: cfg.Controller, CAPin: cfg.CAPin, Logger: log}
	hs := &http.Server{Handler: hb.Handler(), ReadHeaderTimeout: 10 * time.Second}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.DHCP.Serve(ctx) })
	g.Go(func() error { return tftp.Serve(ctx, s.tconn) })
	g.Go(func() error {
		if err := hs.Serve(s.hln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return hs.Shutdown(sctx)
	})
	if s.ra != nil {
		g.Go(func() error { return s.ra.Serve(ctx) })
	}
	log.Info("boot services up", "iface", cfg.Iface, "tftp", s.tconn.LocalAddr().String(), "http", cfg.Network.HTTPURL, "ra", s.ra != nil)
	return g.Wait()
}

// Run opens the boot services' sockets and serves until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	s, err := Listen(cfg)
	if err != nil {
		return err
	}
	return s.Serve(ctx)
}
