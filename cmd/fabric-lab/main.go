// Command fabric-lab runs the whole fabric on one machine, in network
// namespaces (package internal/lab): `demo` tells the story end to end and
// tears everything down; `up` and `down` keep a lab running for exploring
// by hand; `fabric ARGS` runs the fabric CLI against it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/internal/lab"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	exe, _ := os.Executable()
	dirFlags := []cli.Flag{
		&cli.StringFlag{Name: "dir", Value: "work/lab", Usage: "lab work directory (state, logs, lab.json)"},
		&cli.StringFlag{Name: "bin", Value: filepath.Dir(exe), Usage: "directory with fabricd and fabric"},
		&cli.StringFlag{Name: "images", Value: "work/images", Usage: "scripts/images.sh output"},
	}
	app := &cli.App{
		Name:  "fabric-lab",
		Usage: "the whole fabric on one machine, in network namespaces",
		Commands: []*cli.Command{
			{Name: "demo", Usage: "bring the lab up, tell the story, tear it down", Flags: dirFlags, Action: demo},
			{Name: "up", Usage: "bring the lab up and leave it running", Flags: dirFlags, Action: func(c *cli.Context) error {
				l, err := up(c, os.Stdout, nil)
				if err != nil {
					return err
				}
				fmt.Printf(`
The lab is up (%s). Try:
  bin/fabric-lab fabric node list
  bin/fabric-lab fabric image import tiny work/images/instance-template.img
  bin/fabric-lab fabric instance create web --image tiny --memory 128MiB --start
  bin/fabric-lab fabric instance migrate web
or by hand, in the client namespace:
  ip netns exec %s bin/fabric --config %s node list
Logs: %s/*.log. Tear down: make demo-down (bin/fabric-lab down)
`, l.Dir, l.ClientNS, l.ClientConfig(), l.Dir)
				return nil
			}},
			{Name: "down", Usage: "tear the lab down", Flags: dirFlags[:1], Action: func(c *cli.Context) error {
				l, err := lab.Load(c.String("dir"), os.Stdout)
				if errors.Is(err, os.ErrNotExist) {
					fmt.Println("fabric-lab: no lab running in", c.String("dir"))
					return nil
				}
				if err != nil {
					return err
				}
				return l.Down()
			}},
			{Name: "watchdog", Usage: "stand-in hardware watchdog, run inside a hardware node's namespace by the lab: resets the node (kills its processes, cuts its link) when not fed",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "file", Required: true, Usage: "the file the agent feeds (--watchdog)"},
					&cli.DurationFlag{Name: "timeout", Value: 10 * time.Second},
					&cli.StringFlag{Name: "iface", Value: "eth0", Usage: "the node's link, taken down at the reset"},
				},
				Action: func(c *cli.Context) error {
					return lab.StandInWatchdog(c.String("file"), c.Duration("timeout"), c.String("iface"))
				}},
			{Name: "fabric", Usage: "run the fabric CLI against the running lab (its directory: $FABRIC_LAB_DIR, default work/lab)", SkipFlagParsing: true,
				Action: func(c *cli.Context) error {
					dir := os.Getenv("FABRIC_LAB_DIR")
					if dir == "" {
						dir = "work/lab"
					}
					l, err := lab.Load(dir, os.Stdout)
					if err != nil {
						return fmt.Errorf("no lab running in %s (make demo-up): %w", dir, err)
					}
					out, err := l.Fabric(c.Args().Slice()...)
					fmt.Print(out)
					if err != nil {
						os.Exit(1)
					}
					return nil
				}},
		},
	}
	if err := app.RunContext(ctx, os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "fabric-lab: %v\n", err)
		stop()
		os.Exit(1)
	}
}

func up(c *cli.Context, log, trace io.Writer) (*lab.Lab, error) {
	images, err := filepath.Abs(c.String("images"))
	if err != nil {
		return nil, err
	}
	bin, err := filepath.Abs(c.String("bin"))
	if err != nil {
		return nil, err
	}
	root := filepath.Join(images, "hwnode-debian.img")
	for _, f := range []string{filepath.Join(bin, "fabricd"), filepath.Join(bin, "fabric"), filepath.Join(images, "instance-template.img"), root} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("%s missing: run `make build images`", f)
		}
	}
	return lab.Up(lab.Config{Dir: c.String("dir"), Bin: bin, Images: images, Prefix: "fdemo", Log: log, Boot: true, Trace: trace, StoragePair: true,
		RootImageFile: root, AgentTimeout: "10s"})
}

