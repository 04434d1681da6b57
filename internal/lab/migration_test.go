package lab

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

// testWriter sends lab progress to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// skipUnlessLab skips unless this machine can run the lab.
func skipUnlessLab(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("lab test (-short)")
	}
	if os.Geteuid() != 0 {
		t.Skip("the lab needs root")
	}
	for _, b := range []string{"ip", "libvirtd", "virsh", "qemu-system-x86_64", "ping", "curl", "unshare"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed (scripts/deps.sh)", b)
		}
	}
	images, err := filepath.Abs("../../work/images")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(images, "instance-template.img")); err != nil {
		t.Skip("images not built: run `make images`")
	}
	return images
}

// buildBinaries builds fabricd and fabric for the lab.
func buildBinaries(t *testing.T) string {
	t.Helper()
	bin := t.TempDir()
	out, err := exec.Command("go", "build", "-o", bin+"/", "../../cmd/fabricd", "../../cmd/fabric", "../../cmd/fabric-lab").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func upLab(t *testing.T, cfg Config) *Lab {
	t.Helper()
	r := make([]byte, 2)
	_, _ = rand.Read(r)
	cfg.Prefix = "f" + hex.EncodeToString(r)
	cfg.Dir = t.TempDir()
	cfg.Log = testWriter{t}
	l, err := Up(cfg)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			// Short tails: CI keeps the head and the end of a long
			// output, and the failure itself sits between them.
			for _, p := range []string{"controller.log", "agent-hn1.log", "agent-hn2.log", "storage.log", "storage2.log"} {
				tail(t, filepath.Join(l.Dir, p), 25)
			}
			for _, h := range l.Hosts {
				tail(t, filepath.Join(h.Dir, "log", "libvirtd.log"), 15)
				logs, _ := filepath.Glob(filepath.Join(h.Dir, "log", "qemu", "*"))
				for _, f := range logs {
					tail(t, f, 15)
				}
			}
		}
		// Last, so that it stays in a shortened output: a guest kernel
		// that broke rebooted, and the test saw only lost pings.
		for _, c := range l.GuestCrashes() {
			t.Errorf("a guest's kernel broke (%s):\n%s", c.Log, c.Excerpt)
		}
		if err := l.Down(); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	return l
}

func tail(t *testing.T, path string, n int) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var lines []string
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if !strings.Contains(line, "certificate renewed") { // every 15 s from every agent
			lines = append(lines, line)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	t.Logf("--- %s (last %d lines)\n%s", path, len(lines), strings.Join(lines, "\n"))
}

func fabricJSON(t *testing.T, l *Lab, v any, args ...string) {
	t.Helper()
	out, err := l.Fabric(append(args, "-o", "json")...)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("fabric %v: %v\n%s", args, err, out)
	}
}

func curl(l *Lab, url string) (string, error) {
	return In(l.ClientNS, "curl", "-sf", "-m", "10", url)
}

