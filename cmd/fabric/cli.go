package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/urfave/cli/v2"
	"github.com/xrash/smetrics"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/internal/cliargs"
)

// defaultConfigPaths are searched in order when neither --config nor
// FABRIC_CONFIG names the client configuration.
func defaultConfigPaths() []string {
	var ps []string
	if h, err := os.UserHomeDir(); err == nil {
		ps = append(ps, filepath.Join(h, ".config", "fabric", "client.json"))
	}
	// The last is where the packaged controller writes it.
	return append(ps, "/etc/fabric/client.json", "/var/lib/fabric/client.json", "/var/lib/fabric/controller/client.json")
}

// clientConfig mirrors controller.ClientConfig; the CLI does not import the
// controller's internals.
type clientConfig struct {
	Controller string `json:"controller"`
	CAFile     string `json:"ca_file"`
	TokenFile  string `json:"token_file"`
}

// run is the whole CLI: main only wires the process to it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr)
	if err := app.RunContext(ctx, cliargs.FlagsFirst(app, args)); err != nil {
		var ae *controllerapi.APIError
		if errors.As(err, &ae) {
			fmt.Fprintf(stderr, "fabric: %s\n", ae.Message)
		} else {
			fmt.Fprintf(stderr, "fabric: %v\n", err)
		}
		return 1
	}
	return 0
}

// version is set at build time (make build: -ldflags -X main.version=...).
var version = "dev"

var outputFlag = &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "output format: table, json (indented) or jsonl (one object a line; a list gives a line per item)"}

func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:                 "fabric",
		Usage:                "drive a diskless cloud fabric",
		Writer:               stdout,
		ErrWriter:            stderr,
		Version:              version,
		EnableBashCompletion: true,
		HideHelpCommand:      true,
		Suggest:              true,
		// Without a command: the help. An unknown one: say so, with the
		// nearest command (urfave/cli's default prints "No help topic").
		Action: func(c *cli.Context) error {
			name := c.Args().First()
			if name == "" || name == "help" {
				return cli.ShowAppHelp(c)
			}
			if near := nearest(c.App.Commands, name); near != "" {
				return fmt.Errorf("%q is not a fabric command; did you mean %q? See `fabric --help`", name, near)
			}
			return fmt.Errorf("%q is not a fabric command; see `fabric --help` for the list", name)
		},
		ExitErrHandler: func(*cli.Context, error) {}, // run prints errors and picks the exit code
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", EnvVars: []string{"FABRIC_CONFIG"}, Usage: "client configuration file (written by the controller as client.json in its state directory)"},
			&cli.StringFlag{Name: "controller", EnvVars: []string{"FABRIC_CONTROLLER"}, Usage: "controller API URL, e.g. https://10.233.0.1:8443"},
			&cli.StringFlag{Name: "token", EnvVars: []string{"FABRIC_TOKEN"}, Usage: "admin credential"},
			&cli.StringFlag{Name: "ca", EnvVars: []string{"FABRIC_CA"}, Usage: "fabric CA certificate file"},
		},
		Commands: []*cli.Command{
			nodeCommand(),
			imageCommand(),
			instanceCommand(),
			eventsCommand(),
			tokenCommand(),
			statusCommand(),
			storageCommand(),
			volumeCommand(),
			aoeCommand(),
			completionCommand(),
			{
				Name:  "version",
				Usage: "print the version of this CLI",
				Action: func(c *cli.Context) error {
					fmt.Fprintf(c.App.Writer, "fabric %s\n", version)
					return nil
				},
			},
		},
	}
	completeNames(app.Commands, "")
	return app
}

