package lab

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

// TestHardwareNodeFailure is issue 18's power-loss check: an instance runs
// on hn1 with data on its disk; hn1 loses power (every process of its
// namespace killed, its link cut). The controller finds it dead by three
// witnesses (agent silent, no AoE traffic at the storage node, no ping),
// fences it through the storage node, and restarts the instance on hn2.
// The instance must answer ping again within 30 s of the kill, with the
// data written before; hn1's MAC must no longer reach the volume; and when
// hn1 comes back its stale domain is destroyed, so exactly one copy runs.
func TestHardwareNodeFailure(t *testing.T) {
	images := skipUnlessLab(t)
	bin := buildBinaries(t)
	l := upLab(t, Config{Bin: bin, Images: images})
	in, ip := webOnHN1(t, l, images)
	pb := make([]byte, 12)
	_, _ = rand.Read(pb)
	proof := hex.EncodeToString(pb)
	if err := waitFor(20*time.Second, func() bool {
		out, err := curl(l, "http://"+ip+"/cgi-bin/write?proof="+proof)
		return err == nil && strings.Contains(out, "wrote proof")
	}); err != nil {
		t.Fatalf("writing a file on the instance's disk: %v", err)
	}

	hn1, hn2 := l.Hosts[0], l.Hosts[1]
	t0 := time.Now()
	if err := l.PowerOff(hn1); err != nil {
		t.Fatal(err)
	}
	var back time.Duration
	if err := waitFor(60*time.Second, func() bool {
		_, err := In(l.ClientNS, "ping", "-c1", "-W1", ip)
		if err == nil {
			back = time.Since(t0)
		}
		return err == nil
	}); err != nil {
		out, _ := l.Fabric("events")
		t.Fatalf("instance web never answered again after hn1's power loss: %v\n%s", err, out)
	}
	fabricJSON(t, l, &in, "instance", "show", "web")
	t.Logf("hn1 lost power; web answers ping again %.1f s later, %s on %s (restarts: %+v)", back.Seconds(), in.State, in.Node, in.Restarts)
	if back > 30*time.Second {
		t.Errorf("web came back %.1f s after the power loss (bar: 30 s)", back.Seconds())
	}
	if in.Node != hn2.Name || len(in.Restarts) != 1 || in.Restarts[0].From != hn1.Name {
		t.Errorf("web: on %s, restarts %+v; want one restart from hn1 to hn2", in.Node, in.Restarts)
	}
	if out, err := curl(l, "http://"+ip+"/cgi-bin/read?proof"); err != nil || strings.TrimSpace(out) != proof {
		t.Errorf("the file written before the power loss reads back %q (%v), want %q", strings.TrimSpace(out), err, proof)
	}
	events, _ := l.Fabric("events")
	var timeline []string
	for _, line := range strings.Split(events, "\n") {
		if strings.Contains(line, "node.fenced") || strings.Contains(line, "instance.restarted") || strings.Contains(line, "agent.lost") {
			timeline = append(timeline, strings.Join(strings.Fields(line), " "))
		}
	}
	t.Logf("events:\n%s", strings.Join(timeline, "\n"))
	if !strings.Contains(events, "node.fenced") || !strings.Contains(events, "instance.restarted") {
		t.Errorf("no fence or restart event:\n%s", events)
	}

	// The controller moved the disk's allow list to hn2 on the storage
	// node, and the storage node confirmed it.
	var vols []controllerapi.Volume
	fabricJSON(t, l, &vols, "volume", "list", "-o", "json")
	var disk controllerapi.Volume
	for _, v := range vols {
		if v.Name == "inst-web" {
			disk = v
		}
	}
	if disk.Storage != "sn1" || disk.State != "served" || len(disk.MACs) != 1 || disk.MACs[0] != hn2.MAC {
		t.Errorf("fabric volume list: web's disk is %+v; want served by sn1 to hn2's MAC %s only", disk, hn2.MAC)
	}
	if out, _ := l.Fabric("instance", "show", "web"); !strings.Contains(out, "from hn1 to hn2 (hn1 fenced)") {
		t.Errorf("fabric instance show web lacks the restart:\n%s", out)
	}
	if out, _ := l.Fabric("node", "list"); !strings.Contains(out, "FENCED") {
		t.Errorf("fabric node list does not show hn1 fenced:\n%s", out)
	}

	// hn1's links come back: its MAC reaches no volume any more.
	if _, err := In(hn1.NS, "ip", "link", "set", "eth0", "up"); err != nil {
		t.Fatal(err)
	}
	disc, err := In(hn1.NS, filepath.Join(l.Bin, "fabric"), "aoe", "discover", "--iface", "br0", "--wait", "1s")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(disc, in.Volume) || strings.Count(strings.TrimSpace(disc), "\n") > 0 {
		t.Errorf("the fenced hn1 still sees volumes:\n%s", disc)
	} else {
		t.Logf("the fenced hn1's MAC gets no answer from the storage node (discovery from hn1: %q)", strings.TrimSpace(disc))
	}
	if out, err := l.Fabric("instance", "create", "other", "--image", "tiny", "--memory", "64MiB", "--node", "hn1"); err == nil || !strings.Contains(out, "fenced") {
		t.Errorf("placement on a fenced node: %v\n%s", err, out)
	}

	// hn1 comes back (libvirtd and its agent): the stale domain is
	// destroyed, never resumed; only hn2 runs web.
	if err := l.StartLibvirtd(hn1); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent(hn1, ""); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(30*time.Second, func() bool {
		out, _ := In(hn1.NS, "virsh", "-c", hn1.URI(), "list", "--all", "--name")
		return !strings.Contains(out, "web")
	}); err != nil {
		out, _ := In(hn1.NS, "virsh", "-c", hn1.URI(), "list", "--all")
		t.Errorf("hn1 came back and still has web defined:\n%s", out)
	}
	if st, _ := In(hn2.NS, "virsh", "-c", hn2.URI(), "domstate", "web"); strings.TrimSpace(st) != "running" {
		t.Errorf("web on hn2: %q", st)
	}
	t.Logf("hn1 back: its stale web domain was destroyed; web runs on hn2 only")
}