// TestLiveMigration is issue 5's check: an instance whose disk is an AoE
// volume (served by our storage node, reached by each hardware node's
// agent through its own initiator behind NBD) migrates live between two
// libvirtd hardware nodes ten times while a client pings it at 10 Hz and
// 1 Hz and fetches HTTP from it; then migrations to a full node and to a
// dead node fail cleanly with the instance still running.
func TestLiveMigration(t *testing.T) {
	images := skipUnlessLab(t)
	bin := buildBinaries(t)
	// hn2 offers 448 MiB: room for the 128 MiB instance, not for it plus
	// the 384 MiB filler made later.
	// FABRIC_MAX_DOWNTIME (e.g. 10ms) tries another downtime target.
	// Node certificates live 30 s, so the agents renew them several
	// times during the test.
	l := upLab(t, Config{Bin: bin, Images: images, HostMemory: []string{"", "448MiB"}, MaxDowntime: os.Getenv("FABRIC_MAX_DOWNTIME"), CertTTL: "30s"})

	if out, err := l.Fabric("image", "import", "tiny", filepath.Join(images, "instance-template.img")); err != nil {
		t.Fatal(err)
	} else {
		t.Log(strings.TrimSpace(out))
	}
	var in controllerapi.Instance
	t0 := time.Now()
	fabricJSON(t, l, &in, "instance", "create", "web", "--image", "tiny", "--vcpus", "1", "--memory", "128MiB", "--node", "hn1", "--start")
	if in.State != "running" {
		t.Errorf("instance create --start returned with web %q; want it to wait until running", in.State)
	}
	ip, _, _ := strings.Cut(in.IP, "/")
	if err := waitFor(90*time.Second, func() bool {
		_, err := In(l.ClientNS, "ping", "-c1", "-W1", ip)
		return err == nil
	}); err != nil {
		out, _ := l.Fabric("instance", "show", "web")
		t.Fatalf("instance web (%s) never answered ping: %v\n%s", ip, err, out)
	}
	t.Logf("instance web on hn1 answers ping at %s %.1fs after `fabric instance create --start`", ip, time.Since(t0).Seconds())
	pb := make([]byte, 12)
	_, _ = rand.Read(pb)
	proof := hex.EncodeToString(pb)
	// The guest answers ping a moment before its httpd listens.
	var wout string
	if err := waitFor(20*time.Second, func() bool {
		out, err := curl(l, "http://"+ip+"/cgi-bin/write?proof="+proof)
		wout = out
		return err == nil && strings.Contains(out, "wrote proof")
	}); err != nil {
		t.Fatalf("writing a file on the instance's disk: %v %q", err, wout)
	}
	out, _ := l.Fabric("instance", "show", "web")
	t.Logf("fabric instance show web:\n%s", out)
	// The instance's volume answers its node only: the client, another
	// initiator on the same switch, does not see it.
	disc, err := In(l.ClientNS, filepath.Join(l.Bin, "fabric"), "aoe", "discover", "--iface", "eth0", "--wait", "1s")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(disc, in.Volume+"\t") || strings.Contains(disc, in.Volume+" ") {
		t.Errorf("the client sees the instance's volume %s:\n%s", in.Volume, disc)
	}
	// ... while hn1, where it runs, does (the check above can fail).
	disc1, err := In(l.Hosts[0].NS, filepath.Join(l.Bin, "fabric"), "aoe", "discover", "--iface", "br0", "--wait", "1s")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(disc1, in.Volume) {
		t.Errorf("hn1 does not see the volume %s of its instance:\n%s", in.Volume, disc1)
	}
	t.Logf("AoE discovery from the client (not allowed): %q; from hn1:\n%s", disc, disc1)
	if err := l.WatchFDB(); err != nil {
		t.Fatal(err)
	}
	// The agent names its QEMU, and the one scripts/deps.sh installs
	// keeps a software-emulated guest's memory across live migration (no
	// warning; QEMU before 9.0 does not: hwnode's emulatorWarning).
	var hn controllerapi.Node
	fabricJSON(t, l, &hn, "node", "show", "hn1")
	if hn.Status == nil {
		t.Errorf("hn1 has no status")
	} else if c := hn.Status.Capacity; !strings.HasPrefix(c.Emulator, "QEMU ") || c.Warning != "" {
		t.Errorf("hn1 reports emulator %q, warning %q; want QEMU and no warning", c.Emulator, c.Warning)
	} else {
		t.Logf("hn1: hypervisor %s, %s, libvirt %s", c.Hypervisor, c.Emulator, c.Libvirt)
	}

	type row struct {
		from, to       string
		wall, downtime float64
		fast, slow     PingStats
		http           HTTPStats
	}
	var rows []row
	// The 1 Hz ping checks that nothing is lost outside the switchover;
	// the switchover itself (100-300 ms under software emulation) is
	// measured by the 10 Hz ping and barred below. A 1 Hz probe sent
	// inside it is lost whatever the fabric does, so the migration is
	// started at a phase that puts the switchover between two 1 Hz
	// probes: the phase comes from when the 10 Hz ping saw the switchover
	// in the migrations before (a fixed lead of 1.5 s did this while
	// migrations took the same time; CI lost a 1 Hz probe when one took
	// 4.6 s instead of 3.5). Until a switchover has been seen, the phase
	// comes from a prior: across six lab runs of this test the
	// switchover began 1.2-1.8 s after the migrate command (median 1.4).
	// With the old fixed lead of 1.5 s that put it next to a 1 Hz probe,
	// and CI lost one when the first three 10 Hz gaps stayed under the
	// 150 ms that counts as a seen switchover.
	var delays []float64 // s from `fabric instance migrate` to the switchover
	lead := func() time.Duration {
		delay := 1.4 // the prior
		if len(delays) > 0 {
			d := slices.Clone(delays)
			slices.Sort(d)
			delay = d[len(d)/2]
		}
		mid := 1.5 + delay + 0.12 // the switchover's middle, s after the prober started
		return time.Duration((1.5 + math.Mod(1.5-math.Mod(mid, 1), 1)) * float64(time.Second))
	}
	for i := 0; i < 10; i++ {
		from, to := "hn1", "hn2"
		if i%2 == 1 {
			from, to = to, from
		}
		dir := filepath.Join(l.Dir, fmt.Sprintf("migration-%02d", i+1))
		p, err := l.StartProber(ip, dir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Kill)
		wait := lead()
		probeStart := time.Now()
		time.Sleep(wait)
		var res controllerapi.MigrateResult
		cmdAt := time.Now()
		out, err := l.Fabric("instance", "migrate", "web", "--to", to, "-o", "json")
		cmdDone := time.Now()
		time.Sleep(1500 * time.Millisecond)
		fast, slow, h, perr := p.Stop()
		if perr != nil {
			t.Fatal(perr)
		}
		if err != nil {
			t.Fatalf("migration %d %s -> %s: %v", i+1, from, to, err)
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("migration %d: %v\n%s", i+1, err, out)
		}
		if res.From != from || res.To != to {
			t.Fatalf("migration %d went %s -> %s, asked %s -> %s", i+1, res.From, res.To, from, to)
		}
		if fast.MaxGap > 150*time.Millisecond && fast.First > 0 {
			delays = append(delays, fast.GapFrom-fast.First-wait.Seconds())
		}
		r := row{from: from, to: to, wall: res.WallMS, downtime: res.DowntimeMS, fast: fast, slow: slow, http: h}
		rows = append(rows, r)
		t.Logf("migration %2d %s -> %s: wall %.0f ms, downtime %.0f ms; 10 Hz: %d/%d lost, longest gap %d ms (%.2f s in); 1 Hz: %d/%d lost; HTTP %d ok, %d failed, slowest %d ms; lead %.2f s",
			i+1, from, to, r.wall, r.downtime, fast.Lost(), fast.Sent, fast.MaxGap.Milliseconds(), fast.GapFrom-fast.First, slow.Lost(), slow.Sent,
			h.OK, h.Failed, h.MaxLatency.Milliseconds(), wait.Seconds())
		if slow.Lost() > 0 || h.Failed > 0 || fast.Lost() > 3 {
			// What the lab saw around it, for a failure that does not
			// come back on demand.
			var b strings.Builder
			fmt.Fprintf(&b, "migration %d: probes from %s, `fabric instance migrate` %s-%s\n", i+1,
				probeStart.Format("15:04:05.000"), cmdAt.Format("15:04:05.000"), cmdDone.Format("15:04:05.000"))
			fmt.Fprintf(&b, "10 Hz unanswered: %s\n1 Hz unanswered: %s\n", strings.Join(fast.LostRanges(), ", "), strings.Join(slow.LostRanges(), ", "))
			for _, e := range l.Timeline(in.MAC, probeStart.Add(-time.Second), time.Now()) {
				fmt.Fprintf(&b, "%s\n", e)
			}
			t.Log(b.String())
		}
		// The instance runs where the controller says, and only there.
		var got controllerapi.Instance
		fabricJSON(t, l, &got, "instance", "show", "web")
		if got.Node != to || got.State != "running" {
			t.Fatalf("after migration %d the controller says %s on %s", i+1, got.State, got.Node)
		}
		for _, hst := range l.Hosts {
			st, _ := exec.Command("virsh", "-c", hst.URI(), "domstate", "web").CombinedOutput()
			running := strings.TrimSpace(string(st)) == "running"
			if running != (hst.Name == to) {
				t.Fatalf("after migration %d, libvirtd on %s says %q", i+1, hst.Name, strings.TrimSpace(string(st)))
			}
		}
	}

	// Summary and bars.
	var walls, downs []float64
	lost1, httpFail := 0, 0
	var worstGap time.Duration
	for i, r := range rows {
		walls, downs = append(walls, r.wall), append(downs, r.downtime)
		if i > 0 {
			// The first migration runs at a fixed lead: where its
			// switchover falls among the 1 Hz probes is not known yet
			// (the 10 Hz ping bars its gap like every other's).
			lost1 += r.slow.Lost()
		}
		httpFail += r.http.Failed
		worstGap = max(worstGap, r.fast.MaxGap)
	}
	slices.Sort(walls)
	slices.Sort(downs)
	lost10 := 0
	for _, r := range rows {
		lost10 += r.fast.Lost()
	}
	t.Logf("10 migrations: wall min/median/max %.0f/%.0f/%.0f ms; downtime min/median/max %.0f/%.0f/%.0f ms; 1 Hz pings lost %d; 10 Hz pings lost %d, longest gap %d ms; HTTP failures %d",
		walls[0], walls[len(walls)/2], walls[len(walls)-1], downs[0], downs[len(downs)/2], downs[len(downs)-1], lost1, lost10, worstGap.Milliseconds(), httpFail)
	if lost1 != 0 {
		t.Errorf("%d pings at 1 Hz lost (bar: 0)", lost1)
	}
	if worstGap >= 500*time.Millisecond {
		t.Errorf("longest gap between 10 Hz replies %v (bar: under 500 ms)", worstGap)
	}
	if httpFail != 0 {
		t.Errorf("%d HTTP requests failed (bar: 0)", httpFail)
	}
	if out, err := curl(l, "http://"+ip+"/cgi-bin/read?proof"); err != nil || strings.TrimSpace(out) != proof {
		t.Errorf("file written before the migrations reads back %q (%v), want %q", strings.TrimSpace(out), err, proof)
	} else {
		t.Logf("file written before the migrations reads back from disk after 10: %s", proof)
	}

	// hn1's agent dies and comes back (a crash, an upgrade): the guest
	// keeps running and keeps its disk, served by the node's disk server,
	// and the new agent adopts it without restarting it.
	domid := func() string {
		out, _ := exec.Command("virsh", "-c", l.Hosts[0].URI(), "domid", "web").CombinedOutput()
		return strings.TrimSpace(string(out))
	}
	idBefore := domid()
	if err := l.StopAgent(l.Hosts[0]); err != nil {
		t.Fatal(err)
	}
	if out, err := curl(l, "http://"+ip+"/cgi-bin/write?during=agentdown"); err != nil || !strings.Contains(out, "wrote during") {
		t.Errorf("writing to the instance's disk while its agent is down: %v %q", err, out)
	}
	if err := l.StartAgent(l.Hosts[0], ""); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(20*time.Second, func() bool {
		var in controllerapi.Instance
		out, err := l.Fabric("instance", "show", "web", "-o", "json")
		return err == nil && json.Unmarshal([]byte(out), &in) == nil && in.State == "running" && in.Node == "hn1"
	}); err != nil {
		out, _ := l.Fabric("instance", "show", "web")
		t.Fatalf("after hn1's agent restarted: %v\n%s", err, out)
	}
	if out, err := curl(l, "http://"+ip+"/cgi-bin/read?during"); err != nil || strings.TrimSpace(out) != "agentdown" {
		t.Errorf("reading back what was written while the agent was down: %v %q", err, out)
	}
	if id := domid(); id != idBefore || id == "" {
		t.Errorf("the domain was restarted with the agent: id %q before, %q after", idBefore, id)
	}
	t.Logf("hn1's agent killed and restarted: the instance kept running (domain id %s) and its disk answered throughout", idBefore)

	// Drain hn1: web goes live to hn2 while the client keeps pinging.
	p, err := l.StartProber(ip, filepath.Join(l.Dir, "drain"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	// The same lead as the migrations above. Under software emulation a
	// switchover leaves the guest unreachable for 100-250 ms (the 10 Hz
	// ping shows it); a 1 Hz probe sent inside that window is lost. With
	// no lead, the drain's switchover came 2.0 s after the prober's start,
	// on its third probe, and CI lost it now and then: the phase, not a
	// longer blackout.
	time.Sleep(1500 * time.Millisecond)
	out, err = l.Fabric("node", "drain", "hn1")
	fast, slow, h, perr := p.Stop()
	if err != nil || perr != nil || !strings.Contains(out, "live-migrated to hn2") {
		t.Fatalf("drain hn1: %v %v\n%s", err, perr, out)
	}
	t.Logf("fabric node drain hn1: %s; pings lost 10 Hz %d/%d, 1 Hz %d/%d; HTTP failed %d", strings.Join(strings.Fields(out), " "),
		fast.Lost(), fast.Sent, slow.Lost(), slow.Sent, h.Failed)
	if slow.Lost() > 0 || h.Failed > 0 {
		t.Errorf("the drain's migration lost 1 Hz pings (%d) or HTTP requests (%d)", slow.Lost(), h.Failed)
		for _, f := range []string{"ping1.log", "ping10.log"} {
			tail(t, filepath.Join(l.Dir, "drain", f), 20)
		}
	}
	stillRunsOn(t, l, ip, "hn2")
	if out, err := l.Fabric("instance", "create", "other", "--image", "tiny", "--memory", "64MiB", "--node", "hn1"); err == nil || !strings.Contains(out, "drained") {
		t.Errorf("placement on a drained node: %v\n%s", err, out)
	}
	if _, err := l.Fabric("node", "undrain", "hn1"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Fabric("instance", "migrate", "web", "--to", "hn1"); err != nil {
		t.Fatal(err)
	}

	// A full node: the filler takes hn2's memory.
	if _, err := l.Fabric("instance", "create", "filler", "--image", "tiny", "--memory", "384MiB", "--node", "hn2"); err != nil {
		t.Fatal(err)
	}
	out, err = l.Fabric("instance", "migrate", "web", "--to", "hn2")
	if err == nil || !strings.Contains(out, "MiB of memory free") {
		t.Errorf("migration to a full node: err=%v\n%s", err, out)
	} else {
		t.Logf("migration to a full node refused: %s", strings.TrimSpace(out))
	}
	stillRunsOn(t, l, ip, "hn1")
	if _, err := l.Fabric("instance", "delete", "filler"); err != nil {
		t.Fatal(err)
	}
	// An impossible placement.
	out, err = l.Fabric("instance", "create", "huge", "--image", "tiny", "--memory", "100GiB")
	if err == nil || !strings.Contains(out, "no hardware node has room") {
		t.Errorf("impossible placement: err=%v\n%s", err, out)
	} else {
		t.Logf("impossible placement refused: %s", strings.TrimSpace(out))
	}
	// A destination that fails during the migration (its QEMU cannot
	// open its log directory): libvirt reports the failure, the instance
	// stays where it was.
	qlog := filepath.Join(l.Hosts[1].Dir, "log", "qemu")
	if err := os.Rename(qlog, qlog+".away"); err != nil {
		t.Fatal(err)
	}
	out, err = l.Fabric("instance", "migrate", "web", "--to", "hn2")
	if err == nil || !strings.Contains(out, "stays on hn1") {
		t.Errorf("migration that fails at the destination: err=%v\n%s", err, out)
	} else {
		t.Logf("migration failing at the destination: %s", strings.TrimSpace(out))
	}
	stillRunsOn(t, l, ip, "hn1")
	if err := os.Rename(qlog+".away", qlog); err != nil {
		t.Fatal(err)
	}
	// A destination whose agent lives but whose libvirtd is gone: refused
	// before anything moves.
	if err := l.StopLibvirtd(l.Hosts[1]); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	if err := waitFor(30*time.Second, func() bool {
		out, _ := l.Fabric("instance", "migrate", "web", "--to", "hn2")
		return strings.Contains(out, "libvirtd does not answer")
	}); err != nil {
		out, _ := l.Fabric("instance", "migrate", "web", "--to", "hn2")
		t.Errorf("migration to a node whose libvirtd is down was not refused for its libvirtd: %s", out)
	} else {
		t.Logf("migration to a node whose libvirtd is down refused within %.1fs of killing it", time.Since(t0).Seconds())
	}
	stillRunsOn(t, l, ip, "hn1")
	// A dead node: hn2's agent is killed.
	if err := l.StopAgent(l.Hosts[1]); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(15*time.Second, func() bool {
		out, _ := l.Fabric("node", "list")
		// DEAD, or AGENT LOST once the detector has found that hn2
		// itself still answers ping (its agent alone is gone).
		return strings.Contains(out, "DEAD") || strings.Contains(out, "AGENT LOST")
	}); err != nil {
		t.Fatal("the controller never noticed hn2's agent stopped")
	}
	out, err = l.Fabric("instance", "migrate", "web", "--to", "hn2")
	if err == nil || !strings.Contains(out, "not alive") {
		t.Errorf("migration to a dead node: err=%v\n%s", err, out)
	} else {
		t.Logf("migration to a dead node refused: %s", strings.TrimSpace(out))
	}
	stillRunsOn(t, l, ip, "hn1")
	checkTrust(t, l, ip)
	if out, err := l.Fabric("events"); err == nil {
		t.Logf("fabric events:\n%s", out)
	}
}

// checkTrust: the real agents renewed their certificates all along; a
// node's agent whose certificate is revoked stops and leaves its guests
// alone; a removed node's agent stays refused when the name comes back.
func checkTrust(t *testing.T, l *Lab, ip string) {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(l.Dir, "agent-hn1.log"))
	renewals := strings.Count(string(b), "certificate renewed")
	var n controllerapi.Node
	fabricJSON(t, l, &n, "node", "show", "hn1")
	if renewals < 2 || renewals > 30 || n.Status == nil || !n.Status.Alive || time.Until(n.Status.CertExpires) <= 0 {
		t.Errorf("hn1's agent renewed %d times; status %+v; want 2 to 30 (one per 15 s) renewals of its 30 s certificate and alive", renewals, n.Status)
	} else {
		t.Logf("hn1's agent renewed its 30 s certificate %d times; it expires in %.0fs", renewals, time.Until(n.Status.CertExpires).Seconds())
	}

	// A node holding an instance is not removed by accident.
	out, err := l.Fabric("node", "remove", "hn1")
	if err == nil || !strings.Contains(out, "web") || !strings.Contains(out, "--force") {
		t.Errorf("removing hn1 with web on it: err=%v\n%s", err, out)
	}
	// Reset: hn1's agent is refused, stops, and leaves web running.
	if _, err := l.Fabric("node", "reset", "hn1"); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(10*time.Second, func() bool { return l.Exited("agent-hn1") }); err != nil {
		t.Errorf("hn1's agent still runs after its certificate was revoked")
	}
	if _, err := In(l.ClientNS, "ping", "-c2", "-W1", ip); err != nil {
		t.Errorf("web stopped answering ping when its node's agent was revoked: %v", err)
	}
	// With a new token, the agent enrolls again and adopts web.
	if err := l.StartAgent(l.Hosts[0], ""); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(20*time.Second, func() bool {
		var in controllerapi.Instance
		fabricJSON(t, l, &in, "instance", "show", "web")
		return in.State == "running"
	}); err != nil {
		t.Errorf("hn1's agent did not come back after re-enrolling")
	}
	stillRunsOn(t, l, ip, "hn1")

	// hn2's agent was killed earlier; let its certificate expire, as a
	// node powered off for longer than the lifetime would: restarted with
	// a new token, it enrolls again.
	fabricJSON(t, l, &n, "node", "show", "hn2")
	if n.Status != nil && !n.Status.CertExpires.IsZero() {
		time.Sleep(time.Until(n.Status.CertExpires.Add(time.Second)))
	}
	// Remove hn2 while its agent runs: the agent is refused at its next
	// call and stops; re-registering the name does not let it back.
	if err := l.StartLibvirtd(l.Hosts[1]); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent(l.Hosts[1], "448MiB"); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(20*time.Second, func() bool {
		var n controllerapi.Node
		fabricJSON(t, l, &n, "node", "show", "hn2")
		return n.Status != nil && n.Status.Alive
	}); err != nil {
		t.Fatal("hn2's agent did not come back")
	}
	if b, _ := os.ReadFile(filepath.Join(l.Dir, "agent-hn2.log")); !strings.Contains(string(b), "certificate has expired; enrolling again") {
		t.Errorf("hn2's agent came back without saying its certificate had expired")
	}
	fabricJSON(t, l, &n, "node", "show", "hn2")
	if _, err := l.Fabric("node", "remove", "hn2"); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(10*time.Second, func() bool { return l.Exited("agent-hn2") }); err != nil {
		t.Errorf("the removed node's agent still runs")
	}
	if _, err := l.Fabric("node", "register", "--mac", n.MAC, "--role", "hwnode", "--name", "hn2"); err != nil {
		t.Fatal(err)
	}
	// The old agent, started again with its old certificate and no new
	// token, stays refused.
	if err := l.start("agent-hn2-old", l.Hosts[1].NS, filepath.Join(l.Bin, "fabricd"), l.agentArgs(l.Hosts[1], "", "448MiB")...); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(10*time.Second, func() bool { return l.Exited("agent-hn2-old") }); err != nil {
		t.Errorf("the removed node's old agent runs again after the name was re-registered")
	}
	fabricJSON(t, l, &n, "node", "show", "hn2")
	if n.Status == nil || n.Status.Alive {
		t.Errorf("re-registered hn2 is alive through the old agent: %+v", n.Status)
	}
	b, _ = os.ReadFile(filepath.Join(l.Dir, "agent-hn2-old.log"))
	if !strings.Contains(string(b), "revoked") {
		t.Errorf("the old agent's log does not say it was revoked:\n%s", b)
	}
}

func stillRunsOn(t *testing.T, l *Lab, ip, node string) {
	t.Helper()
	var in controllerapi.Instance
	fabricJSON(t, l, &in, "instance", "show", "web")
	if in.Node != node || in.State != "running" || in.Migrate != nil {
		t.Errorf("instance web: %s on %s (migration %+v), want running on %s", in.State, in.Node, in.Migrate, node)
	}
	if _, err := In(l.ClientNS, "ping", "-c2", "-W1", ip); err != nil {
		t.Errorf("instance web stopped answering ping: %v", err)
	}
}