// client builds an API client from flags, environment and config file, in
// that order of precedence.
func client(c *cli.Context) (*controllerapi.Client, error) {
	var cc clientConfig
	path := c.String("config")
	paths := []string{path}
	if path == "" {
		paths = defaultConfigPaths()
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			if path != "" {
				return nil, fmt.Errorf("reading client config: %w", err)
			}
			continue
		}
		if err := json.Unmarshal(b, &cc); err != nil {
			return nil, fmt.Errorf("client config %s: %w", p, err)
		}
		cc.CAFile, cc.TokenFile = beside(p, cc.CAFile), beside(p, cc.TokenFile)
		break
	}
	if v := c.String("controller"); v != "" {
		cc.Controller = v
	}
	if v := c.String("ca"); v != "" {
		cc.CAFile = v
	}
	token := c.String("token")
	if token == "" && cc.TokenFile != "" {
		b, err := os.ReadFile(cc.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("reading admin credential: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	if cc.Controller == "" {
		return nil, errors.New("no controller configured: pass --controller URL, set FABRIC_CONTROLLER, or point --config/FABRIC_CONFIG at the controller's client.json")
	}
	if err := checkControllerURL(cc.Controller); err != nil {
		return nil, err
	}
	var caPEM []byte
	if cc.CAFile != "" {
		b, err := os.ReadFile(cc.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading fabric CA: %w", err)
		}
		caPEM = b
	}
	return controllerapi.NewClient(strings.TrimRight(cc.Controller, "/"), token, caPEM)
}

// beside resolves a file named in the client config at cfg: a relative
// path is from the config's directory, and a file that is not where the
// config says (the config was copied to a workstation with the files it
// names) is looked for next to the config.
func beside(cfg, name string) string {
	if name == "" {
		return ""
	}
	dir := filepath.Dir(cfg)
	if !filepath.IsAbs(name) {
		name = filepath.Join(dir, name)
	}
	if _, err := os.Stat(name); err != nil {
		if alt := filepath.Join(dir, filepath.Base(name)); alt != name {
			if _, err := os.Stat(alt); err == nil {
				return alt
			}
		}
	}
	return name
}

// checkControllerURL refuses what would fail later with a less helpful
// message: no scheme, plain HTTP, no host.
func checkControllerURL(s string) error {
	u, err := url.Parse(s)
	switch {
	case err != nil || u.Scheme == "" || u.Host == "" && u.Opaque != "":
		return fmt.Errorf("controller URL %q: write it as https://HOST:PORT (e.g. https://10.233.0.1:8443)", s)
	case u.Scheme == "http":
		return fmt.Errorf("controller URL %q uses http; the controller serves HTTPS only: use https://%s", s, u.Host)
	case u.Scheme != "https":
		return fmt.Errorf("controller URL %q: scheme %q is not https; write https://HOST:PORT", s, u.Scheme)
	case u.Host == "":
		return fmt.Errorf("controller URL %q has no host; write https://HOST:PORT", s)
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printJSONL writes v as JSON lines: each item of a slice on a line of
// its own (nothing for an empty one), anything else as one line.
func printJSONL(w io.Writer, v any) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	enc := json.NewEncoder(bw)
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.Slice {
		for i := range rv.Len() {
			if err := enc.Encode(rv.Index(i).Interface()); err != nil {
				return err
			}
		}
	} else if err := enc.Encode(v); err != nil {
		return err
	}
	return bw.Flush()
}

// jsonLines copies a JSON array from r to w as JSON lines, each item
// compacted as it came.
func jsonLines(w io.Writer, r io.Reader) error {
	dec := json.NewDecoder(r)
	if _, err := dec.Token(); err != nil { // [
		return err
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	var line bytes.Buffer
	for dec.More() {
		var item json.RawMessage
		if err := dec.Decode(&item); err != nil {
			return err
		}
		line.Reset()
		if err := json.Compact(&line, item); err != nil {
			return err
		}
		line.WriteByte('\n')
		if _, err := bw.Write(line.Bytes()); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// output is what -o asks for.
type output int

const (
	outTable output = iota
	outJSON
	outJSONL
)

func outputOf(c *cli.Context) (output, error) {
	switch o := c.String("output"); o {
	case "json":
		return outJSON, nil
	case "jsonl":
		return outJSONL, nil
	case "table", "":
		return outTable, nil
	default:
		return outTable, fmt.Errorf("unknown output format %q: use table, json or jsonl", o)
	}
}

// wantJSON reports whether -o asks for JSON of either shape.
func wantJSON(c *cli.Context) (bool, error) {
	o, err := outputOf(c)
	return o != outTable, err
}

// emit prints v as -o asks for JSON (call it when wantJSON said so).
func emit(c *cli.Context, v any) error {
	if o, _ := outputOf(c); o == outJSONL {
		return printJSONL(c.App.Writer, v)
	}
	return printJSON(c.App.Writer, v)
}

var nodeColumns = []string{"NAME", "ROLE", "MAC", "IP", "AGENT", "REGISTERED"}

func nodeCells(n controllerapi.NodeSummary) []string {
	return []string{n.Name, n.Role, n.MAC, n.IP, agentSummary(n.Agent), n.Created.Local().Format(time.DateTime)}
}

func agentSummary(st *controllerapi.AgentSummary) string {
	switch {
	case st == nil:
		return "-"
	case st.Fenced && st.Alive:
		return fmt.Sprintf("FENCED, agent back (%d instances): fabric node unfence", st.Instances)
	case st.Fenced:
		return "FENCED (" + st.FenceReason + ")"
	case st.LastSeen.IsZero():
		return "not enrolled/not reporting"
	case !st.Alive && st.Health != "":
		return strings.ToUpper(st.Health) + " (" + st.HealthWhy + ")"
	case st.Alive && st.Drained:
		return fmt.Sprintf("alive, drained (%d instances)", st.Instances)
	case st.Alive:
		return fmt.Sprintf("alive (%d instances)", st.Instances)
	default:
		return "DEAD since " + st.LastSeen.Local().Format(time.TimeOnly)
	}
}

func diskMode(m string) string {
	switch m {
	case "kernel":
		return "kernel aoe driver (/dev/etherd)"
	case "nbd":
		return "agent's AoE initiator behind NBD on loopback (no kernel aoe driver)"
	}
	return m
}

func nodeCommand() *cli.Command {
	return &cli.Command{
		Name:  "node",
		Usage: "register, list, show, update and remove nodes",
		Subcommands: []*cli.Command{
			{
				Name:      "register",
				Usage:     "register a machine by its MAC address",
				UsageText: "fabric node register --mac 52:54:00:12:34:56 --role hwnode --name hn1 [--ip 10.233.0.20]",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "mac", Required: true, Usage: "the node's boot NIC MAC address"},
					&cli.StringFlag{Name: "role", Required: true, Usage: "hwnode or storage"},
					&cli.StringFlag{Name: "name", Required: true, Usage: "a DNS-safe name"},
					&cli.StringFlag{Name: "ip", Usage: "fixed address (default: the next free one in the boot subnet)"},
					outputFlag,
				},
				Action: withClient(func(c *cli.Context, cl *controllerapi.Client) error {
					n, err := cl.RegisterNode(c.Context, controllerapi.RegisterRequest{
						Name: c.String("name"), MAC: c.String("mac"), Role: c.String("role"), IP: c.String("ip")})
					if err != nil {
						return err
					}
					if j, err := wantJSON(c); err != nil || j {
						if err != nil {
							return err
						}
						return emit(c, n)
					}
					fmt.Fprintf(c.App.Writer, "registered %s %s (%s) at %s\n", n.Role, n.Name, n.MAC, n.IP)
					return nil
				}),
			},
			{
				Name:    "list",
				Aliases: []string{"ls"},
				Usage:   "list registered nodes",
				Flags:   []cli.Flag{outputFlag},
				Action: func(c *cli.Context) error {
					j, err := wantJSON(c)
					if err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					// Printed as read: with 10,000 nodes, holding the
					// list whole (and, for JSON, decoding and encoding
					// it again) took most of the command's time.
					if o, _ := outputOf(c); o == outJSONL {
						var buf bytes.Buffer
						if err := cl.NodesJSON(c.Context, &buf); err != nil {
							return err
						}
						return jsonLines(c.App.Writer, &buf)
					}
					if j {
						bw := bufio.NewWriterSize(c.App.Writer, 64<<10)
						if err := cl.NodesJSON(c.Context, bw); err != nil {
							return err
						}
						return bw.Flush()
					}
					var t rowTable
					t.add(nodeColumns...)
					if err := cl.EachNodeSummary(c.Context, func(s controllerapi.NodeSummary) error {
						t.add(nodeCells(s)...)
						return nil
					}); err != nil {
						return err
					}
					return t.write(c.App.Writer)
				},
			},
			{
				Name:      "show",
				Usage:     "show one node",
				ArgsUsage: "NAME|MAC",
				Flags:     []cli.Flag{outputFlag},
				Action: func(c *cli.Context) error {
					name, err := oneArg(c, "NAME or MAC")
					if err != nil {
						return err
					}
					j, err := wantJSON(c)
					if err != nil {
						return err
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					n, err := cl.Node(c.Context, name)
					if err != nil {
						return err
					}
					if j {
						return emit(c, n)
					}
					tw := newTable(c.App.Writer)
					fmt.Fprintf(tw, "name:\t%s\nrole:\t%s\nmac:\t%s\nip:\t%s\nregistered:\t%s\nupdated:\t%s\n",
						n.Name, n.Role, n.MAC, n.IP, n.Created.Local().Format(time.RFC3339), n.Updated.Local().Format(time.RFC3339))
					if n.RootVolume != "" {
						fmt.Fprintf(tw, "root volume:\t%s\n", n.RootVolume)
					}
					if st := n.Status; st != nil {
						fmt.Fprintf(tw, "agent:\t%s\n", agentSummary(n.Summary().Agent))
						if !st.LastSeen.IsZero() {
							cp := st.Capacity
							fmt.Fprintf(tw, "last heartbeat:\t%s\n", st.LastSeen.Local().Format(time.RFC3339Nano))
							emu := ""
							if cp.Emulator != "" {
								emu = ", " + cp.Emulator
							}
							fmt.Fprintf(tw, "hypervisor:\t%s (libvirt %s%s), migration URI %s\n", cp.Hypervisor, cp.Libvirt, emu, cp.MigrationURI)
							if cp.Warning != "" {
								fmt.Fprintf(tw, "warning:\t%s\n", cp.Warning)
							}
							fmt.Fprintf(tw, "guest disks:\t%s\n", diskMode(cp.Disk))
							fmt.Fprintf(tw, "capacity:\t%d vCPUs, %d MiB; used %d vCPUs, %d MiB\n", cp.VCPUs, cp.MemoryMiB, st.UsedVCPUs, st.UsedMiB)
							fmt.Fprintf(tw, "instances:\t%s\n", strings.Join(st.Instances, " "))
						}
					}
					if n.Lease != nil {
						fmt.Fprintf(tw, "dhcp lease:\t%s, updated %s, expires %s\n", n.Lease.State,
							n.Lease.Updated.Local().Format(time.RFC3339), n.Lease.Expires.Local().Format(time.RFC3339))
					}
					return tw.Flush()
				},
			},
			{
				Name:      "update",
				Usage:     "change a node's name, role or address",
				ArgsUsage: "NAME|MAC",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "name", Usage: "new name"},
					&cli.StringFlag{Name: "role", Usage: "new role"},
					&cli.StringFlag{Name: "ip", Usage: "new address"},
					outputFlag,
				},
				Action: func(c *cli.Context) error {
					name, err := oneArg(c, "NAME or MAC")
					if err != nil {
						return err
					}
					var req controllerapi.UpdateRequest
					for _, f := range []struct {
						flag string
						dst  **string
					}{{"name", &req.Name}, {"role", &req.Role}, {"ip", &req.IP}} {
						if c.IsSet(f.flag) {
							v := c.String(f.flag)
							*f.dst = &v
						}
					}
					if req.Name == nil && req.Role == nil && req.IP == nil {
						return errors.New("nothing to update: give --name, --role or --ip")
					}
					cl, err := client(c)
					if err != nil {
						return err
					}
					n, err := cl.UpdateNode(c.Context, name, req)
					if err != nil {
						return err
					}
					if j, _ := wantJSON(c); j {
						return emit(c, n)
					}
					fmt.Fprintf(c.App.Writer, "updated %s: %s %s %s\n", n.Name, n.Role, n.MAC, n.IP)
					return nil
				},
			},
			{
				Name:      "drain",
				Usage:     "take no new instances on a hardware node and move its instances away (running ones live)",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{outputFlag},
				Action: withName("NAME", func(c *cli.Context, cl *controllerapi.Client, name string) error {
					done := waiting(c.App.ErrWriter, "draining "+name)
					rs, err := cl.DrainNode(c.Context, name)
					done()
					if err != nil {
						return err
					}
					failed := 0
					err = show(c, rs, func(w io.Writer) {
						fmt.Fprintf(w, "%s drained\n", name)
						for _, r := range rs {
							switch {
							case r.Error != "":
								failed++
								fmt.Fprintf(w, "  %s:\tstays: %s\n", r.Instance, r.Error)
							case r.Live:
								fmt.Fprintf(w, "  %s:\tlive-migrated to %s (downtime %.0f ms)\n", r.Instance, r.To, r.DowntimeMS)
							default:
								fmt.Fprintf(w, "  %s:\tstopped, reassigned to %s\n", r.Instance, r.To)
							}
						}
					})
					if err == nil && failed > 0 {
						err = fmt.Errorf("%d instances could not leave %s", failed, name)
					}
					return err
				}),
			},
			{
				Name:      "undrain",
				Usage:     "let a drained hardware node take instances again",
				ArgsUsage: "NAME",
				Action: withName("NAME", func(c *cli.Context, cl *controllerapi.Client, name string) error {
					if err := cl.UndrainNode(c.Context, name); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "%s takes instances again\n", name)
					return nil
				}),
			},
			{
				Name:      "fence",
				Usage:     "cut a hardware node off from every disk (the storage nodes confirm) and restart its instances elsewhere",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{&cli.StringFlag{Name: "reason", Usage: "recorded in the event log"}},
				Action: withName("NAME", func(c *cli.Context, cl *controllerapi.Client, name string) error {
					r, err := cl.FenceNode(c.Context, name, c.String("reason"))
					if err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "%s fenced, confirmed by %s; its instances restart elsewhere (`fabric node unfence %s` after repair)\n",
						r.Node, strings.Join(r.Confirmed, ", "), r.Node)
					return nil
				}),
			},
			{
				Name:      "reimage",
				Usage:     "give a PXE-booted hardware node a fresh clone of the root image at its next boot (its old root is kept until --confirm)",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{&cli.BoolFlag{Name: "confirm", Usage: "delete the roots earlier reimages kept"}},
				Action: withName("NAME", func(c *cli.Context, cl *controllerapi.Client, name string) error {
					st, err := cl.ReimageNode(c.Context, name, c.Bool("confirm"))
					if err != nil {
						return err
					}
					w := c.App.Writer
					if c.Bool("confirm") {
						fmt.Fprintf(w, "%s: earlier roots deleted; root %s\n", st.Node, st.Volume)
						return nil
					}
					fmt.Fprintf(w, "%s gets a fresh clone of image %s at its next PXE boot; its root %s is kept until `fabric node reimage --confirm %s`.\n", st.Node, st.Image, st.Volume, st.Node)
					fmt.Fprintf(w, "Reboot it to reimage it now (drain it first if it runs instances: `fabric node drain %s`).\n", st.Node)
					return nil
				}),
			},
			{
				Name:      "unfence",
				Usage:     "let a repaired hardware node reach its disks and take instances again",
				ArgsUsage: "NAME",
				Action: withName("NAME", func(c *cli.Context, cl *controllerapi.Client, name string) error {
					if err := cl.UnfenceNode(c.Context, name); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "%s unfenced\n", name)
					return nil
				}),
			},
			{
				Name:      "token",
				Usage:     "issue a node a new one-time enrollment token (for fabricd hwnode --token); the previous one you were given stops working",
				ArgsUsage: "NAME|MAC",
				Flags:     []cli.Flag{&cli.DurationFlag{Name: "ttl", Value: time.Hour, Usage: "how long the token stays usable"}},
				Action: withName("NAME or MAC", func(c *cli.Context, cl *controllerapi.Client, name string) error {
					tok, err := cl.NodeToken(c.Context, name, c.Duration("ttl"))
					if err != nil {
						return err
					}
					fmt.Fprintln(c.App.Writer, tok)
					return nil
				}),
			},
			{
				Name:      "remove",
				Aliases:   []string{"rm"},
				Usage:     "remove a node from the registry and revoke its certificate (its agent is refused from its next call)",
				ArgsUsage: "NAME|MAC",
				Flags:     []cli.Flag{&cli.BoolFlag{Name: "force", Usage: "also delete the instances the node holds (stopping them first)"}},
				Action: withName("NAME or MAC", func(c *cli.Context, cl *controllerapi.Client, name string) error {
					if err := cl.RemoveNode(c.Context, name, c.Bool("force")); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "removed %s; its certificate is revoked\n", name)
					return nil
				}),
			},
			{
				Name:      "reset",
				Usage:     "revoke a node's certificate so that it may enroll again (a reinstalled node; a stolen identity)",
				ArgsUsage: "NAME|MAC",
				Action: withName("NAME or MAC", func(c *cli.Context, cl *controllerapi.Client, name string) error {
					if err := cl.ResetNode(c.Context, name); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "%s reset: its certificate is revoked; it enrolls again with a new token (fabric node token %s) or at its next PXE boot\n", name, name)
					return nil
				}),
			},
		},
	}
}

