package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/storagenode"
)

func volumeCommand() *cli.Command {
	return &cli.Command{
		Name:    "volume",
		Aliases: []string{"volumes"},
		Usage:   "the controller's volumes: where each lives, its address, allow list and state",
		Subcommands: []*cli.Command{
			volumeShowCommand(),
			{
				Name:      "resize",
				Usage:     "grow a volume on every storage node holding it (a guest sees the new size at its next start)",
				ArgsUsage: "NAME SIZE",
				Flags:     []cli.Flag{outputFlag},
				Action: withClient(func(c *cli.Context, cl *controllerapi.Client) error {
					if c.NArg() != 2 {
						return fmt.Errorf("fabric volume resize: want NAME SIZE (like 20G), got %d arguments", c.NArg())
					}
					size, err := storagenode.ParseSize(c.Args().Get(1))
					if err != nil || size <= 0 {
						return fmt.Errorf("fabric volume resize: size %q: want bytes, like 20G", c.Args().Get(1))
					}
					v, err := cl.ResizeVolume(c.Context, c.Args().Get(0), size)
					if err != nil {
						return err
					}
					return show(c, v, func(w io.Writer) {
						fmt.Fprintf(w, "volume %s is %s on %d storage node(s)\n", v.Name, storagenode.FormatSize(v.Size), len(v.Copies))
					})
				}),
			},
			{
				Name:  "list",
				Usage: "list volumes: kind, storage node, address, size, allowed MACs, state",
				Flags: []cli.Flag{outputFlag},
				Action: withClient(func(c *cli.Context, cl *controllerapi.Client) error {
					vs, err := cl.Volumes(c.Context)
					if err != nil {
						return err
					}
					return show(c, vs, func(w io.Writer) {
						fmt.Fprintln(w, "NAME\tKIND\tSTORAGE\tADDR\tSIZE\tALLOWED\tSTATE")
						for _, v := range vs {
							addr, macs := v.Addr, strings.Join(v.MACs, ",")
							if addr == "" {
								addr = "-"
							}
							if macs == "" {
								macs = "-"
							}
							fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, v.Kind, v.Storage, addr, storagenode.FormatSize(v.Size), macs, v.State)
						}
					})
				}),
			},
		},
	}
}

func volumeShowCommand() *cli.Command {
	return &cli.Command{
		Name:      "show",
		Usage:     "one volume: address, size, allow list, I/O caps, and each copy's storage node, paths and sync state",
		ArgsUsage: "NAME",
		Flags:     []cli.Flag{outputFlag},
		Action: withName("NAME", func(c *cli.Context, cl *controllerapi.Client, name string) error {
			v, err := cl.Volume(c.Context, name)
			if err != nil {
				return err
			}
			return show(c, v, func(w io.Writer) {
				fmt.Fprintf(w, "name:\t%s (%s)\n", v.Name, v.Kind)
				addr := v.Addr
				if addr == "" {
					addr = "not exported"
				}
				fmt.Fprintf(w, "address:\t%s\n", addr)
				fmt.Fprintf(w, "size:\t%s\n", storagenode.FormatSize(v.Size))
				macs := strings.Join(v.MACs, ", ")
				if macs == "" {
					macs = "-"
				}
				fmt.Fprintf(w, "allowed:\t%s\n", macs)
				caps := "none"
				if v.IOPS > 0 || v.BPS > 0 {
					caps = fmt.Sprintf("%d IOPS, %s/s (0: no cap)", v.IOPS, storagenode.FormatSize(v.BPS))
				}
				fmt.Fprintf(w, "I/O caps:\t%s\n", caps)
				if v.Pair != "" {
					fmt.Fprintf(w, "pair:\t%s\n", v.Pair)
				}
				for _, cp := range v.Copies {
					line := cp.State
					if cp.Role != "" {
						line += ", " + cp.Role + " (" + cp.Sync + ")"
					}
					if cp.DirtyBytes > 0 {
						line += fmt.Sprintf(", %s the peer lacks", storagenode.FormatSize(cp.DirtyBytes))
					}
					if cp.ResyncPercent != nil {
						line += fmt.Sprintf(", resync %.0f%%", *cp.ResyncPercent)
					}
					if len(cp.Paths) > 0 {
						line += "; paths " + strings.Join(cp.Paths, ", ")
					}
					fmt.Fprintf(w, "on %s:\t%s\n", cp.Storage, line)
				}
			})
		}),
	}
}