// TestAgentDeathAndWatchdog: hn1's agent dies. Restarted within the
// watchdog's timeout, nothing happens to its guest: no fence, no restart,
// the same domain keeps running and the agent adopts it. Not restarted,
// the (stand-in) watchdog resets the node, which the controller then finds
// dead, fences, and web restarts on hn2.
func TestAgentDeathAndWatchdog(t *testing.T) {
	images := skipUnlessLab(t)
	bin := buildBinaries(t)
	const wd = 8 * time.Second
	l := upLab(t, Config{Bin: bin, Images: images, Watchdog: wd.String()})
	_, ip := webOnHN1(t, l, images)
	hn1 := l.Hosts[0]
	domid := func() string {
		out, _ := In(hn1.NS, "virsh", "-c", hn1.URI(), "domid", "web")
		return strings.TrimSpace(out)
	}
	before := domid()

	// Killed and back within the watchdog's timeout (and past the agent
	// timeout: the controller notices).
	if err := l.StopAgent(hn1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second)
	if err := l.StartAgent(hn1, ""); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(20*time.Second, func() bool {
		var got controllerapi.Instance
		out, err := l.Fabric("instance", "show", "web", "-o", "json")
		return err == nil && jsonInto(out, &got) && got.State == "running" && got.Node == "hn1"
	}); err != nil {
		t.Fatalf("after a short agent death: %v", err)
	}
	events, _ := l.Fabric("events")
	if id := domid(); id != before || l.Reset(hn1) || strings.Contains(events, "node.fenced") || strings.Contains(events, "instance.restarted") {
		t.Fatalf("a short agent death changed something: domain id %q -> %q, reset %v\n%s", before, id, l.Reset(hn1), events)
	}
	if !strings.Contains(events, "agent.lost") {
		t.Errorf("no agent.lost event for the short agent death:\n%s", events)
	}
	t.Logf("agent dead for 5 s and back: same domain (id %s), no fence, no restart; event: agent lost", before)

	// Killed for good: the watchdog resets the node.
	t0 := time.Now()
	if err := l.StopAgent(hn1); err != nil {
		t.Fatal(err)
	}
	var reset, back time.Duration
	if err := waitFor(90*time.Second, func() bool {
		if reset == 0 && l.Reset(hn1) {
			reset = time.Since(t0)
		}
		_, err := In(l.ClientNS, "ping", "-c1", "-W1", ip)
		var got controllerapi.Instance
		out, _ := l.Fabric("instance", "show", "web", "-o", "json")
		if err == nil && jsonInto(out, &got) && got.Node == "hn2" && got.State == "running" {
			back = time.Since(t0)
			return true
		}
		return false
	}); err != nil {
		out, _ := l.Fabric("events")
		t.Fatalf("web did not come back on hn2 after hn1's agent died for good (reset after %v): %v\n%s", reset, err, out)
	}
	t.Logf("agent killed for good: the watchdog (%v) reset hn1 %.1f s later; web answers on hn2 %.1f s after the agent died", wd, reset.Seconds(), back.Seconds())
	// The watchdog counts from its last feed, up to a second before the
	// agent died.
	if reset == 0 || reset < wd-time.Second {
		t.Errorf("watchdog reset after %v (timeout %v, fed every second)", reset, wd)
	}
	if limit := wd + 25*time.Second; back > limit {
		t.Errorf("web came back %.1f s after the agent died (documented: watchdog %v + detection and restart, under %v)", back.Seconds(), wd, limit)
	}
}