// nearest returns the command whose name is within two edits of name, or
// "".
func nearest(cmds []*cli.Command, name string) string {
	best, bestD := "", 3
	for _, c := range cmds {
		for _, n := range c.Names() {
			if d := smetrics.WagnerFischer(n, name, 1, 1, 1); d < bestD {
				best, bestD = c.Name, d
			}
		}
	}
	return best
}

// eventWho says who caused an event and from where, when known.
func eventWho(ev controllerapi.Event) string {
	switch {
	case ev.Actor != "" && ev.Source != "":
		return fmt.Sprintf(" [%s from %s]", ev.Actor, ev.Source)
	case ev.Actor != "":
		return " [" + ev.Actor + "]"
	}
	return ""
}

func oneArg(c *cli.Context, what string) (string, error) {
	if c.NArg() != 1 {
		return "", fmt.Errorf("%s: expected one argument, %s", c.Command.FullName(), what)
	}
	return c.Args().First(), nil
}

func eventsCommand() *cli.Command {
	return &cli.Command{
		Name:  "events",
		Usage: "show the fabric's event log",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing new events"},
			&cli.Uint64Flag{Name: "since", Usage: "first sequence number to show"},
			outputFlag,
		},
		Action: func(c *cli.Context) error {
			o, err := outputOf(c)
			if err != nil {
				return err
			}
			cl, err := client(c)
			if err != nil {
				return err
			}
			since := c.Uint64("since")
			follow := c.Bool("follow")
			// Buffered, flushed after each page: a long log leaves in large
			// writes, and --follow still shows each event as it comes.
			w := bufio.NewWriterSize(c.App.Writer, 64<<10)
			defer w.Flush()
			// -o json: each event indented, one after another (a stream
			// that jq reads); -o jsonl: an event a line.
			enc := json.NewEncoder(w)
			if o == outJSON {
				enc.SetIndent("", "  ")
			}
			for {
				wait := time.Duration(0)
				if follow {
					wait = 30 * time.Second
				}
				r, err := cl.Events(c.Context, since, wait)
				if err != nil {
					if c.Context.Err() != nil {
						return nil // Ctrl-C while following
					}
					return err
				}
				for _, ev := range r.Events {
					if o != outTable {
						if err := enc.Encode(ev); err != nil {
							return err
						}
						continue
					}
					fmt.Fprintf(w, "%6d  %s  %-22s %s%s\n", ev.Seq, ev.Time.Local().Format("2006-01-02 15:04:05.000"), ev.Type, ev.Message, eventWho(ev))
				}
				if err := w.Flush(); err != nil {
					return err
				}
				since = r.Next
				if !follow && len(r.Events) < 1000 { // the last page
					return nil
				}
			}
		},
	}
}

