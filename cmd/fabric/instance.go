package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/storagenode"
)

// show prints v as JSON with -o json, else through table.
func show(c *cli.Context, v any, table func(w io.Writer)) error {
	j, err := wantJSON(c)
	if err != nil {
		return err
	}
	if j {
		return emit(c, v)
	}
	tw := newTable(c.App.Writer)
	table(tw)
	return tw.Flush()
}

func imageCommand() *cli.Command {
	return &cli.Command{
		Name:  "image",
		Usage: "instance templates: import, list, delete",
		Subcommands: []*cli.Command{
			{
				Name:      "import",
				Usage:     "upload a raw disk image as a template volume",
				ArgsUsage: "NAME FILE",
				Flags:     []cli.Flag{outputFlag},
				Action: func(c *cli.Context) error {
					if c.NArg() != 2 {
						return fmt.Errorf("%s: expected NAME FILE", c.Command.FullName())
					}
					f, err := os.Open(c.Args().Get(1))
					if err != nil {
						return err
					}
					defer f.Close()
					fi, err := f.Stat()
					if err != nil {
						return err
					}
					if fi.IsDir() {
						return fmt.Errorf("%s is a directory; give the raw disk image file (e.g. work/images/instance-template.img)", c.Args().Get(1))
					}
					if fi.Size()%512 != 0 {
						fmt.Fprintf(c.App.ErrWriter, "fabric: note: %s is %d bytes, not a whole number of 512-byte sectors; the volume is padded with zeros to %d\n",
							c.Args().Get(1), fi.Size(), (fi.Size()+511)/512*512)
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					// A bar on the terminal while the file goes up; the
					// controller answers once it holds the image.
					pr := newProgress(f, c.App.ErrWriter, "importing "+c.Args().First(), fi.Size())
					im, err := cl.ImportImage(c.Context, c.Args().First(), pr, fi.Size())
					pr.finish("")
					if err != nil {
						return err
					}
					return show(c, im, func(w io.Writer) {
						fmt.Fprintf(w, "imported image %s: %d bytes, template volume %s\n", im.Name, im.Size, im.Volume)
					})
				},
			},
			{
				Name:    "list",
				Aliases: []string{"ls"},
				Usage:   "list images",
				Flags:   []cli.Flag{outputFlag},
				Action: withClient(func(c *cli.Context, cl *controllerapi.Client) error {
					ims, err := cl.Images(c.Context)
					if err != nil {
						return err
					}
					return show(c, ims, func(w io.Writer) {
						fmt.Fprintln(w, "NAME\tSIZE\tVOLUME\tIMPORTED")
						for _, im := range ims {
							fmt.Fprintf(w, "%s\t%d MiB\t%s\t%s\n", im.Name, im.Size>>20, im.Volume, im.Created.Local().Format(time.DateTime))
						}
					})
				}),
			},
			{
				Name:      "delete",
				Aliases:   []string{"rm"},
				Usage:     "delete an image",
				ArgsUsage: "NAME",
				Action: withName("NAME", func(c *cli.Context, cl *controllerapi.Client, name string) error {
					if err := cl.DeleteImage(c.Context, name); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "deleted image %s\n", name)
					return nil
				}),
			},
		},
	}
}

func instanceTable(w io.Writer, ins []controllerapi.Instance) {
	fmt.Fprintln(w, "NAME\tNODE\tSTATE\tWANT\tVCPUS\tMEMORY\tIP\tDISK\tIMAGE")
	for _, in := range ins {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d MiB\t%s\t%s\t%s\n", in.Name, in.Node, in.State, in.Want, in.VCPUs, in.MemoryMiB, in.IP, in.Volume, in.Image)
	}
}

