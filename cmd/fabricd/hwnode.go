package main

import (
	"time"

	"net"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/fabric-project/fabric/hwnode"
	"github.com/fabric-project/fabric/storagenode"
)

func hwnodeCommand() *cli.Command {
	return &cli.Command{
		Name:  "hwnode",
		Usage: "run the hardware node agent: instances on the local libvirtd, live migration",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "name", Required: true, Usage: "this node's registered name"},
			&cli.StringFlag{Name: "controller", Required: true, Usage: "controller API URL (https://HOST:PORT)"},
			&cli.StringFlag{Name: "ca", Required: true, Usage: "fabric CA certificate (the controller's STATE/ca/ca.crt); with --ca-pin it is fetched when missing"},
			&cli.StringFlag{Name: "ca-pin", Usage: "sha256:HEX of the fabric CA ('fabric status' shows it): fetch the CA from the controller into --ca if it is missing; default fabric.ca= from /proc/cmdline"},
			&cli.StringFlag{Name: "token", Usage: "one-time enrollment token ('fabric node token NAME'); default fabric.token= from /proc/cmdline"},
			&cli.StringFlag{Name: "state-dir", Value: "/var/lib/fabric/hwnode", Usage: "where the agent keeps its credential (its key and certificate)"},
			&cli.StringFlag{Name: "libvirt-socket", Value: "/run/libvirt/libvirt-sock", Usage: "libvirtd's unix socket"},
			&cli.StringFlag{Name: "hypervisor", Value: "auto", Usage: "kvm, qemu (software emulation) or xen; auto: xen under a Xen libvirt, else kvm if /dev/kvm exists and the CPU shows vmx or svm, else qemu"},
			&cli.StringFlag{Name: "migration-uri", Required: true, Usage: "how other nodes' libvirtd reach this one, e.g. qemu+tls://10.0.0.11/system (with --libvirt-pki-dir) or qemu+tcp://10.0.0.11/system"},
			&cli.StringFlag{Name: "libvirt-pki-dir", Usage: "write the node certificate for libvirt TLS under this directory, at libvirt's default paths when it is /etc/pki (CA/cacert.pem, libvirt/servercert.pem, libvirt/private/serverkey.pem, and the client pair), after enrollment and each renewal"},
			&cli.StringFlag{Name: "libvirt-admin-uri", Usage: "virt-admin URI to make libvirtd reload renewed TLS certificates, e.g. libvirtd:///system"},
			&cli.StringFlag{Name: "disk", Value: "auto", Usage: "how guests reach AoE volumes: kernel (/dev/etherd), nbd (the agent's initiator behind NBD on loopback); auto: kernel if the aoe module is loaded"},
			&cli.StringFlag{Name: "aoe-iface", Usage: "interface for the agent's AoE initiator (nbd disk mode)"},
			&cli.StringFlag{Name: "nbd-addr", Value: "127.0.0.1:10809", Usage: "NBD server address (nbd disk mode); the same on every node"},
			&cli.StringFlag{Name: "disk-server", Usage: "control socket of 'fabricd hwnode-disks' (nbd disk mode): guests keep their disks while the agent restarts; default: the agent serves NBD itself"},
			&cli.StringFlag{Name: "kernel", Required: true, Usage: "instance kernel on this node"},
			&cli.StringFlag{Name: "initrd", Required: true, Usage: "instance initramfs on this node"},
			&cli.StringFlag{Name: "bridge", Value: "br0", Usage: "bridge that guest NICs join"},
			&cli.StringFlag{Name: "serial-dir", Usage: "write guests' serial consoles to files here (default: a pty)"},
			&cli.IntFlag{Name: "vcpus", Usage: "vCPUs offered to guests (default: the host's CPUs)"},
			&cli.StringFlag{Name: "memory", Usage: "memory offered to guests, e.g. 16GiB (default: host memory minus 512 MiB)"},
			&cli.DurationFlag{Name: "shutdown-timeout", Value: hwnode.DefaultShutdownTimeout, Usage: "graceful stop before destroy"},
			&cli.DurationFlag{Name: "max-downtime", Value: hwnode.DefaultMaxDowntime, Usage: "live migration downtime target"},
			&cli.StringFlag{Name: "watchdog", Usage: "watchdog device to feed every second (/dev/watchdog, softdog): a node whose agent stays dead is reset"},
			&cli.DurationFlag{Name: "watchdog-timeout", Value: 30 * time.Second, Usage: "watchdog timeout set on the device: long enough for systemd to restart a crashed agent"},
			&cli.DurationFlag{Name: "isolation-pause", Value: hwnode.DefaultIsolationPause, Usage: "pause guests when the controller and every storage node have been silent this long (shorter than the controller's failure detection; negative: never)"},
		},
		Action: func(c *cli.Context) error {
			log, err := logger(c)
			if err != nil {
				return err
			}
			cfg := hwnode.Config{
				Node: c.String("name"), Controller: c.String("controller"), CAFile: c.String("ca"), CAPin: c.String("ca-pin"), Token: c.String("token"),
				StateDir: c.String("state-dir"), LibvirtSocket: c.String("libvirt-socket"), Hypervisor: c.String("hypervisor"),
				MigrationURI: c.String("migration-uri"), LibvirtPKIDir: c.String("libvirt-pki-dir"), LibvirtAdminURI: c.String("libvirt-admin-uri"), DiskMode: c.String("disk"), AoEIface: c.String("aoe-iface"),
				NBDAddr: c.String("nbd-addr"), DiskServer: c.String("disk-server"), Kernel: c.String("kernel"), Initrd: c.String("initrd"), Bridge: c.String("bridge"),
				SerialDir: c.String("serial-dir"), VCPUs: c.Int("vcpus"),
				ShutdownTimeout: c.Duration("shutdown-timeout"), MaxDowntime: c.Duration("max-downtime"), Logger: log,
				Watchdog: c.String("watchdog"), WatchdogTimeout: c.Duration("watchdog-timeout"), IsolationPause: c.Duration("isolation-pause"),
			}
			if s := c.String("memory"); s != "" {
				b, err := storagenode.ParseSize(s)
				if err != nil {
					return err
				}
				cfg.MemoryMiB = int(b >> 20)
			}
			a, err := hwnode.New(c.Context, cfg)
			if err != nil {
				return err
			}
			return a.Run(c.Context)
		},
	}
}