func completionCommand() *cli.Command {
	scripts := map[string]string{"bash": bashCompletion, "zsh": zshCompletion, "fish": fishCompletion}
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script: source <(fabric completion bash), source <(fabric completion zsh), fabric completion fish | source",
		ArgsUsage: "bash|zsh|fish",
		Action: func(c *cli.Context) error {
			sh := c.Args().First()
			if sh == "" {
				sh = "bash"
			}
			script, ok := scripts[sh]
			if !ok {
				return fmt.Errorf("no completion for %q: bash, zsh or fish", sh)
			}
			_, err := io.WriteString(c.App.Writer, script)
			return err
		},
	}
}

// tableWriter is a tabwriter over a buffer: a table of 10,000 rows leaves
// in a few large writes instead of a system call per line.
type tableWriter struct {
	*tabwriter.Writer
	buf *bufio.Writer
}

// rowTable lays out rows as newTable does (each column as wide as its
// widest cell, two spaces after it, the last column as it is) from cells
// kept per row: tabwriter keeps the whole table in one buffer that it
// grows by copying, a quarter of the time of listing 10,000 nodes.
type rowTable struct {
	rows   [][]string
	widths []int
}

func (t *rowTable) add(cells ...string) {
	for i := range len(cells) - 1 {
		if i == len(t.widths) {
			t.widths = append(t.widths, 0)
		}
		t.widths[i] = max(t.widths[i], utf8.RuneCountInString(cells[i]))
	}
	t.rows = append(t.rows, cells)
}

func (t *rowTable) write(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	pad := strings.Repeat(" ", slices.Max(append([]int{0}, t.widths...))+2)
	for _, r := range t.rows {
		for i, c := range r {
			_, _ = bw.WriteString(c)
			if i < len(r)-1 {
				_, _ = bw.WriteString(pad[:t.widths[i]+2-utf8.RuneCountInString(c)])
			}
		}
		_ = bw.WriteByte('\n')
	}
	return bw.Flush()
}

func newTable(w io.Writer) *tableWriter {
	b := bufio.NewWriterSize(w, 64<<10)
	return &tableWriter{Writer: tabwriter.NewWriter(b, 0, 4, 2, ' ', 0), buf: b}
}

// Flush writes the table out.
func (t *tableWriter) Flush() error {
	if err := t.Writer.Flush(); err != nil {
		return err
	}
	return t.buf.Flush()
}