func storageCommand() *cli.Command {
	return &cli.Command{
		Name:  "storage",
		Usage: "storage nodes: what each reports (capacity, volumes, pair state); pairs; drain and undrain",
		Subcommands: []*cli.Command{
			pairCommand(),
			{
				Name:      "drain",
				Usage:     "take a pair node out of service without a stall: it hands its volumes to its peer and stops serving",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{outputFlag},
				Action:    leaveAction((*controllerapi.Client).DrainStorage, "", "`fabric storage undrain %s` brings it back"),
			},
			{
				Name:      "shutdown",
				Usage:     "a planned shutdown of a pair node: drain it, then its daemon exits",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{outputFlag},
				Action:    leaveAction((*controllerapi.Client).ShutdownStorage, " and its daemon exits", "start it again, then `fabric storage undrain %s`"),
			},
			{
				Name:      "undrain",
				Usage:     "bring a drained storage node back into its pair (through a resync)",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{&cli.DurationFlag{Name: "wait", Value: 10 * time.Minute, Usage: "wait this long for the pair to be in sync again (0: do not wait)"}, outputFlag},
				Action: withName("NAME", func(c *cli.Context, cl *controllerapi.Client, name string) error {
					t0 := time.Now()
					done := waiting(c.App.ErrWriter, "bringing back "+name)
					n, err := cl.UndrainStorage(c.Context, name, c.Duration("wait"))
					done()
					if err != nil {
						return err
					}
					return show(c, n, func(w io.Writer) {
						state := "rejoining"
						if n.Report != nil && n.Report.Pair != nil {
							state = n.Report.Pair.State
						}
						fmt.Fprintf(w, "storage node %s undrained (%.1f s): %s\n", n.Name, time.Since(t0).Seconds(), state)
					})
				}),
			},
			{
				Name:  "list",
				Usage: "list storage nodes: alive, pair and role, sync state, volumes, free space",
				Flags: []cli.Flag{outputFlag},
				Action: withClient(func(c *cli.Context, cl *controllerapi.Client) error {
					ns, err := cl.StorageNodes(c.Context)
					if err != nil {
						return err
					}
					return show(c, ns, func(w io.Writer) { storageTable(w, ns, time.Now()) })
				}),
			},
			{
				Name:  "status",
				Usage: "the storage plane on one screen: pairs (owner, sync state, free space), storage nodes in no pair, volumes not served as wanted",
				Flags: []cli.Flag{outputFlag},
				Action: withClient(func(c *cli.Context, cl *controllerapi.Client) error {
					st, err := getStorageStatus(c, cl)
					if err != nil {
						return err
					}
					return show(c, st, func(w io.Writer) { storageStatusTable(w, st, time.Now()) })
				}),
			},
			{
				Name:      "show",
				Usage:     "one storage node: its report, every volume with its sync state and limits",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{outputFlag},
				Action: withClient(func(c *cli.Context, cl *controllerapi.Client) error {
					if c.NArg() != 1 {
						return fmt.Errorf("usage: fabric storage show NAME")
					}
					n, err := cl.StorageNode(c.Context, c.Args().First())
					if err != nil {
						return err
					}
					return show(c, n, func(w io.Writer) { storageShow(w, n, time.Now()) })
				}),
			},
		},
	}
}

// leaveAction runs a drain or a shutdown (call) of the storage node named
// and says how long it took, who serves its volumes now (what follows
// "drained" is after) and how to bring it back (back, with the name).
func leaveAction(call func(*controllerapi.Client, context.Context, string) (controllerapi.StorageNode, error), after, back string) cli.ActionFunc {
	return withName("NAME", func(c *cli.Context, cl *controllerapi.Client, name string) error {
		t0 := time.Now()
		done := waiting(c.App.ErrWriter, "draining "+name)
		n, err := call(cl, c.Context, name)
		done()
		if err != nil {
			return err
		}
		peer := "its peer"
		if n.Report != nil && n.Report.Pair != nil {
			peer = n.Report.Pair.Peer
		}
		return show(c, n, func(w io.Writer) {
			fmt.Fprintf(w, "storage node %s drained in %.1f s%s: %s serves its volumes alone; "+back+"\n", n.Name, time.Since(t0).Seconds(), after, peer, n.Name)
		})
	})
}

func storageState(n controllerapi.StorageNode, now time.Time) string {
	switch {
	case n.Report == nil:
		return "never reported (start fabricd storage with --controller)"
	case !n.Alive:
		return fmt.Sprintf("not reporting (last %s ago)", now.Sub(n.LastSeen).Round(time.Second))
	case n.Report.Drained:
		return "alive, DRAINED (fabric storage undrain " + n.Name + ")"
	}
	return "alive"
}