// story is the demo's record: one line per step for the summary.
type story struct {
	t0    time.Time
	steps []stepResult
	out   io.Writer
}

type stepResult struct {
	name   string
	ok     bool
	took   time.Duration
	detail string
}

func (s *story) step(name string, fn func() (string, error)) error {
	fmt.Fprintf(s.out, "\n=== [%5.1fs] %s\n", time.Since(s.t0).Seconds(), name)
	t := time.Now()
	detail, err := fn()
	r := stepResult{name: name, ok: err == nil, took: time.Since(t), detail: detail}
	if err != nil {
		r.detail = err.Error()
		fmt.Fprintf(s.out, "FAILED: %v\n", err)
	} else if detail != "" {
		fmt.Fprintf(s.out, "--> %s\n", detail)
	}
	s.steps = append(s.steps, r)
	return err
}

func (s *story) summary() bool {
	fmt.Fprintf(s.out, "\n=== summary (%.1fs in all)\n", time.Since(s.t0).Seconds())
	tw := tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tRESULT\tTIME\tDETAIL")
	ok := true
	for _, r := range s.steps {
		res := "ok"
		if !r.ok {
			res, ok = "FAILED", false
		}
		fmt.Fprintf(tw, "%s\t%s\t%.1fs\t%s\n", r.name, res, r.took.Seconds(), strings.ReplaceAll(r.detail, "\n", " "))
	}
	_ = tw.Flush()
	return ok
}

