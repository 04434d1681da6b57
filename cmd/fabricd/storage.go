package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/fabric-project/fabric/aoe/wire"
	"github.com/fabric-project/fabric/storagenode"
)

func storageCommand() *cli.Command {
	dataDir := &cli.StringFlag{Name: "data-dir", Value: "/var/lib/fabric/storage", Usage: "volume pool directory"}
	return &cli.Command{
		Name:  "storage",
		Usage: "run a storage node: serve volumes over AoE (or manage them: fabricd storage volume ...)",
		Description: `Serves every exported volume of the pool in --data-dir, plus any --export
given on the command line, on each --iface. Volume changes made with
"fabricd storage volume ..." take effect on a running daemon within a second.

   fabricd storage --iface eth1 --data-dir /srv/aoe
   fabricd storage --iface eth1 --export 1.0=/dev/sdb --export 1.1=/srv/disk.img,ro

A storage pair (docs/storage-pairs.md): run one on each node, with the same
volumes (address, size, name) in each pool, and a witness somewhere else:

   fabricd storage witness --listen 10.0.9.3:7420 --state /var/lib/fabric/witness.json
   fabricd storage --iface eth1 --data-dir /srv/aoe --pair p1 --node sn1 --peer-node sn2 \
       --replication-listen 10.0.9.1:7410 --peer 10.0.9.2:7410 --witness http://10.0.9.3:7420

Or let the controller pair two members (it is then the pair's witness):

   fabricd storage --iface eth1 --data-dir /srv/aoe --controller https://10.0.0.1:8443 \
       --ca /etc/fabric/ca.crt --name sn1 --replication-listen 10.0.9.1:7410
   fabric storage pair create sn1 sn2`,
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "iface", Usage: "serve AoE on this interface (repeatable)"},
			dataDir,
			&cli.StringSliceFlag{Name: "export", Usage: "SHELF.SLOT=PATH[,ro]: also serve this file or block device (repeatable)"},
			&cli.IntFlag{Name: "queues", Value: 1, Usage: "sockets (and goroutines) per interface; PACKET_FANOUT spreads initiators over them, each initiator's frames on one"},
			&cli.UintFlag{Name: "buffers", Value: 64, Usage: "outstanding requests advertised to initiators"},
			&cli.StringFlag{Name: "pair", Usage: "replicate every pool volume with a peer: the pair's name", Category: "pair"},
			&cli.StringFlag{Name: "node", Usage: "this node's name in the pair", Category: "pair"},
			&cli.StringFlag{Name: "peer-node", Usage: "the peer's name", Category: "pair"},
			&cli.StringFlag{Name: "replication-listen", Usage: "HOST:PORT to take the peer's replication connection on (not on an AoE interface); with --controller alone, the node can be paired by the controller", Category: "pair"},
			&cli.StringFlag{Name: "peer", Usage: "the peer's replication HOST:PORT", Category: "pair"},
			&cli.StringFlag{Name: "witness", Usage: "URL of the witness that grants write ownership (fabricd storage witness)", Category: "pair"},
			&cli.StringFlag{Name: "resync-rate", Value: "100M", Usage: "resync bandwidth per second (guests keep the rest)", Category: "pair"},
			&cli.BoolFlag{Name: "no-takeover", Usage: "do not serve the peer's AoE MAC while it is away", Category: "pair"},
			&cli.StringFlag{Name: "controller", Usage: "enroll with this controller and report to it (https://HOST:PORT)", Category: "fabric member"},
			&cli.StringFlag{Name: "ca", Usage: "fabric CA certificate (the controller's STATE/ca/ca.crt)", Category: "fabric member"},
			&cli.StringFlag{Name: "name", Usage: "this node's registered name (role storage); default: --node", Category: "fabric member"},
			&cli.StringFlag{Name: "token", Usage: "one-time enrollment token ('fabric node token NAME'); default fabric.token= from /proc/cmdline", Category: "fabric member"},
		},
		Action: func(c *cli.Context) error {
			log, err := logger(c)
			if err != nil {
				return err
			}
			var exports []storagenode.Export
			for _, s := range c.StringSlice("export") {
				e, err := parseExport(s)
				if err != nil {
					return err
				}
				exports = append(exports, e)
			}
			if c.Uint("buffers") < 1 || c.Uint("buffers") > 65535 {
				return fmt.Errorf("--buffers: want 1-65535")
			}
			rate, err := storagenode.ParseSize(c.String("resync-rate"))
			if err != nil || rate <= 0 {
				return fmt.Errorf("--resync-rate %q: want bytes per second, like 50M", c.String("resync-rate"))
			}
			var pair *storagenode.PairConfig
			if c.IsSet("pair") {
				pair = &storagenode.PairConfig{Name: c.String("pair"), Node: c.String("node"), PeerNode: c.String("peer-node"),
					Listen: c.String("replication-listen"), PeerAddr: c.String("peer"), Witness: c.String("witness"),
					ResyncRate: rate, NoTakeover: c.Bool("no-takeover")}
			}
			var member *storagenode.MemberConfig
			if c.IsSet("controller") {
				name := c.String("name")
				if name == "" {
					name = c.String("node")
				}
				if name == "" || c.String("ca") == "" {
					return fmt.Errorf("--controller needs --name (the node's registered name) and --ca (the fabric CA)")
				}
				member = &storagenode.MemberConfig{Controller: c.String("controller"), CAFile: c.String("ca"), Node: name, Token: c.String("token"),
					ResyncRate: rate, NoTakeover: c.Bool("no-takeover")}
				if pair == nil {
					// Paired later by the controller (fabric storage pair create).
					member.ReplicationListen = c.String("replication-listen")
				}
			}
			return storagenode.Run(c.Context, storagenode.Config{
				Member:      member,
				Pair:        pair,
				Interfaces:  c.StringSlice("iface"),
				DataDir:     c.String("data-dir"),
				Exports:     exports,
				Queues:      c.Int("queues"),
				BufferCount: uint16(c.Uint("buffers")),
				Logger:      log,
			})
		},
		Subcommands: []*cli.Command{volumeCommand(dataDir), witnessCommand(), statusCommand(dataDir)},
	}
}