func jsonInto(s string, v any) bool { return json.Unmarshal([]byte(s), v) == nil }

// webOnHN1 imports the test image and starts instance web on hn1; it
// returns once web answers ping, with web and its address.
func webOnHN1(t *testing.T, l *Lab, images string) (controllerapi.Instance, string) {
	t.Helper()
	if _, err := l.Fabric("image", "import", "tiny", filepath.Join(images, "instance-template.img")); err != nil {
		t.Fatal(err)
	}
	var in controllerapi.Instance
	fabricJSON(t, l, &in, "instance", "create", "web", "--image", "tiny", "--vcpus", "1", "--memory", "128MiB", "--node", "hn1", "--start")
	ip, _, _ := strings.Cut(in.IP, "/")
	if err := waitFor(90*time.Second, func() bool {
		_, err := In(l.ClientNS, "ping", "-c1", "-W1", ip)
		return err == nil
	}); err != nil {
		t.Fatalf("instance web (%s) never answered ping: %v", ip, err)
	}
	return in, ip
}

// TestLinksCut: every link of hn1 is cut (the node itself alive) for
// longer than the controller's detection. The controller fences hn1 and
// restarts web on hn2; hn1's agent, hearing neither the controller nor the
// storage, pauses its copy before the links return; when they do, that
// copy is destroyed, never resumed.
func TestLinksCut(t *testing.T) {
	images := skipUnlessLab(t)
	bin := buildBinaries(t)
	l := upLab(t, Config{Bin: bin, Images: images})
	_, ip := webOnHN1(t, l, images)
	hn1 := l.Hosts[0]
	state := func() string {
		out, _ := In(hn1.NS, "virsh", "-c", hn1.URI(), "domstate", "web")
		return strings.TrimSpace(out)
	}
	t0 := time.Now()
	if _, err := In(hn1.NS, "ip", "link", "set", "eth0", "down"); err != nil {
		t.Fatal(err)
	}
	var paused, back time.Duration
	if err := waitFor(60*time.Second, func() bool {
		if paused == 0 && state() == "paused" {
			paused = time.Since(t0)
		}
		if back == 0 {
			var got controllerapi.Instance
			out, _ := l.Fabric("instance", "show", "web", "-o", "json")
			if _, err := In(l.ClientNS, "ping", "-c1", "-W1", ip); err == nil && jsonInto(out, &got) && got.Node == "hn2" {
				back = time.Since(t0)
			}
		}
		return paused > 0 && back > 0 && time.Since(t0) > 20*time.Second
	}); err != nil {
		t.Fatalf("links of hn1 cut: paused after %v, back on hn2 after %v: %v", paused, back, err)
	}
	if s := state(); s != "paused" {
		t.Fatalf("before hn1's links return its copy of web is %q, want paused", s)
	}
	t.Logf("hn1's links cut: its copy of web paused %.1f s later; web answers from hn2 %.1f s after the cut", paused.Seconds(), back.Seconds())
	if _, err := In(hn1.NS, "ip", "link", "set", "eth0", "up"); err != nil {
		t.Fatal(err)
	}
	restored := time.Now()
	// 19.1-20.1 s in 9 runs (2026-11-30); one CI run failed a 20 s bound.
	// What the agent waits for between the controller's first answer and
	// the destroy is not looked into; the copy stays paused and fenced.
	if err := waitFor(30*time.Second, func() bool {
		out, _ := In(hn1.NS, "virsh", "-c", hn1.URI(), "list", "--all", "--name")
		if _, err := In(l.ClientNS, "ping", "-c1", "-W1", ip); err != nil {
			t.Errorf("web stopped answering %.1f s after hn1's links returned", time.Since(restored).Seconds())
		}
		return !strings.Contains(out, "web")
	}); err != nil {
		t.Errorf("hn1's stale copy of web was not destroyed after its links returned (state %q)", state())
	}
	t.Logf("hn1's links back: its paused copy destroyed %.1f s later; web kept answering from hn2", time.Since(restored).Seconds())
	// The controller answers hn1 again, and its answer is that web runs
	// on hn2: the paused copy must not run again before it is destroyed.
	// A heartbeat answered as the links went down arrives once they
	// return, with web still on hn1; the agent resumed the copy on it,
	// 7-8 s after the links returned, in each of 4 runs with logs before
	// the fix (4b87ca1).
	if b, err := os.ReadFile(filepath.Join(l.Dir, "agent-hn1.log")); err != nil {
		t.Error(err)
	} else if strings.Contains(string(b), "controller back: guest resumed") {
		t.Error("hn1's agent resumed its stale copy of web, restarted on hn2 meanwhile (agent-hn1.log)")
	}
}