func demo(c *cli.Context) (err error) {
	s := &story{t0: time.Now(), out: os.Stdout}
	var l *lab.Lab
	defer func() {
		if l != nil {
			// A guest kernel that broke reboots (panic=-1): the story
			// would see only a lost ping or an empty HTTP reply.
			for _, c := range l.GuestCrashes() {
				fmt.Printf("\n=== a guest's kernel broke (%s):\n%s\n", c.Log, c.Excerpt)
				err = errors.Join(err, fmt.Errorf("a guest's kernel broke: %s", c.Log))
			}
			fmt.Println("\n=== tearing the lab down")
			if derr := l.Down(); derr != nil {
				err = errors.Join(err, derr)
			}
		}
		if !s.summary() && err == nil {
			err = errors.New("the demo failed")
		}
	}()
	ctx := c.Context
	stopped := func() error { return ctx.Err() }
	if err := s.step("0. the lab: switch, config node, storage nodes sn1 and sn2 (paired by the controller), hardware nodes hn1 and hn2 with libvirtd and agents, client", func() (string, error) {
		var err error
		l, err = up(c, os.Stdout, os.Stdout)
		if err != nil {
			return "", err
		}
		return "controller https://" + lab.ControllerIP + ":" + lab.APIPort + ", boot services on the lab switch", nil
	}); err != nil {
		return err
	}
	if err := stopped(); err != nil {
		return err
	}
	l.SetTrace(os.Stdout)
	if err := s.step("1. register a diskless machine by MAC; list the nodes", func() (string, error) {
		if _, err := l.Fabric("node", "register", "--name", "dl1", "--mac", "52:54:00:de:00:01", "--role", "hwnode"); err != nil {
			return "", err
		}
		if _, err := l.Fabric("node", "list"); err != nil {
			return "", err
		}
		return "hn1, hn2 (agents alive) and dl1 registered", nil
	}); err != nil {
		return err
	}
	if err := s.step("2. dl1 (QEMU, no disk) PXE-boots from the config node onto its clone of the Debian hardware-node image (AoE, storage pair); its agent enrolls and dl1 joins the fabric", func() (string, error) {
		v, stop, err := l.StartPXENode("dl1", "52:54:00:de:00:01", "52:54:00:de:01:01", lab.Memory(1536), lab.CPUs(2))
		if err != nil {
			return "", err
		}
		defer stop()
		seen := map[string]bool{}
		alive := func() bool {
			out, err := l.FabricQuiet("node", "show", "dl1", "-o", "json")
			var n controllerapi.Node
			return err == nil && json.Unmarshal([]byte(out), &n) == nil && n.Status != nil && n.Status.Alive
		}
		deadline := time.Now().Add(6 * time.Minute)
		for !alive() {
			for _, line := range v.Serial() {
				if (strings.Contains(line, "FABRIC-") || strings.Contains(line, "login:")) && !seen[line] {
					seen[line] = true
					fmt.Printf("    console %5.1fs: %s\n", v.Since().Seconds(), line)
				}
			}
			if time.Now().After(deadline) {
				s := v.Serial()
				return "", fmt.Errorf("dl1's agent did not enroll in 6 min; last console lines:\n%s", strings.Join(s[max(0, len(s)-15):], "\n"))
			}
			time.Sleep(time.Second)
		}
		joined := v.Since()
		_, _ = l.Fabric("node", "list")
		// The rest of the story runs on hn1 and hn2: dl1 takes no
		// instances and leaves (a guest inside it runs under software
		// emulation twice over; `make test` runs one there).
		_, _ = l.Fabric("node", "drain", "dl1")
		stop()
		_, _ = l.Fabric("node", "remove", "dl1")
		return fmt.Sprintf("power-on to agent enrolled and alive %.1f s; then drained, powered off and removed", joined.Seconds()), nil
	}); err != nil {
		return err
	}
	if err := stopped(); err != nil {
		return err
	}
	var ip string
	if err := s.step("3. import an image, create and start an instance, ping it", func() (string, error) {
		if _, err := l.Fabric("image", "import", "tiny", filepath.Join(l.Images, "instance-template.img")); err != nil {
			return "", err
		}
		t := time.Now()
		out, err := l.Fabric("instance", "create", "web", "--image", "tiny", "--vcpus", "1", "--memory", "128MiB", "--start", "-o", "json")
		if err != nil {
			return "", err
		}
		var in controllerapi.Instance
		if err := json.Unmarshal([]byte(out), &in); err != nil {
			return "", err
		}
		ip, _, _ = strings.Cut(in.IP, "/")
		deadline := time.Now().Add(90 * time.Second)
		for {
			if _, err := lab.In(l.ClientNS, "ping", "-c1", "-W1", ip); err == nil {
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return "", fmt.Errorf("instance web at %s never answered ping", ip)
			}
		}
		booted := time.Since(t)
		out, err = lab.In(l.ClientNS, "ping", "-c3", "-i0.2", ip)
		fmt.Printf("$ ping -c3 %s\n%s", ip, out)
		if err != nil {
			return "", err
		}
		_, _ = l.Fabric("instance", "list")
		return fmt.Sprintf("web on %s at %s answers ping %.1fs after create", in.Node, ip, booted.Seconds()), nil
	}); err != nil {
		return err
	}
	for i := 0; i < 2; i++ {
		if err := stopped(); err != nil {
			return err
		}
		if err := s.step(fmt.Sprintf("4.%d live-migrate web while the client pings it (10 Hz and 1 Hz) and fetches HTTP", i+1), func() (string, error) {
			p, err := l.StartProber(ip, filepath.Join(l.Dir, fmt.Sprintf("demo-migration-%d", i+1)))
			if err != nil {
				return "", err
			}
			time.Sleep(time.Second)
			out, merr := l.Fabric("instance", "migrate", "web", "-o", "json")
			time.Sleep(time.Second)
			fast, slow, h, perr := p.Stop()
			if merr != nil {
				return "", merr
			}
			if perr != nil {
				return "", perr
			}
			var r controllerapi.MigrateResult
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				return "", err
			}
			d := fmt.Sprintf("%s -> %s in %.1fs, downtime %.0f ms; pings 10 Hz: %d sent, %d lost, longest gap %d ms; 1 Hz: %d sent, %d lost; HTTP: %d ok, %d failed",
				r.From, r.To, r.WallMS/1000, r.DowntimeMS, fast.Sent, fast.Lost(), fast.MaxGap.Milliseconds(), slow.Sent, slow.Lost(), h.OK, h.Failed)
			if h.Failed > 0 || fast.MaxGap >= 500*time.Millisecond {
				return "", errors.New(d)
			}
			return d, nil
		}); err != nil {
			return err
		}
	}
	if err := stopped(); err != nil {
		return err
	}
	if err := storageFailures(s, l, ip); err != nil {
		return err
	}
	_ = s.step("6. the event log", func() (string, error) {
		_, err := l.Fabric("events")
		return "", err
	})
	return nil
}

