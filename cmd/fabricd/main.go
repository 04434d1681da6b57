// Command fabricd is the fabric daemon: one subcommand per role.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fabric-project/fabric/controller"
	"github.com/fabric-project/fabric/internal/cliargs"
	"github.com/fabric-project/fabric/pxe"
)

// version is set at build time (make build: -ldflags -X main.version=...).
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := newApp()
	if err := app.RunContext(ctx, cliargs.FlagsFirst(app, os.Args)); err != nil {
		fmt.Fprintf(os.Stderr, "fabricd: %v\n", err)
		stop()
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:    "fabricd",
		Usage:   "fabric daemon: run one role of the fabric",
		Version: version,
		// Repeatable flags are repeated, never comma-split: an --export
		// carries its options after commas (SHELF.SLOT=PATH,ro,sync).
		DisableSliceFlagSeparator: true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "cpu-profile", Usage: "write a Go CPU profile to this file until exit"},
		},
		Before: func(c *cli.Context) error {
			if p := c.String("cpu-profile"); p != "" {
				f, err := os.Create(p)
				if err != nil {
					return err
				}
				return pprof.StartCPUProfile(f)
			}
			return nil
		},
		After: func(c *cli.Context) error {
			pprof.StopCPUProfile()
			return nil
		},
		Commands: []*cli.Command{controllerCommand(), storageCommand(), hwnodeCommand(), hwnodeDisksCommand()},
	}
}

func logger(c *cli.Context) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})), nil
}

func prefixFlag(c *cli.Context, name string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(c.String(name))
	if err != nil {
		return p, fmt.Errorf("--%s: %w", name, err)
	}
	return p, nil
}