func instanceDetail(w io.Writer, in controllerapi.Instance) {
	fmt.Fprintf(w, "name:\t%s\nuuid:\t%s\nnode:\t%s\nstate:\t%s (wanted: %s)\n", in.Name, in.UUID, in.Node, in.State, in.Want)
	if in.Error != "" {
		fmt.Fprintf(w, "error:\t%s\n", in.Error)
	}
	fmt.Fprintf(w, "vcpus:\t%d\nmemory:\t%d MiB\nimage:\t%s\ndisk:\t%s\nmac:\t%s\nip:\t%s\ncreated:\t%s\n",
		in.VCPUs, in.MemoryMiB, in.Image, in.Volume, in.MAC, in.IP, in.Created.Local().Format(time.RFC3339))
	if m := in.Migrate; m != nil {
		fmt.Fprintf(w, "migrating:\tto %s since %s (phase %s)\n", m.To, m.Started.Local().Format(time.RFC3339), m.Phase)
	}
	ha := "yes: restarted elsewhere if its node fails"
	if in.NoHA {
		ha = "no: stays down with its node"
	}
	fmt.Fprintf(w, "ha:\t%s (priority %d)\n", ha, in.Priority)
	if in.IOPS > 0 || in.BPS > 0 {
		fmt.Fprintf(w, "disk caps:\t%s\n", limitText(in.IOPS, in.BPS))
	}
	if in.Group != "" {
		fmt.Fprintf(w, "group:\t%s (kept apart from the group's other members)\n", in.Group)
	}
	for i, r := range in.Restarts {
		label := ""
		if i == 0 {
			label = "restarts:"
		}
		fmt.Fprintf(w, "%s\t%s from %s to %s (%s)\n", label, r.At.Local().Format(time.RFC3339), r.From, r.To, r.Why)
	}
}

var (
	iopsFlag      = &cli.Int64Flag{Name: "iops", Usage: "cap the disk at this many I/O operations a second (AoE commands; 0: no cap)"}
	bandwidthFlag = &cli.StringFlag{Name: "bandwidth", Value: "0", Usage: "cap the disk's bytes a second, like 100MB/s or 20M (0: no cap)"}
)

// limitFlags reads --iops and --bandwidth.
func limitFlags(c *cli.Context) (controllerapi.LimitRequest, error) {
	l := controllerapi.LimitRequest{IOPS: c.Int64("iops")}
	if b := strings.TrimSuffix(strings.TrimSpace(c.String("bandwidth")), "/s"); b != "0" && b != "" {
		v, err := storagenode.ParseSize(b)
		if err != nil {
			return l, fmt.Errorf("--bandwidth %q: want bytes a second like 100MB/s or 20M", c.String("bandwidth"))
		}
		l.BPS = v
	}
	if l.IOPS < 0 {
		return l, fmt.Errorf("--iops %d: want 0 (no cap) or more", l.IOPS)
	}
	return l, nil
}

func limitText(iops, bps int64) string {
	var parts []string
	if iops > 0 {
		parts = append(parts, fmt.Sprintf("%d IOPS", iops))
	}
	if bps > 0 {
		parts = append(parts, storagenode.FormatSize(bps)+"/s")
	}
	if len(parts) == 0 {
		return "nothing (no caps)"
	}
	return strings.Join(parts, " and ")
}