// storageFailures is the storage part of the story: web's disk is on the
// pair sn1+sn2; while the guest runs a write-verify loop on it and the
// client pings it and fetches HTTP, the owner is drained (a planned
// shutdown) and brought back through a resync, then the other node is
// killed and restarted. Each step reports the longest write-verify pass
// the guest saw.
func storageFailures(s *story, l *lab.Lab, ip string) error {
	var healthy time.Duration
	if err := s.step("5.0 web's disk is on the pair: start a write-verify loop in the guest (write, fsync, drop caches, read back)", func() (string, error) {
		if _, err := l.Fabric("volume", "list"); err != nil {
			return "", err
		}
		if _, err := l.GuestIO(ip, "start"); err != nil {
			return "", err
		}
		time.Sleep(3 * time.Second)
		g, err := l.GuestIO(ip, "")
		if err != nil {
			return "", err
		}
		healthy = g.Longest
		_, _ = l.Fabric("storage", "pair", "list")
		return fmt.Sprintf("%d passes, longest %v, %d errors", g.Passes, g.Longest, g.Errors), nil
	}); err != nil {
		return err
	}
	p, err := l.StartProber(ip, filepath.Join(l.Dir, "demo-storage"))
	if err != nil {
		return err
	}
	defer func() {
		if p != nil {
			_, _, _, _ = p.Stop()
		}
	}()
	// under runs fault while the guest's loop runs, and says what the
	// guest saw.
	under := func(fault func() error) (string, error) {
		if _, err := l.GuestIO(ip, "reset"); err != nil {
			return "", err
		}
		g0, err := l.GuestIO(ip, "")
		if err != nil {
			return "", err
		}
		if err := fault(); err != nil {
			return "", err
		}
		time.Sleep(5 * time.Second)
		g, err := l.GuestIO(ip, "")
		if err != nil {
			return "", err
		}
		d := fmt.Sprintf("in the guest: longest write-verify pass %v (healthy %v), %d passes, %d errors", g.Longest, healthy, g.Passes-g0.Passes, g.Errors)
		if g.Errors > 0 || g.Passes-g0.Passes < 3 {
			return "", errors.New(d)
		}
		return d, nil
	}
	pair, err := l.PairInfo()
	if err != nil {
		return err
	}
	own := pair.Owner
	other := map[string]string{"sn1": "sn2", "sn2": "sn1"}[own]
	if err := s.step("5.1 planned shutdown of the owner "+own+": fabric storage shutdown (ownership handed to "+other+" first, then its daemon exits)", func() (string, error) {
		return under(func() error { _, err := l.Fabric("storage", "shutdown", own); return err })
	}); err != nil {
		return err
	}
	if err := s.step("5.2 "+own+" starts again and comes back: fabric storage undrain, resync of what changed", func() (string, error) {
		t0 := time.Now()
		if !l.Exited(lab.StorageProc(own)) {
			return "", fmt.Errorf("%s's daemon still runs after fabric storage shutdown", own)
		}
		if err := l.RestartStorage(lab.StorageProc(own)); err != nil {
			return "", err
		}
		if _, err := l.Fabric("storage", "undrain", own); err != nil {
			return "", err
		}
		_, _ = l.Fabric("storage", "show", own)
		_, _ = l.Fabric("storage", "pair", "list")
		return fmt.Sprintf("restarted, undrained and in sync again in %.1f s", time.Since(t0).Seconds()), nil
	}); err != nil {
		return err
	}
	pair, err = l.PairInfo()
	if err != nil {
		return err
	}
	victim := pair.Owner
	if err := s.step("5.3 kill -9 of the storage node "+victim+" (the owner now)", func() (string, error) {
		d, err := under(func() error { return l.Kill(lab.StorageProc(victim)) })
		_, _ = l.Fabric("storage", "pair", "list")
		return d, err
	}); err != nil {
		return err
	}
	return s.step("5.4 "+victim+" restarts and rejoins through a full resync; the client's view of it all", func() (string, error) {
		if err := l.RestartStorage(lab.StorageProc(victim)); err != nil {
			return "", err
		}
		took, err := l.WaitPairInSync(90 * time.Second)
		if err != nil {
			return "", err
		}
		_, _ = l.Fabric("storage", "pair", "list")
		fast, slow, h, err := p.Stop()
		p = nil
		if err != nil {
			return "", err
		}
		d := fmt.Sprintf("in sync again after %.1f s; through 5.1-5.4 pings 10 Hz: %d sent, %d lost; 1 Hz: %d sent, %d lost; HTTP: %d ok, %d failed",
			took.Seconds(), fast.Sent, fast.Lost(), slow.Sent, slow.Lost(), h.OK, h.Failed)
		if slow.Lost() > 0 || h.Failed > 0 {
			return "", errors.New(d)
		}
		return d, nil
	})
}