func addrFlag(c *cli.Context, name string) (netip.Addr, error) {
	if !c.IsSet(name) {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(c.String(name))
	if err != nil {
		return a, fmt.Errorf("--%s: %w", name, err)
	}
	return a, nil
}

func controllerCommand() *cli.Command {
	return &cli.Command{
		Name:  "controller",
		Usage: "run the config node: registry, API, CA and boot services",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "state-dir", Value: "/var/lib/fabric", Usage: "state store, CA and admin credential"},
			&cli.StringFlag{Name: "api-addr", Value: ":8443", Usage: "HTTPS API listen address"},
			&cli.StringSliceFlag{Name: "api-host", Usage: "name or address for the API certificate; the first is written to client.json (repeatable)"},
			&cli.StringFlag{Name: "boot-subnet", Value: "10.233.0.0/24", Usage: "boot network; node addresses come from it"},
			&cli.StringFlag{Name: "server-ip", Usage: "this config node's address on the boot network"},
			&cli.StringFlag{Name: "first-ip", Usage: "lowest address assigned automatically (default: the subnet's tenth)"},
			&cli.StringFlag{Name: "boot-iface", Usage: "serve DHCP, TFTP, HTTP boot and router advertisements on this interface (empty: no boot services)"},
			&cli.StringFlag{Name: "boot-dir", Value: "/var/lib/fabric/boot", Usage: "TFTP root and HTTP /files/: iPXE binaries, kernels, initrds"},
			&cli.StringFlag{Name: "router", Usage: "default gateway handed to nodes"},
			&cli.IntFlag{Name: "http-port", Value: 8080, Usage: "HTTP boot port"},
			&cli.IntFlag{Name: "tftp-port", Value: 69, Usage: "TFTP port"},
			&cli.BoolFlag{Name: "tftp-single-port", Usage: "answer every TFTP transfer from the TFTP port (simpler firewalling; slower with many clients)"},
			&cli.IntFlag{Name: "dhcp-port", Value: 67, Usage: "DHCP server port"},
			&cli.DurationFlag{Name: "lease-time", Value: time.Hour, Usage: "DHCP lease time"},
			&cli.BoolFlag{Name: "ra", Value: true, Usage: "send IPv6 router advertisements without M/O flags (spares iPXE a 16 s wait)"},
			&cli.StringFlag{Name: "hwnode-kernel", Value: "hwnode/vmlinuz", Usage: "hardware node kernel, relative to --boot-dir"},
			&cli.StringFlag{Name: "hwnode-initrd", Value: "hwnode/initrd.img", Usage: "hardware node initrd, relative to --boot-dir"},
			&cli.StringFlag{Name: "hwnode-hypervisor", Usage: "multiboot hypervisor relative to --boot-dir (Xen: hwnode/xen.gz from 'make images-xen'); the kernel and initrd become its dom0 modules"},
			&cli.StringFlag{Name: "hwnode-hypervisor-args", Value: "dom0_mem=1024M,max:1024M console=com1,vga com1=115200,8n1", Usage: "the hypervisor's command line (with --hwnode-hypervisor)"},
			&cli.BoolFlag{Name: "hwnode-sanboot", Usage: "boot hardware nodes from their root volume's own boot loader (iPXE sanboot aoe:) instead of --hwnode-kernel/--hwnode-initrd"},
			&cli.StringFlag{Name: "hwnode-cmdline", Value: pxe.DefaultCmdline, Usage: "hardware node kernel command line (Go template: .Name .MAC .IP .Role .RootVolume .Token .Controller)"},
			&cli.BoolFlag{Name: "ha", Value: true, Usage: "fence a hardware node that its agent, the storage nodes and ping all find dead, and restart its instances elsewhere (needs storage nodes reporting: fabricd storage --controller)"},
			&cli.StringFlag{Name: "storage-dir", Usage: "also run a storage node in this process, with its volume pool here, serving AoE on --storage-iface: a one-machine fabric in one command. It registers, enrolls and reports like any storage node (fabricd storage --controller)", Category: "storage beside the controller"},
			&cli.StringSliceFlag{Name: "storage-iface", Usage: "AoE interface of the storage node run with --storage-dir (repeatable)", Category: "storage beside the controller"},
			&cli.StringFlag{Name: "storage-name", Value: controller.DefaultLocalStorageName, Usage: "registered name of the storage node run with --storage-dir", Category: "storage beside the controller"},
			&cli.StringFlag{Name: "storage-replication-listen", Usage: "HOST:PORT where the storage node run with --storage-dir takes a pair peer's replication connection (fabric storage pair create)", Category: "storage beside the controller"},
			&cli.StringFlag{Name: "hwnode-root-image", Usage: "image ('fabric image import') cloned into each hardware node's root volume at registration"},
			&cli.IntFlag{Name: "vcpu-overcommit", Value: 4, Usage: "guest vCPUs per host CPU"},
			&cli.DurationFlag{Name: "agent-timeout", Value: controller.DefaultAgentTimeout, Usage: "a hardware node silent this long is dead"},
			&cli.DurationFlag{Name: "cert-ttl", Value: controller.DefaultCertTTL, Usage: "lifetime of node certificates; agents renew at half of it"},
			&cli.DurationFlag{Name: "boot-window", Value: controller.DefaultBootWindow, Usage: "how long after DHCP binds a node's address its boot script may carry an enrollment token"},
			&cli.DurationFlag{Name: "boot-token-ttl", Value: controller.DefaultBootTokenTTL, Usage: "how long an enrollment token served in a boot script stays usable"},
		},
		Action: func(c *cli.Context) error {
			log, err := logger(c)
			if err != nil {
				return err
			}
			cfg := controller.Config{
				StateDir: c.String("state-dir"),
				APIAddr:  c.String("api-addr"),
				APIHosts: c.StringSlice("api-host"),
				Logger:   log,

				HA:              c.Bool("ha"),
				HWNodeRootImage: c.String("hwnode-root-image"),
				VCPUOvercommit:  c.Int("vcpu-overcommit"),
				AgentTimeout:    c.Duration("agent-timeout"),
				CertTTL:         c.Duration("cert-ttl"),
				BootWindow:      c.Duration("boot-window"),
				BootTokenTTL:    c.Duration("boot-token-ttl"),
			}
			switch {
			case c.IsSet("storage-dir") && len(c.StringSlice("storage-iface")) == 0:
				return fmt.Errorf("--storage-dir runs a storage node beside the controller: it needs --storage-iface, the interface to serve AoE on")
			case c.IsSet("storage-dir"):
				cfg.LocalStorage = &controller.LocalStorage{Name: c.String("storage-name"), DataDir: c.String("storage-dir"),
					Interfaces: c.StringSlice("storage-iface"), ReplicationListen: c.String("storage-replication-listen")}
			case c.IsSet("storage-iface"):
				return fmt.Errorf("--storage-iface is for the storage node run with --storage-dir; give both")
			}
			if cfg.BootSubnet, err = prefixFlag(c, "boot-subnet"); err != nil {
				return err
			}
			if cfg.ServerIP, err = addrFlag(c, "server-ip"); err != nil {
				return err
			}
			if cfg.FirstIP, err = addrFlag(c, "first-ip"); err != nil {
				return err
			}
			if cfg.BootRouter, err = addrFlag(c, "router"); err != nil {
				return err
			}
			cfg.Boot = pxe.Config{
				Iface: c.String("boot-iface"), BootDir: c.String("boot-dir"), RA: c.Bool("ra"),
				HTTPPort: c.Int("http-port"), TFTPPort: c.Int("tftp-port"), DHCPPort: c.Int("dhcp-port"), TFTPSinglePort: c.Bool("tftp-single-port"),
				Network: pxe.Network{LeaseTime: c.Duration("lease-time")},
				Profiles: map[string]pxe.Profile{"hwnode": {
					Kernel: c.String("hwnode-kernel"), Initrd: c.String("hwnode-initrd"), Cmdline: c.String("hwnode-cmdline"), SANBoot: c.Bool("hwnode-sanboot"),
					Hypervisor: c.String("hwnode-hypervisor"), HypervisorArgs: c.String("hwnode-hypervisor-args")}},
			}
			if cfg.Boot.Iface != "" && !cfg.ServerIP.IsValid() {
				return fmt.Errorf("--boot-iface needs --server-ip, this node's address on the boot network")
			}
			ctl, err := controller.New(cfg)
			if err != nil {
				return err
			}
			defer ctl.Close()
			return ctl.Run(c.Context)
		},
	}
}