func instanceCommand() *cli.Command {
	waitFlag := &cli.DurationFlag{Name: "wait", Value: 2 * time.Minute, Usage: "wait this long for the node to report the new state (0: do not wait)"}
	state := func(action string) cli.ActionFunc {
		return withName("NAME", func(c *cli.Context, cl *controllerapi.Client, name string) error {
			t0 := time.Now()
			done := waiting(c.App.ErrWriter, fmt.Sprintf("%s %s", map[string]string{"start": "starting", "stop": "stopping"}[action], name))
			in, err := cl.SetInstanceState(c.Context, name, action, c.Duration("wait"))
			done()
			if err != nil {
				return err
			}
			return show(c, in, func(w io.Writer) {
				fmt.Fprintf(w, "instance %s on %s: %s (%.1f s)\n", in.Name, in.Node, in.State, time.Since(t0).Seconds())
			})
		})
	}
	return &cli.Command{
		Name:    "instance",
		Aliases: []string{"instances", "vm"},
		Usage:   "guests: create, start, stop, migrate, delete, list, show",
		Subcommands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "create an instance from an image on a hardware node with room",
				UsageText: "fabric instance create NAME --image IMG --vcpus N --memory SIZE [--node NODE] [--start [--wait 2m]] (with --start, waits until the node reports it running; --wait 0 returns at once)",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "image", Required: true, Usage: "image to clone the disk from"},
					&cli.IntFlag{Name: "vcpus", Value: 1, Usage: "virtual CPUs"},
					&cli.StringFlag{Name: "memory", Value: "128MiB", Usage: "memory, e.g. 512MiB or 2GiB"},
					&cli.StringFlag{Name: "node", Usage: "place on this hardware node (default: the one with most free memory)"},
					&cli.StringFlag{Name: "storage", Usage: "put the disk on this storage pair or standalone storage node (default: the pair with most free space)"},
					&cli.BoolFlag{Name: "start", Usage: "start it right away"},
					&cli.StringFlag{Name: "group", Usage: "anti-affinity group: no two members on one node while another has room"},
					&cli.IntFlag{Name: "priority", Usage: "restart order after a node failure (higher first)"},
					&cli.BoolFlag{Name: "ha", Value: true, Usage: "restart it on another node when its node fails (--ha=false: stay down with it)"},
					iopsFlag, bandwidthFlag,
					waitFlag,
					outputFlag,
				},
				Action: func(c *cli.Context) error {
					name, err := oneArg(c, "NAME")
					if err != nil {
						return err
					}
					mem, err := storagenode.ParseSize(c.String("memory"))
					if err != nil {
						return fmt.Errorf("--memory: %w", err)
					}
					if mem < 1<<20 {
						return fmt.Errorf("--memory %s is %d bytes; write a unit, e.g. 512MiB or 2GiB", c.String("memory"), mem)
					}
					lim, err := limitFlags(c)
					if err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					in, err := cl.CreateInstance(c.Context, controllerapi.CreateInstanceRequest{Name: name, Image: c.String("image"),
						VCPUs: c.Int("vcpus"), MemoryMiB: int(mem >> 20), Node: c.String("node"), Storage: c.String("storage"), Start: c.Bool("start"),
						Group: c.String("group"), Priority: c.Int("priority"), NoHA: !c.Bool("ha"), IOPS: lim.IOPS, BPS: lim.BPS})
					if err != nil {
						return err
					}
					if d := c.Duration("wait"); c.Bool("start") && d > 0 {
						// Start is idempotent: this only waits for the node
						// to report the instance running.
						done := waiting(c.App.ErrWriter, "starting "+name)
						in, err = cl.SetInstanceState(c.Context, name, "start", d)
						done()
						if err != nil {
							return fmt.Errorf("instance %s created, but: %w", name, err)
						}
					}
					return show(c, in, func(w io.Writer) {
						fmt.Fprintf(w, "created instance %s on %s: %d vCPUs, %d MiB, disk %s, address %s\n", in.Name, in.Node, in.VCPUs, in.MemoryMiB, in.Volume, in.IP)
					})
				},
			},
			{
				Name:      "limit",
				Usage:     "cap an instance's disk I/O at the storage node, running or not (0 removes a cap)",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{iopsFlag, bandwidthFlag, outputFlag},
				Action: withName("NAME", func(c *cli.Context, cl *controllerapi.Client, name string) error {
					lim, err := limitFlags(c)
					if err != nil {
						return err
					}
					in, err := cl.LimitInstance(c.Context, name, lim)
					if err != nil {
						return err
					}
					return show(c, in, func(w io.Writer) {
						fmt.Fprintf(w, "instance %s: disk capped at %s\n", in.Name, limitText(in.IOPS, in.BPS))
					})
				}),
			},
			{Name: "start", Usage: "start an instance", ArgsUsage: "NAME", Flags: []cli.Flag{waitFlag, outputFlag}, Action: state("start")},
			{Name: "stop", Usage: "stop an instance (graceful, then forced after the node's timeout)", ArgsUsage: "NAME", Flags: []cli.Flag{waitFlag, outputFlag}, Action: state("stop")},
			{
				Name:      "migrate",
				Usage:     "live-migrate an instance to another hardware node",
				ArgsUsage: "NAME",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "to", Usage: "destination node (default: the scheduler picks)"},
					outputFlag,
				},
				Action: withName("NAME", func(c *cli.Context, cl *controllerapi.Client, name string) error {
					done := waiting(c.App.ErrWriter, "migrating "+name)
					r, err := cl.MigrateInstance(c.Context, name, c.String("to"))
					done()
					if err != nil {
						return err
					}
					return show(c, r, func(w io.Writer) {
						fmt.Fprintf(w, "migrated %s from %s to %s in %.2f s (downtime %.0f ms)\n", r.Instance, r.From, r.To, r.WallMS/1000, r.DowntimeMS)
					})
				}),
			},
			{
				Name:      "delete",
				Aliases:   []string{"rm"},
				Usage:     "destroy an instance and delete its disk",
				ArgsUsage: "NAME",
				Action: withName("NAME", func(c *cli.Context, cl *controllerapi.Client, name string) error {
					in, err := cl.DeleteInstance(c.Context, name)
					if err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "deleted instance %s (was on %s, disk %s)\n", in.Name, in.Node, in.Volume)
					return nil
				}),
			},
			{
				Name:    "list",
				Aliases: []string{"ls"},
				Usage:   "list instances",
				Flags:   []cli.Flag{outputFlag},
				Action: withClient(func(c *cli.Context, cl *controllerapi.Client) error {
					ins, err := cl.Instances(c.Context)
					if err != nil {
						return err
					}
					return show(c, ins, func(w io.Writer) { instanceTable(w, ins) })
				}),
			},
			{
				Name:      "show",
				Usage:     "show one instance",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{outputFlag},
				Action: withName("NAME", func(c *cli.Context, cl *controllerapi.Client, name string) error {
					in, err := cl.Instance(c.Context, name)
					if err != nil {
						return err
					}
					return show(c, in, func(w io.Writer) { instanceDetail(w, in) })
				}),
			},
			{
				Name:      "console",
				Usage:     "print the end of an instance's serial console log, fetched from its node (the agent keeps it with --serial-dir)",
				ArgsUsage: "NAME",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing what the guest writes (Ctrl-C ends)"},
					&cli.IntFlag{Name: "bytes", Value: 16 << 10, Usage: "how much of the log's end to print first"},
				},
				Action: withName("NAME", func(c *cli.Context, cl *controllerapi.Client, name string) error {
					return console(c.Context, cl, c.App.Writer, name, c.Int("bytes"), c.Bool("follow"), time.Second)
				}),
			},
		},
	}
}

