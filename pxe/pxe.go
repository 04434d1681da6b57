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
	DHCPPort int    // default 67
	// RA enables router advertisements on Iface.
	RA         bool
	Profiles   map[string]Profile
	Controller string // API URL handed to node agents
	Backend    Backend
	Logger     *slog.Logger
}

// Run serves DHCP, TFTP, HTTP (and RA) until ctx ends or one fails.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Backend == nil {
		return errors.New("pxe: no backend")
	}
	if !cfg.Network.ServerIP.Is4() {
		return errors.New("pxe: the boot services need the config node's IPv4 address on the boot network")
	}
	root, err := os.OpenRoot(cfg.BootDir)
	if err != nil {
		return fmt.Errorf("pxe: boot directory: %w", err)
	}
	defer root.Close()
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
	dconn, err := ListenDHCP(cfg.Iface, port(cfg.DHCPPort, 67))
	if err != nil {
		return fmt.Errorf("pxe: DHCP on %s: %w", cfg.Iface, err)
	}
	tconn, err := net.ListenPacket("udp4", net.JoinHostPort(server, strconv.Itoa(port(cfg.TFTPPort, 69))))
	if err != nil {
		dconn.Close()
		return fmt.Errorf("pxe: TFTP: %w", err)
	}
	hln, err := net.Listen("tcp4", httpAddr)
	if err != nil {
		dconn.Close()
		tconn.Close()
		return fmt.Errorf("pxe: HTTP: %w", err)
	}
	cfg.Network.Iface = cfg.Iface
	dhcp := &DHCPServer{Conn: dconn, Backend: cfg.Backend, Network: cfg.Network, Logger: log}
	tftp := &TFTPServer{Root: root, Logger: log}
	hb := &HTTPBoot{Root: root, Backend: cfg.Backend, Profiles: cfg.Profiles, BaseURL: cfg.Network.HTTPURL, Controller: cfg.Controller, Logger: log}
	hs := &http.Server{Handler: hb.Handler(), ReadHeaderTimeout: 10 * time.Second}

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return dhcp.Serve(ctx) })
	g.Go(func() error { return tftp.Serve(ctx, tconn) })
	g.Go(func() error {
		if err := hs.Serve(hln); !errors.Is(err, http.ErrServerClosed) {
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
	if cfg.RA {
		ra := &RAServer{Iface: cfg.Iface, Logger: log}
		g.Go(func() error { return ra.Serve(ctx) })
	}
	log.Info("boot services up", "iface", cfg.Iface, "dhcp_port", port(cfg.DHCPPort, 67), "tftp", tconn.LocalAddr().String(), "http", cfg.Network.HTTPURL, "ra", cfg.RA)
	return g.Wait()
}
