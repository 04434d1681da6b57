package storagenode_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fabric-project/fabric/aoe/initiator"
	"github.com/fabric-project/fabric/controller"
	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/internal/aoeload"
	"github.com/fabric-project/fabric/internal/pairlab"
)

// TestControllerMadePair: two storage nodes that report to a controller
// (and were started with no pair of their own) become a pair on
// `fabric storage pair create`, with the controller as their witness. A
// volume cloned from an image goes to both; it is read through both
// paths; writes through both paths survive kill -9 of the owner and a
// planned drain, each copy identical after the resyncs; a volume made
// while one node is down reaches that node when it comes back, with what
// was written meanwhile. Bad pairings are refused with the reason.
func TestControllerMadePair(t *testing.T) {
	l, c := newControllerPair(t)
	waitFor := func(what string, d time.Duration, ok func() bool) {
		t.Helper()
		for end := time.Now().Add(d); !ok(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("%s: not within %v\n%s", what, d, l.Logs())
			}
		}
	}
	alive := func(names ...string) func() bool { return storageAlive(c, names...) }
	if _, err := c.Registry().Register(controllerapi.RegisterRequest{Name: "hn1", MAC: "52:54:00:99:00:01", Role: controllerapi.RoleHWNode}); err != nil {
		t.Fatal(err)
	}

	// Bad pairings.
	for _, bad := range []struct {
		nodes []string
		want  string
	}{
		{[]string{"sn1", "sn1"}, "cannot pair with itself"},
		{[]string{"sn1", "hn1"}, "hn1 is a hwnode node, not a storage node"},
		{[]string{"sn1"}, "a pair is two storage nodes"},
		{[]string{"sn1", "nope"}, "nope"},
	} {
		if _, err := c.CreatePair(controllerapi.PairRequest{Nodes: bad.nodes}, "test"); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("pair %v: %v, want an error saying %q", bad.nodes, err, bad.want)
		}
	}

	t0 := time.Now()
	info, err := c.CreatePair(controllerapi.PairRequest{Nodes: []string{"sn1", "sn2"}}, "test")
	if err != nil {
		t.Fatalf("pair create: %v\n%s", err, l.Logs())
	}
	t.Logf("pair %s formed in %v: owner %s, %v", info.Name, time.Since(t0).Round(time.Millisecond), info.Owner, info.Members)
	if info.State != "in sync" || info.Owner == "" {
		t.Fatalf("pair after create: %+v", info)
	}
	if _, err := c.CreatePair(controllerapi.PairRequest{Name: "again", Nodes: []string{"sn2", "sn1"}}, "test"); err == nil || !strings.Contains(err.Error(), "already in pair sn1-sn2") {
		t.Errorf("pairing sn2 and sn1 again: %v", err)
	}

	// A volume cloned from an image goes to both nodes of the pair.
	const size = 8 << 20
	img := make([]byte, size)
	for i := range img {
		img[i] = byte(i/512) ^ 0x5a
	}
	if _, err := c.ImportImage("tiny", size, func(f *os.File) error { _, err := f.Write(img); return err }); err != nil {
		t.Fatal(err)
	}
	iniMAC := strings.TrimSpace(l.ini.Must(t, "cat", "/sys/class/net/ini0/address"))
	t0 = time.Now()
	for _, bad := range []struct{ on, want string }{
		{"sn1", "storage node sn1 is one of pair sn1-sn2: name the pair"},
		{"nope", `no storage pair or storage node named "nope"`},
	} {
		if _, err := c.Volumes().Clone("tiny", "inst-a", "e5.1", []string{iniMAC}, bad.on); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("clone on %s: %v, want %q", bad.on, err, bad.want)
		}
	}
	where, err := c.Volumes().Clone("tiny", "inst-a", "e5.1", []string{iniMAC}, "sn1-sn2")
	if err != nil {
		t.Fatalf("clone: %v\n%s", err, l.Logs())
	}
	t.Logf("clone %s in %v", where, time.Since(t0).Round(time.Millisecond))
	if !strings.Contains(where, "pair sn1-sn2 (sn1, sn2), as asked") {
		t.Errorf("the clone went %s, want the pair", where)
	}
	octx, ocancel := context.WithTimeout(context.Background(), 3*time.Second)
	d, err := l.in.Open(octx, 5, 1, 500*time.Millisecond)
	ocancel()
	if err != nil {
		t.Fatalf("open e5.1: %v\n%s", err, l.Logs())
	}
	if len(d.Paths) != 2 {
		t.Errorf("e5.1 answers through %v, want both storage nodes", d.Paths)
	}
	got := make([]byte, size)
	if _, err := d.ReadAt(got, 0); err != nil || !bytes.Equal(got, img) {
		t.Fatalf("e5.1 through both paths: %v (equal %v)", err, bytes.Equal(got, img))
	}
	d.Close()

	vd, err := c.VolumeShow("inst-a")
	if err != nil || vd.Pair != "sn1-sn2" || len(vd.Copies) != 2 || vd.Addr != "e5.1" {
		t.Fatalf("fabric volume show inst-a: %+v %v", vd, err)
	}
	for i, cp := range vd.Copies {
		if n := l.Nodes[i]; cp.Storage != n.Name || cp.State != "served" || cp.Sync != "in sync" || len(cp.Paths) != 1 || cp.Paths[0] != n.MAC {
			t.Errorf("fabric volume show inst-a, copy %d: %+v (want on %s, served in sync through %s)", i, cp, n.Name, n.MAC)
		}
	}
	if _, err := c.VolumeShow("nope"); !errors.Is(err, controller.ErrNotFound) {
		t.Errorf("fabric volume show nope: %v", err)
	}

	// An I/O cap holds for the volume, not per node: frames spread over
	// both paths, and each node grants half while both serve.
	if err := c.Volumes().Limit("inst-a", 200, 0); err != nil {
		t.Fatal(err)
	}
	octx, ocancel = context.WithTimeout(context.Background(), 3*time.Second)
	d, err = l.in.Open(octx, 5, 1, 500*time.Millisecond)
	ocancel()
	if err != nil {
		t.Fatal(err)
	}
	capped := readRate(t, d, 8, 1500*time.Millisecond)
	d.Close()
	t.Logf("reads of inst-a capped at 200 IOPS, through both paths: %.0f/s", capped)
	if capped < 150 || capped > 260 {
		t.Errorf("inst-a capped at 200 IOPS reads at %.0f/s through both paths", capped)
	}
	if err := c.Volumes().Limit("inst-a", 0, 0); err != nil {
		t.Fatal(err)
	}

	// Writes through both paths survive the owner's death and a planned
	// drain; the copies are identical after each resync.
	l.setBlocks(size)
	l.check("fresh clone", l.Nodes[0], l.Nodes[1])
	l.phase("healthy", func() {}, time.Second)
	l.check("healthy", l.Nodes[0], l.Nodes[1])
	own, other := l.Owner()
	stall := l.phase("kill -9 of the owner "+own.Name, func() { l.Kill(own, syscall.SIGKILL) }, 3*time.Second)
	if stall > 2*time.Second {
		t.Errorf("kill -9 of the owner: writes stalled %v (bar 2 s)", stall)
	}
	l.check("owner killed", other)
	l.Start(own)
	l.waitInSync(30 * time.Second)
	l.check("owner back, resynced", l.Nodes[0], l.Nodes[1])
	waitFor("the event log tells the owner's death and return", 10*time.Second, func() bool {
		evs, _ := c.Registry().Events(0, 1000)
		var down, up, degraded, synced bool
		for _, e := range evs {
			down = down || e.Type == controllerapi.EventStorageDown && e.Node == own.Name
			up = up || e.Type == controllerapi.EventStorageUp && e.Node == own.Name
			degraded = degraded || e.Type == controllerapi.EventPairState && strings.Contains(e.Message, "degraded")
			synced = synced || e.Type == controllerapi.EventPairState && strings.Contains(e.Message, "pair sn1-sn2: in sync (was")
		}
		return down && up && degraded && synced
	})
	waitFor("the controller sees the pair in sync", 10*time.Second, func() bool {
		ps, _ := c.Pairs()
		return len(ps) == 1 && ps[0].State == "in sync"
	})
	own, _ = l.Owner()
	var drainErr error
	stall = l.phase("drain of the owner "+own.Name, func() { _, drainErr = c.DrainStorage(own.Name, "test") }, 2*time.Second)
	if drainErr != nil {
		t.Fatalf("drain: %v", drainErr)
	}
	t.Logf("planned drain of the owner: longest write stall %v", stall.Round(time.Millisecond))
	if stall > time.Second {
		t.Errorf("drain of the owner: writes stalled %v", stall)
	}
	if _, err := c.UndrainStorage(own.Name, "test", 30*time.Second); err != nil {
		t.Fatalf("undrain: %v\n%s", err, l.Logs())
	}
	l.waitInSync(30 * time.Second)
	l.check("drained and back", l.Nodes[0], l.Nodes[1])

	// fabric storage shutdown: drained, the daemon exits (status 0);
	// started again it stays out until undrained, and does not exit again.
	_, fol := l.Owner()
	if _, err := c.ShutdownStorage(fol.Name, "test"); err != nil {
		t.Fatalf("shutdown of %s: %v\n%s", fol.Name, err, l.Logs())
	}
	if err := l.Exited(fol, 10*time.Second); err != nil {
		t.Fatalf("after fabric storage shutdown %s: %v\n%s", fol.Name, err, l.Logs())
	}
	l.Start(fol)
	waitFor(fol.Name+" reports drained after its restart", 20*time.Second, func() bool {
		sns, _ := c.StorageNodes()
		for _, sn := range sns {
			if sn.Name == fol.Name && sn.Alive && sn.Report != nil && sn.Report.Drained {
				return true
			}
		}
		return false
	})
	time.Sleep(2 * time.Second)
	if !alive(fol.Name)() {
		t.Fatalf("%s exited again after its restart\n%s", fol.Name, l.Logs())
	}
	if _, err := c.UndrainStorage(fol.Name, "test", 30*time.Second); err != nil {
		t.Fatalf("undrain after shutdown: %v\n%s", err, l.Logs())
	}
	l.waitInSync(30 * time.Second)
	t.Logf("fabric storage shutdown %s: drained, exited 0, restarted drained, undrained and in sync", fol.Name)

	// A volume made while one node is down: the other holds it alone and
	// takes writes; the node that comes back makes it and the resync
	// brings it what was written.
	own, other = l.Owner()
	l.Kill(other, syscall.SIGKILL)
	waitFor(other.Name+" reported down", 10*time.Second, func() bool { return !alive(other.Name)() })
	if _, err := c.Volumes().Clone("tiny", "inst-b", "e5.2", []string{iniMAC}, ""); err != nil {
		t.Fatalf("clone with %s down: %v", other.Name, err)
	}
	l.vol, l.slot = "inst-b", 2
	l.setBlocks(size)
	l.phase("inst-b on "+own.Name+" alone", func() {}, time.Second)
	l.Start(other)
	l.waitInSync(60 * time.Second)
	l.check("inst-b after "+other.Name+" came back", l.Nodes[0], l.Nodes[1])

	vols := c.Volumes()
	// Two volumes on the pair: inst-a capped and read flat out through
	// both paths, inst-b's read latency stays within 2x of idle; the cap
	// raised live is in force within a second.
	open := func(slot uint8) *initiator.Device {
		t.Helper()
		octx, ocancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer ocancel()
		d, err := l.in.Open(octx, 5, slot, 500*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	da, db := open(1), open(2)
	median := func(d *initiator.Device, n int) time.Duration {
		m, err := aoeload.MedianLatency(d, n, 1024)
		if err != nil {
			t.Error(err)
		}
		return m
	}
	if err := c.Volumes().Limit("inst-a", 300, 0); err != nil {
		t.Fatal(err)
	}
	idle := median(db, 300)
	var busy time.Duration
	var raised float64
	doneB := make(chan struct{})
	go func() {
		defer close(doneB)
		time.Sleep(300 * time.Millisecond)
		busy = median(db, 300)
	}()
	capped = readRate(t, da, 8, 2*time.Second)
	<-doneB
	if err := c.Volumes().Limit("inst-a", 1000, 0); err != nil {
		t.Fatal(err)
	}
	raised = readRate(t, da, 8, time.Second)
	da.Close()
	db.Close()
	t.Logf("inst-a capped at 300 IOPS, read flat out through both paths: %.0f/s; inst-b median read latency %v idle, %v meanwhile; cap raised live to 1000: %.0f/s in the next second",
		capped, idle, busy, raised)
	if capped < 240 || capped > 360 {
		t.Errorf("inst-a under a 300 IOPS cap: %.0f reads/s", capped)
		for _, n := range l.Nodes {
			st := l.Status(n)
			t.Logf("%s: %s, %s, serving %v, peer connected %v; events:\n  %s", n.Name, st.Role, st.State, st.Serving, st.PeerConnected,
				strings.Join(st.Events, "\n  "))
		}
	}
	if busy > 2*idle+100*time.Microsecond {
		t.Errorf("inst-b's median latency went from %v to %v while inst-a ran flat out (bar: within 2x)", idle, busy)
	}
	if raised < 800 || raised > 1200 {
		t.Errorf("inst-a's cap raised live to 1000 IOPS: %.0f reads/s in the next second", raised)
	}
	if err := c.Volumes().Limit("inst-a", 0, 0); err != nil {
		t.Fatal(err)
	}

	// Growing a volume on the pair: both copies grow, the pair stays in
	// sync, the new end is there through both paths.
	if err := vols.Resize("inst-a", 4<<20); err == nil || !strings.Contains(err.Error(), "shrinking") {
		t.Errorf("shrinking inst-a: %v", err)
	}
	t0 = time.Now()
	if err := vols.Resize("inst-a", 16<<20); err != nil {
		t.Fatalf("growing inst-a: %v\n%s", err, l.Logs())
	}
	t.Logf("inst-a grown to 16 MiB on both nodes in %v", time.Since(t0).Round(time.Millisecond))
	l.waitInSync(10 * time.Second)
	octx, ocancel = context.WithTimeout(context.Background(), 3*time.Second)
	d, err = l.in.Open(octx, 5, 1, 500*time.Millisecond)
	ocancel()
	if err != nil || d.Size() != 16<<20 || len(d.Paths) != 2 {
		t.Fatalf("inst-a after growing: %v (size %d, paths %v)", err, d.Size(), d.Paths)
	}
	tail := bytes.Repeat([]byte{0xc3}, 4096)
	if _, err := d.WriteAt(tail, 16<<20-4096); err != nil {
		t.Fatalf("writing the grown end: %v", err)
	}
	d.Close()
	l.waitInSync(10 * time.Second)
	if a, b := fileSum(t, l.VolumePath(l.Nodes[0], "inst-a")), fileSum(t, l.VolumePath(l.Nodes[1], "inst-a")); a != b {
		t.Errorf("inst-a's copies differ after growing and writing its end: %s, %s", a, b)
	}

	// A pair member holding volumes is not removed, even with --force.
	if _, err := c.RemoveNode("sn1", true, "test"); err == nil || !strings.Contains(err.Error(), "one of pair sn1-sn2, which holds inst-a, inst-b") {
		t.Errorf("removing sn1: %v", err)
	}

	// A volume larger than any pair's free space is refused up front.
	vols = c.Volumes()
	if _, err := vols.Clone("nosuch", "inst-c", "e5.3", nil, ""); err == nil {
		t.Error("a clone of a missing image succeeded")
	}
	ps, err := c.Pairs()
	if err != nil || len(ps) != 1 || ps[0].FreeBytes <= 0 {
		t.Fatalf("pairs: %+v %v", ps, err)
	}
	t.Logf("fabric storage pair list: %+v", ps[0])
	huge := ps[0].FreeBytes + 1<<30
	_, err = c.ImportImage("huge", huge, func(f *os.File) error { return nil }) // sparse
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vols.Clone("huge", "inst-c", "e5.3", nil, ""); !errors.Is(err, controller.ErrUnplaceable) || !strings.Contains(err.Error(), "no storage has room") {
		t.Errorf("a clone larger than the pair's free space: %v", err)
	}
	if _, err := vols.Clone("huge", "inst-c", "e5.3", nil, "sn1-sn2"); !errors.Is(err, controller.ErrUnplaceable) || !strings.Contains(err.Error(), "pair sn1-sn2 has") {
		t.Errorf("a clone larger than the named pair's free space: %v", err)
	}
	for _, n := range l.Nodes {
		if _, err := os.Stat(filepath.Join(n.Dir, "volumes", "inst-c.img")); err == nil {
			t.Errorf("%s holds a leftover of the refused clone", n.Name)
		}
	}
}

// newControllerPair is a controller (no pool of its own) serving in the
// pair lab's witness namespace and the pair's two storage nodes, started
// with --controller and --replication-listen and no pair of their own,
// both reporting.
func newControllerPair(t *testing.T) (*pairLab, *controller.Controller) {
	t.Helper()
	l := newPairLabStopped(t)
	l.shelf, l.slot, l.vol = 5, 1, "inst-a"
	c := serveController(t, l.Lab)
	startMembers(t, c, l.Lab)
	return l, c
}

// serveController runs a controller without a pool of its own, serving
// its API on :8443 in the pair lab's witness namespace (the nodes reach it
// at 10.78.1.254 and 10.78.2.254).
func serveController(t *testing.T, l *pairlab.Lab) *controller.Controller {
	t.Helper()
	c, err := controller.New(controller.Config{StateDir: t.TempDir(), BootSubnet: netip.MustParsePrefix("10.79.0.0/24"),
		ServerIP: netip.MustParseAddr("10.79.0.1"), APIHosts: []string{"10.78.1.254", "10.78.2.254"}, AgentTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var ln net.Listener
	if err := l.Wit.Do(func() (err error) { ln, err = net.Listen("tcp", ":8443"); return err }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- c.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-served })
	return c
}

// startMembers registers a pair lab's two nodes with c and starts them
// with --controller (at their witness namespace's addresses, where c or
// a proxy to it listens) and --replication-listen, no pair of their own;
// it returns once both report.
func startMembers(t *testing.T, c *controller.Controller, l *pairlab.Lab) {
	t.Helper()
	l.StartMembers(c.Registry(), c.CACertPEM())
	for end := time.Now().Add(20 * time.Second); !storageAlive(c, l.Nodes[0].Name, l.Nodes[1].Name)(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the storage nodes do not report\n%s", l.Logs())
		}
	}
}

// storageAlive says whether the controller hears every named storage node.
func storageAlive(c *controller.Controller, names ...string) func() bool {
	return func() bool {
		sns, _ := c.StorageNodes()
		n := 0
		for _, sn := range sns {
			if sn.Alive && slices.Contains(names, sn.Name) {
				n++
			}
		}
		return n == len(names)
	}
}

// readRate reads 1 KiB blocks (one frame each) of d with workers
// goroutines for dur and returns reads per second.
func readRate(t *testing.T, d *initiator.Device, workers int, dur time.Duration) float64 {
	t.Helper()
	ops, err := aoeload.Rate(d, workers, 1024, 4096, dur)
	if err != nil {
		t.Error(err)
	}
	return ops
}