// console prints the end of an instance's console log and, following,
// what is added to it, asking every interval. A log that shrinks (the
// instance moved to another node, whose log is its own) is printed from
// its end again.
func console(ctx context.Context, cl *controllerapi.Client, w io.Writer, name string, first int, follow bool, interval time.Duration) error {
	t, err := cl.Console(ctx, name, -1, first)
	if err != nil {
		return err
	}
	if _, err := w.Write(t.Data); err != nil || !follow {
		return err
	}
	next, node := t.Offset+int64(len(t.Data)), t.Node
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
		from := next
		t, err := cl.Console(ctx, name, from, 256<<10)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			return err
		case t.Node != node || t.Size < from:
			fmt.Fprintf(w, "\n--- %s's console on %s ---\n", name, t.Node)
			if t, err = cl.Console(ctx, name, -1, first); err != nil {
				return err
			}
			node = t.Node
		}
		if _, err := w.Write(t.Data); err != nil {
			return err
		}
		next = t.Offset + int64(len(t.Data))
	}
}

// withName is the shape of most commands: one NAME argument and a client.
func withName(what string, fn func(c *cli.Context, cl *controllerapi.Client, name string) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		name, err := oneArg(c, what)
		if err != nil {
			return err
		}
		cl, err := client(c)
		if err != nil {
			return err
		}
		return fn(c, cl, name)
	}
}

// withClient is a command without arguments that needs a client.
func withClient(fn func(c *cli.Context, cl *controllerapi.Client) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		cl, err := client(c)
		if err != nil {
			return err
		}
		return fn(c, cl)
	}
}