func storageTable(w io.Writer, ns []controllerapi.StorageNode, now time.Time) {
	fmt.Fprintln(w, "NAME\tSTATE\tPAIR\tROLE\tSYNC\tVOLUMES\tFREE")
	for _, n := range ns {
		pair, role, sync, vols, free := "-", "-", "-", "-", "-"
		if r := n.Report; r != nil {
			vols, free = fmt.Sprint(len(r.Volumes)), storagenode.FormatSize(r.Capacity.FreeBytes)
			if p := r.Pair; p != nil {
				pair, role, sync = p.Pair+" (with "+p.Peer+")", fmt.Sprintf("%s, epoch %d", p.Role, p.Epoch), p.State
			}
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, storageState(n, now), pair, role, sync, vols, free)
	}
}

func storageShow(w io.Writer, n controllerapi.StorageNode, now time.Time) {
	fmt.Fprintf(w, "name:\t%s\n", n.Name)
	fmt.Fprintf(w, "mac, ip:\t%s, %s\n", n.MAC, n.IP)
	fmt.Fprintf(w, "state:\t%s\n", storageState(n, now))
	r := n.Report
	if r == nil {
		return
	}
	fmt.Fprintf(w, "capacity:\t%s free of %s\n", storagenode.FormatSize(r.Capacity.FreeBytes), storagenode.FormatSize(r.Capacity.TotalBytes))
	var ifs []string
	for _, i := range r.Interfaces {
		ifs = append(ifs, i.Name+" "+i.MAC)
	}
	fmt.Fprintf(w, "AoE interfaces:\t%s\n", strings.Join(ifs, ", "))
	if r.Drained {
		fmt.Fprintf(w, "drained:\tout of its pair on the controller's word (`fabric storage undrain %s` brings it back)\n", n.Name)
	}
	if p := r.Pair; p != nil {
		fmt.Fprintf(w, "pair:\t%s with %s: %s of epoch %d, %s; peer %s; serving %v\n", p.Pair, p.Peer, p.Role, p.Epoch, p.State,
			map[bool]string{true: "connected", false: "not connected"}[p.PeerConnected], p.Serving)
		if len(p.TakenOver) > 0 {
			fmt.Fprintf(w, "answering for the peer:\t%s\n", strings.Join(p.TakenOver, ", "))
		}
		if p.Waiting != "" {
			fmt.Fprintf(w, "waiting:\t%s\n", p.Waiting)
		}
		if p.LastEvent != "" {
			fmt.Fprintf(w, "last pair event:\t%s\n", p.LastEvent)
		}
	}
	fmt.Fprintln(w, "VOLUME\tADDR\tSIZE\tSYNC\tLIMIT\tPROBLEM")
	for _, v := range r.Volumes {
		sync := "-"
		if r.Pair != nil {
			sync = "in sync"
			if v.DirtyBytes > 0 {
				sync = storagenode.FormatSize(v.DirtyBytes) + " dirty"
			}
			if v.ResyncPercent != nil {
				sync = fmt.Sprintf("resync %.0f%%", *v.ResyncPercent)
			}
		}
		limit := "-"
		if v.IOPS > 0 || v.BPS > 0 {
			var l []string
			if v.IOPS > 0 {
				l = append(l, fmt.Sprintf("%d IOPS", v.IOPS))
			}
			if v.BPS > 0 {
				l = append(l, storagenode.FormatSize(v.BPS)+"/s")
			}
			limit = strings.Join(l, ", ")
		}
		addr := v.Addr
		if addr == "" {
			addr = "-"
		}
		problem := v.Problem
		if problem == "" {
			problem = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, addr, storagenode.FormatSize(v.Size), sync, limit, problem)
	}
	for _, p := range r.Pending {
		why := p.Why
		if p.Percent > 0 {
			why = fmt.Sprintf("%s: %.0f%%", why, p.Percent)
		}
		fmt.Fprintf(w, "%s\t-\t-\t-\t-\tnot there yet: %s\n", p.Name, why)
	}
}