// parseExport reads SHELF.SLOT=PATH[,ro][,sync].
func parseExport(s string) (storagenode.Export, error) {
	addr, rest, ok := strings.Cut(s, "=")
	if !ok || rest == "" {
		return storagenode.Export{}, fmt.Errorf("--export %q: want SHELF.SLOT=PATH[,ro][,sync]", s)
	}
	shelf, slot, err := wire.ParseAddr(addr)
	if err != nil {
		return storagenode.Export{}, fmt.Errorf("--export %q: %w", s, err)
	}
	e := storagenode.Export{Shelf: shelf, Slot: slot, Path: rest}
	for {
		if p, ok := strings.CutSuffix(e.Path, ",ro"); ok {
			e.Path, e.ReadOnly = p, true
		} else if p, ok := strings.CutSuffix(e.Path, ",sync"); ok {
			e.Path, e.Sync = p, true
		} else {
			break
		}
	}
	return e, nil
}

func volumeCommand(dataDir *cli.StringFlag) *cli.Command {
	pool := func(c *cli.Context) (*storagenode.Pool, error) { return storagenode.OpenPool(c.String("data-dir")) }
	exportFlags := []cli.Flag{
		&cli.StringFlag{Name: "addr", Usage: "export at SHELF.SLOT (e.g. 1.0)"},
		&cli.StringSliceFlag{Name: "mac", Usage: "only this initiator MAC sees the volume (repeatable)"},
	}
	printVol := func(c *cli.Context, v storagenode.Volume, extra string) error {
		if c.String("output") == "json" {
			return json.NewEncoder(c.App.Writer).Encode(v)
		}
		addr := v.Addr()
		if addr == "" {
			addr = "not exported"
		}
		if l := v.Limit; l != nil {
			extra += fmt.Sprintf(", limited to %d IOPS, %s/s", l.IOPS, storagenode.FormatSize(l.BytesPerSecond))
			if l.IOPS == 0 {
				extra = strings.Replace(extra, "0 IOPS, ", "", 1)
			}
			if l.BytesPerSecond == 0 {
				extra = strings.Replace(extra, ", 0 B/s", "", 1)
			}
		}
		fmt.Fprintf(c.App.Writer, "%s: %s, %s%s\n", v.Name, storagenode.FormatSize(v.Size), addr, extra)
		return nil
	}
	out := &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table or json"}
	return &cli.Command{
		Name:  "volume",
		Usage: "manage the volume pool",
		Flags: []cli.Flag{dataDir},
		Subcommands: []*cli.Command{
			{
				Name: "create", Usage: "create a sparse volume", ArgsUsage: "NAME SIZE (e.g. 10G)",
				Flags: append([]cli.Flag{out, &cli.BoolFlag{Name: "ro", Usage: "read-only"}, &cli.BoolFlag{Name: "sync", Usage: "acknowledge writes once on stable storage (O_DSYNC; the Linux aoe driver never flushes)"}}, exportFlags...),
				Action: func(c *cli.Context) error {
					p, size, err := poolAndSize(c, pool)
					if err != nil {
						return err
					}
					v, err := p.Create(c.Args().Get(0), size, storagenode.VolumeOptions{
						Addr: c.String("addr"), ReadOnly: c.Bool("ro"), Sync: c.Bool("sync"), MACs: c.StringSlice("mac")})
					if err != nil {
						return err
					}
					return printVol(c, v, "")
				},
			},
			{
				Name: "delete", Usage: "delete a volume and its data", ArgsUsage: "NAME",
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("usage: fabricd storage volume delete NAME")
					}
					p, err := pool(c)
					if err != nil {
						return err
					}
					return p.Delete(c.Args().First())
				},
			},
			{
				Name: "resize", Usage: "grow (or with --shrink, shrink) a volume", ArgsUsage: "NAME SIZE",
				Flags: []cli.Flag{out, &cli.BoolFlag{Name: "shrink", Usage: "allow discarding data past the new size"}},
				Action: func(c *cli.Context) error {
					p, size, err := poolAndSize(c, pool)
					if err != nil {
						return err
					}
					v, err := p.Resize(c.Args().First(), size, c.Bool("shrink"))
					if err != nil {
						return err
					}
					return printVol(c, v, "")
				},
			},
			{
				Name: "list", Usage: "list volumes", Flags: []cli.Flag{out},
				Action: func(c *cli.Context) error {
					p, err := pool(c)
					if err != nil {
						return err
					}
					vs, err := p.List()
					if err != nil {
						return err
					}
					st, running := p.DaemonStatus()
					status := func(v storagenode.Volume) string {
						switch {
						case !running:
							return "no daemon"
						case st.Errors[v.Name] != "":
							return "error: " + st.Errors[v.Name]
						case v.Addr() == "":
							return "-"
						}
						return "served"
					}
					if c.String("output") == "json" {
						type row struct {
							storagenode.Volume
							Status string `json:"status"`
						}
						rows := []row{}
						for _, v := range vs {
							rows = append(rows, row{v, status(v)})
						}
						return json.NewEncoder(c.App.Writer).Encode(rows)
					}
					w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintln(w, "NAME\tSIZE\tADDRESS\tMODE\tMACS\tORIGIN\tSTATUS")
					for _, v := range vs {
						mode := "rw"
						if v.ReadOnly {
							mode = "ro"
						}
						if v.Snapshot {
							mode = "snapshot"
						}
						if v.Sync {
							mode += ",sync"
						}
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, storagenode.FormatSize(v.Size), dash(v.Addr()), mode,
							dash(strings.Join(v.MACs, ",")), dash(v.Origin), status(v))
					}
					return w.Flush()
				},
			},
			{
				Name: "clone", Usage: "copy a volume (reflink where the filesystem can)", ArgsUsage: "SOURCE NAME",
				Flags: append([]cli.Flag{out}, exportFlags...),
				Action: func(c *cli.Context) error {
					return cloneAction(c, pool, printVol, false)
				},
			},
			{
				Name: "snapshot", Usage: "read-only copy of a volume", ArgsUsage: "SOURCE NAME",
				Flags: append([]cli.Flag{out}, exportFlags...),
				Action: func(c *cli.Context) error {
					return cloneAction(c, pool, printVol, true)
				},
			},
			{
				Name: "export", Usage: "set a volume's address and allowed MACs", ArgsUsage: "NAME",
				Flags: append([]cli.Flag{out, &cli.BoolFlag{Name: "none", Usage: "stop exporting"}}, exportFlags...),
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("usage: fabricd storage volume export NAME --addr SHELF.SLOT [--mac MAC]...")
					}
					p, err := pool(c)
					if err != nil {
						return err
					}
					var macs []string
					if c.IsSet("mac") {
						macs = c.StringSlice("mac")
					}
					v, err := p.SetExport(c.Args().First(), c.String("addr"), macs, c.Bool("none"))
					if err != nil {
						return err
					}
					return printVol(c, v, "")
				},
			},
			{
				Name: "limit", Usage: "cap a volume's I/O at the target (0: no limit); a running daemon applies it within a second", ArgsUsage: "NAME",
				Flags: []cli.Flag{out,
					&cli.Int64Flag{Name: "iops", Usage: "AoE commands per second (one per frame)"},
					&cli.StringFlag{Name: "bandwidth", Value: "0", Usage: "bytes per second read and written, like 100M"}},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("usage: fabricd storage volume limit NAME [--iops N] [--bandwidth 100M]")
					}
					var bw int64
					var err error
					if b := c.String("bandwidth"); b != "0" {
						if bw, err = storagenode.ParseSize(b); err != nil {
							return fmt.Errorf("--bandwidth %q: %w", b, err)
						}
					}
					p, err := pool(c)
					if err != nil {
						return err
					}
					if c.Int64("iops") < 0 {
						return fmt.Errorf("--iops %d: want 0 (no limit) or more", c.Int64("iops"))
					}
					v, err := p.SetLimit(c.Args().First(), storagenode.Limit{IOPS: c.Int64("iops"), BytesPerSecond: bw})
					if err != nil {
						return err
					}
					return printVol(c, v, "")
				},
			},
		},
	}
}