// TestControlLinkCut: hn1's control link is cut (its IP traffic to the
// config node dropped: agent heartbeats and ping) while its storage link
// carries the instance's writes. The storage witness keeps hn1 unfenced:
// no fence, no restart, the same domain runs on, and the agent picks up
// where it was when the link returns. Then the storage policy: with hn2's
// AoE frames dropped at the switch, the controller places nothing on hn2
// that needs the storage node's disks.
func TestControlLinkCut(t *testing.T) {
	images := skipUnlessLab(t)
	bin := buildBinaries(t)
	l := upLab(t, Config{Bin: bin, Images: images})
	_, ip := webOnHN1(t, l, images)
	hn1, hn2 := l.Hosts[0], l.Hosts[1]
	domid := func() string {
		out, _ := In(hn1.NS, "virsh", "-c", hn1.URI(), "domid", "web")
		return strings.TrimSpace(out)
	}
	before := domid()

	// The guest writes (and syncs) twice a second throughout.
	stop := make(chan struct{})
	writes := make(chan [2]int)
	go func() {
		ok, failed := 0, 0
		for i := 0; ; i++ {
			select {
			case <-stop:
				writes <- [2]int{ok, failed}
				return
			case <-time.After(500 * time.Millisecond):
			}
			if out, err := curl(l, "http://"+ip+"/cgi-bin/write?io="+strconv.Itoa(i)); err == nil && strings.Contains(out, "wrote io") {
				ok++
			} else {
				failed++
			}
		}
	}()
	if _, err := In(hn1.NS, "ip", "route", "add", "blackhole", ControllerIP+"/32"); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	time.Sleep(15 * time.Second) // the agent timeout (4 s) and the storage quiet time (4 s), three times over
	events, _ := l.Fabric("events")
	var in controllerapi.Instance
	fabricJSON(t, l, &in, "instance", "show", "web", "-o", "json")
	if strings.Contains(events, "node.fenced") || strings.Contains(events, "instance.restarted") || in.Node != hn1.Name {
		t.Fatalf("control link cut, storage link up: fenced or restarted (web on %s):\n%s", in.Node, events)
	}
	var lost string
	for _, line := range strings.Split(events, "\n") {
		if strings.Contains(line, "agent.lost") {
			lost = strings.Join(strings.Fields(line), " ")
		}
	}
	if !strings.Contains(lost, "saw I/O from") {
		t.Errorf("no agent.lost event naming the storage witness:\n%s", events)
	}
	nodes, _ := l.Fabric("node", "list")
	if !strings.Contains(nodes, "AGENT LOST") {
		t.Errorf("fabric node list does not show hn1's agent lost:\n%s", nodes)
	}
	t.Logf("control link of hn1 cut for %.0f s: no fence, no restart; %s", time.Since(cut).Seconds(), lost)
	if _, err := In(hn1.NS, "ip", "route", "del", "blackhole", ControllerIP+"/32"); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(30*time.Second, func() bool {
		out, _ := l.Fabric("node", "list")
		return strings.Count(out, "alive") == 2
	}); err != nil {
		t.Fatalf("hn1's agent did not report again after its control link returned: %v", err)
	}
	close(stop)
	w := <-writes
	if id := domid(); id != before {
		t.Errorf("web's domain on hn1 changed from id %s to %q across the control link cut", before, id)
	}
	if w[0] < 20 || w[1] > 0 {
		t.Errorf("the guest's writes during the cut: %d done, %d failed; want them all done", w[0], w[1])
	}
	t.Logf("control link back: hn1 reports again, the same domain (id %s) runs web; the guest synced %d writes, none failed", before, w[0])

	// hn2's AoE frames are dropped at its switch port: the storage node no
	// longer hears it, and nothing that needs the storage node's disks
	// goes there.
	if out, err := In(l.SwitchNS, "nft", "add table bridge labcut; add chain bridge labcut forward { type filter hook forward priority 0; };"+
		" add rule bridge labcut forward iifname p-"+hn2.Name+" ether type 0x88a2 drop"); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	// Placed there just before the controller can know: hn2's attach of
	// db's disk gets no answer, and its agent keeps reporting meanwhile
	// (attaching has a budget per pass, under the agent timeout).
	if out, err := l.Fabric("instance", "create", "db", "--image", "tiny", "--memory", "64MiB", "--node", hn2.Name, "--start", "--wait", "0"); err != nil {
		t.Fatalf("db on hn2 right after its AoE frames were dropped: %v\n%s", err, out)
	}
	for t0 := time.Now(); time.Since(t0) < 8*time.Second; time.Sleep(500 * time.Millisecond) {
		out, _ := l.Fabric("node", "show", hn2.Name, "-o", "json")
		var n controllerapi.Node
		if !jsonInto(out, &n) || n.Status == nil || !n.Status.Alive {
			t.Fatalf("hn2's agent stopped reporting %.1f s after it began attaching a disk it cannot reach:\n%s", time.Since(t0).Seconds(), out)
		}
	}
	if out, err := l.Fabric("instance", "delete", "db"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("hn2 tried for 8 s to attach a disk it cannot reach and kept reporting")
	// Once sn1 has not heard hn2 for the controller's reach window (5 s).
	if err := waitFor(20*time.Second, func() bool {
		var sn controllerapi.StorageNode
		out, _ := l.Fabric("storage", "show", "sn1", "-o", "json")
		if !jsonInto(out, &sn) || sn.Report == nil {
			return false
		}
		at, ok := sn.Report.Heard[hn2.MAC]
		return !ok || time.Since(at) > 6*time.Second
	}); err != nil {
		t.Fatalf("sn1 still hears hn2 with its AoE frames dropped: %v", err)
	}
	out, err := l.Fabric("instance", "create", "db", "--image", "tiny", "--memory", "64MiB", "--node", hn2.Name)
	if err == nil || !strings.Contains(out, "reach none of the storage nodes holding the disk (sn1)") {
		t.Fatalf("placing db on hn2, whose AoE frames do not reach sn1: %v\n%s", err, out)
	}
	t.Logf("hn2 cut off from the storage: %s", strings.TrimSpace(out))
	if out, err := l.Fabric("instance", "migrate", "web", "--to", hn2.Name); err == nil || !strings.Contains(out, "reach none of the storage nodes") {
		t.Errorf("migrating web to hn2, which cannot reach its disk: %v\n%s", err, out)
	}
	if out, err := l.Fabric("instance", "create", "db", "--image", "tiny", "--memory", "64MiB"); err != nil || !strings.Contains(out, hn1.Name) {
		t.Errorf("db placed by the scheduler: %v\n%s (want hn1, the node reaching the storage)", err, out)
	}
}

// TestTwoFailures: hn1 runs lo (priority 1), hn2 runs hi (priority 10);
// both lose power. No node is left with room: both wait, with events. A
// node joins with room for one: hi comes back there and lo still waits.
// Another joins: lo comes back. Each answers ping from its new node.
func TestTwoFailures(t *testing.T) {
	images := skipUnlessLab(t)
	bin := buildBinaries(t)
	l := upLab(t, Config{Bin: bin, Images: images, Hosts: 4, Spare: 2})
	if _, err := l.Fabric("image", "import", "tiny", filepath.Join(images, "instance-template.img")); err != nil {
		t.Fatal(err)
	}
	ips := map[string]string{}
	for _, c := range []struct{ name, node, prio string }{{"lo", "hn1", "1"}, {"hi", "hn2", "10"}} {
		var in controllerapi.Instance
		fabricJSON(t, l, &in, "instance", "create", c.name, "--image", "tiny", "--vcpus", "1", "--memory", "128MiB", "--node", c.node, "--priority", c.prio, "--start")
		ips[c.name], _, _ = strings.Cut(in.IP, "/")
	}
	answers := func(name string) bool {
		_, err := In(l.ClientNS, "ping", "-c1", "-W1", ips[name])
		return err == nil
	}
	if err := waitFor(120*time.Second, func() bool { return answers("lo") && answers("hi") }); err != nil {
		t.Fatalf("lo and hi never answered ping: %v", err)
	}
	node := func(name string) string {
		var in controllerapi.Instance
		out, _ := l.Fabric("instance", "show", name, "-o", "json")
		jsonInto(out, &in)
		return in.Node
	}
	for _, h := range l.Hosts[:2] {
		if err := l.PowerOff(h); err != nil {
			t.Fatal(err)
		}
	}
	waits := func(name string) bool {
		events, _ := l.Fabric("events")
		return strings.Contains(events, "instance "+name+" of fenced node") && strings.Contains(events, "waits for a node with room")
	}
	if err := waitFor(30*time.Second, func() bool { return waits("lo") && waits("hi") }); err != nil {
		events, _ := l.Fabric("events")
		t.Fatalf("after hn1 and hn2 failed with no room left, lo and hi do not both wait: %v\n%s", err, events)
	}
	if st, _ := l.Fabric("status"); !strings.Contains(st, "2 fenced") {
		t.Errorf("fabric status does not count two fenced nodes:\n%s", st)
	}
	t.Logf("hn1 and hn2 lost power, no node left: lo and hi wait for room (events)")

	// hn3 joins with room for one 128 MiB instance: hi, by priority.
	hn3, hn4 := l.Hosts[2], l.Hosts[3]
	t0 := time.Now()
	if err := l.Join(hn3, "200MiB"); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(90*time.Second, func() bool { return node("hi") == hn3.Name && answers("hi") }); err != nil {
		t.Fatalf("hi did not come back on hn3 (on %s): %v", node("hi"), err)
	}
	t.Logf("hn3 joined with room for one: hi answers from hn3 %.1f s later", time.Since(t0).Seconds())
	if n := node("lo"); n != "hn1" {
		t.Errorf("lo moved to %s, which has no room for it", n)
	}
	t0 = time.Now()
	if err := l.Join(hn4, ""); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(90*time.Second, func() bool { return node("lo") == hn4.Name && answers("lo") }); err != nil {
		t.Fatalf("lo did not come back on hn4 (on %s): %v", node("lo"), err)
	}
	t.Logf("hn4 joined: lo answers from hn4 %.1f s later; hi still answers: %v", time.Since(t0).Seconds(), answers("hi"))
	if !answers("hi") {
		t.Error("hi stopped answering")
	}
}