func hwnodeDisksCommand() *cli.Command {
	return &cli.Command{
		Name:  "hwnode-disks",
		Usage: "serve AoE volumes to QEMU as NBD exports for the hardware node agent (`fabricd hwnode --disk-server`), in a process of its own",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "aoe-iface", Required: true, Usage: "interface for the AoE initiator"},
			&cli.StringFlag{Name: "nbd-addr", Value: "127.0.0.1:10809", Usage: "NBD listen address; the same on every node"},
			&cli.StringFlag{Name: "control", Value: "/run/fabric/hwnode-disks.sock", Usage: "unix socket the agent drives it through"},
		},
		Action: func(c *cli.Context) error {
			log, err := logger(c)
			if err != nil {
				return err
			}
			ds, err := hwnode.NewDiskServer(c.String("aoe-iface"), c.String("nbd-addr"), log)
			if err != nil {
				return err
			}
			nbdLn, err := net.Listen("tcp", c.String("nbd-addr"))
			if err != nil {
				return err
			}
			sock := c.String("control")
			if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
				return err
			}
			_ = os.Remove(sock) // a socket left by an earlier run
			ctl, err := net.Listen("unix", sock)
			if err != nil {
				return err
			}
			if err := os.Chmod(sock, 0o600); err != nil {
				return err
			}
			log.Info("disk server running", "aoe_iface", c.String("aoe-iface"), "nbd", c.String("nbd-addr"), "control", sock, "aoe_mac", ds.MAC())
			return ds.Serve(c.Context, nbdLn, ctl)
		},
	}
}