// poolAndSize reads the NAME SIZE arguments of create and resize.
func poolAndSize(c *cli.Context, pool func(*cli.Context) (*storagenode.Pool, error)) (*storagenode.Pool, int64, error) {
	if c.NArg() != 2 {
		return nil, 0, fmt.Errorf("usage: fabricd storage volume %s NAME SIZE", c.Command.Name)
	}
	size, err := storagenode.ParseSize(c.Args().Get(1))
	if err != nil {
		return nil, 0, err
	}
	p, err := pool(c)
	return p, size, err
}

func cloneAction(c *cli.Context, pool func(*cli.Context) (*storagenode.Pool, error),
	printVol func(*cli.Context, storagenode.Volume, string) error, snap bool) error {
	if c.NArg() != 2 {
		return fmt.Errorf("usage: fabricd storage volume %s SOURCE NAME", c.Command.Name)
	}
	p, err := pool(c)
	if err != nil {
		return err
	}
	o := storagenode.VolumeOptions{Addr: c.String("addr"), MACs: c.StringSlice("mac")}
	clone := p.Clone
	if snap {
		clone = p.Snapshot
	}
	v, method, err := clone(c.Args().Get(0), c.Args().Get(1), o)
	if err != nil {
		return err
	}
	return printVol(c, v, " ("+method+")")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