func pairTable(w io.Writer, ps []controllerapi.StoragePairInfo) {
	fmt.Fprintln(w, "PAIR\tNODES\tOWNER\tSTATE\tFREE")
	for _, p := range ps {
		owner := p.Owner
		if owner == "" {
			owner = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", p.Name, strings.Join(p.Nodes, ","), owner, p.State, storagenode.FormatSize(p.FreeBytes))
	}
}

// storageStatus is the storage plane on one screen (fabric storage status).
type storageStatus struct {
	Pairs      []controllerapi.StoragePairInfo `json:"pairs"`
	Standalone []controllerapi.StorageNode     `json:"standalone"` // storage nodes in no pair
	Volumes    int                             `json:"volumes"`
	NotServed  []controllerapi.Volume          `json:"not_served"` // volumes a storage node does not serve as the controller wants
}

func getStorageStatus(c *cli.Context, cl *controllerapi.Client) (storageStatus, error) {
	st := storageStatus{Standalone: []controllerapi.StorageNode{}, NotServed: []controllerapi.Volume{}}
	var err error
	if st.Pairs, err = cl.Pairs(c.Context); err != nil {
		return st, err
	}
	ns, err := cl.StorageNodes(c.Context)
	if err != nil {
		return st, err
	}
	paired := map[string]bool{}
	for _, p := range st.Pairs {
		for _, n := range p.Nodes {
			paired[n] = true
		}
	}
	for _, n := range ns {
		if !paired[n.Name] {
			st.Standalone = append(st.Standalone, n)
		}
	}
	vs, err := cl.Volumes(c.Context)
	if err != nil {
		return st, err
	}
	for _, v := range vs {
		if v.State != "served" {
			st.NotServed = append(st.NotServed, v)
		}
	}
	st.Volumes = len(vs)
	return st, nil
}

func storageStatusTable(w io.Writer, st storageStatus, now time.Time) {
	if len(st.Pairs) > 0 {
		pairTable(w, st.Pairs)
		fmt.Fprintln(w)
	}
	if len(st.Standalone) > 0 {
		storageTable(w, st.Standalone, now)
		fmt.Fprintln(w)
	}
	if len(st.Pairs) == 0 && len(st.Standalone) == 0 {
		fmt.Fprintln(w, "no storage node is registered (fabric node register --role storage ...)")
	}
	fmt.Fprintf(w, "volumes:\t%d, %d not served as wanted\n", st.Volumes, len(st.NotServed))
	for _, v := range st.NotServed {
		fmt.Fprintf(w, "  %s\t%s\t%s\n", v.Name, v.Storage, v.State)
	}
}

func pairCommand() *cli.Command {
	printPairs := func(c *cli.Context, ps []controllerapi.StoragePairInfo) error {
		return show(c, ps, func(w io.Writer) { pairTable(w, ps) })
	}
	return &cli.Command{
		Name:    "pair",
		Aliases: []string{"pairs"},
		Usage:   "storage pairs: two storage nodes that hold the same volumes, each serving them (docs/storage-pairs.md)",
		Subcommands: []*cli.Command{
			{
				Name:  "create",
				Usage: "make two storage nodes a pair; new volumes go to the pair with the most free space",
				Description: `Both nodes must report to the controller, run with --replication-listen
(their peer connects there; not on an AoE interface) and export no volume
yet. The controller is the pair's witness. Returns once one node owns
writes and the other follows in sync.`,
				ArgsUsage: "NODE1 NODE2",
				Flags:     []cli.Flag{&cli.StringFlag{Name: "name", Usage: "the pair's name (default NODE1-NODE2)"}, outputFlag},
				Action: withClient(func(c *cli.Context, cl *controllerapi.Client) error {
					if c.NArg() != 2 {
						return fmt.Errorf("fabric storage pair create: want two storage node names, got %d arguments", c.NArg())
					}
					t0 := time.Now()
					done := waiting(c.App.ErrWriter, "pairing "+strings.Join(c.Args().Slice(), " and "))
					p, err := cl.CreatePair(c.Context, controllerapi.PairRequest{Name: c.String("name"), Nodes: c.Args().Slice()})
					done()
					if err != nil {
						return err
					}
					return show(c, p, func(w io.Writer) {
						fmt.Fprintf(w, "pair %s formed in %.1f s: %s owns writes, both serve every volume of the pair\n", p.Name, time.Since(t0).Seconds(), p.Owner)
					})
				}),
			},
			{
				Name:  "list",
				Usage: "list the pairs: nodes, owner, state, free space",
				Flags: []cli.Flag{outputFlag},
				Action: withClient(func(c *cli.Context, cl *controllerapi.Client) error {
					ps, err := cl.Pairs(c.Context)
					if err != nil {
						return err
					}
					return printPairs(c, ps)
				}),
			},
		},
	}
}
