package lab

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// wvStats reads the guest's write-verify loop (images/instance/init); op
// "start" starts it, waiting for the guest's web server to be up.
func wvStats(t *testing.T, l *Lab, ip, op string) (passes, errs int, longest time.Duration) {
	t.Helper()
	g, err := l.GuestIO(ip, op)
	for end := time.Now().Add(60 * time.Second); err != nil && op == "start" && time.Now().Before(end); time.Sleep(time.Second) {
		g, err = l.GuestIO(ip, op)
	}
	if err != nil {
		t.Fatal(err)
	}
	return g.Passes, g.Errors, g.Longest
}

// TestStoragePairUnderGuest: instance web runs on hn1 with its disk on a
// storage pair the controller made (sn1, sn2; hn1 reaches the disk over
// our initiator, through both storage nodes). Inside the guest a loop
// writes, fsyncs, drops its cache and reads back, and the client pings
// web, while: the owner is drained and undrained (a planned shutdown);
// the owner is killed (kill -9) and restarted; the other node is killed;
// the owner's link goes down for 5 s. After each, the guest has seen no
// I/O error, its longest pass is printed, and the pair resyncs. Then
// another instance's disk on the pair is loaded flat out with fio, capped
// and uncapped (ioIsolation).
func TestStoragePairUnderGuest(t *testing.T) {
	images := skipUnlessLab(t)
	bin := buildBinaries(t)
	l := upLab(t, Config{Bin: bin, Images: images, Hosts: 1, StoragePair: true})
	_, ip := webOnHN1(t, l, images)
	vols, _ := l.Fabric("volume", "list")
	if !strings.Contains(vols, "inst-web") || strings.Count(vols, "inst-web") != 2 {
		t.Fatalf("web's disk is not on both storage nodes:\n%s", vols)
	}
	t.Logf("fabric volume list:\n%s", vols)
	show, err := l.Fabric("volume", "show", "inst-web")
	if err != nil || !strings.Contains(show, "pair:") || strings.Count(show, "served") != 2 {
		t.Errorf("fabric volume show inst-web: %v\n%s", err, show)
	}
	t.Logf("fabric volume show inst-web:\n%s", show)
	if st, err := l.Fabric("storage", "status"); err != nil || !strings.Contains(st, "in sync") || !strings.Contains(st, ", 0 not served as wanted") {
		t.Errorf("fabric storage status: %v\n%s", err, st)
	} else {
		t.Logf("fabric storage status:\n%s", st)
	}
	if out, err := l.Fabric("instance", "create", "nowhere", "--image", "tiny", "--memory", "64MiB", "--storage", "nope"); err == nil ||
		!strings.Contains(out, `no storage pair or storage node named "nope"`) {
		t.Errorf("instance create --storage nope: %v\n%s", err, out)
	}
	if out, _ := l.Fabric("instance", "list"); strings.Contains(out, "nowhere") {
		t.Errorf("a refused create left an instance:\n%s", out)
	}
	if _, errs, _ := wvStats(t, l, ip, "start"); errs != 0 {
		t.Fatalf("write-verify errors before any fault: %d", errs)
	}
	time.Sleep(3 * time.Second)
	_, _, healthy := wvStats(t, l, ip, "")
	t.Logf("healthy: the guest's longest write-verify pass %v", healthy)
	p, err := l.StartProber(ip, filepath.Join(l.Dir, "pair-probe"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	owner := func() (own, other string) {
		t.Helper()
		p, err := l.PairInfo()
		if err != nil || p.Owner == "" {
			t.Fatalf("pair: %+v %v", p, err)
		}
		return p.Owner, map[string]string{"sn1": "sn2", "sn2": "sn1"}[p.Owner]
	}
	inSync := func(what string) {
		t.Helper()
		took, err := l.WaitPairInSync(90 * time.Second)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		t.Logf("%s: pair in sync again %.1f s later", what, took.Seconds())
	}
	var summary []string
	phase := func(name string, bar time.Duration, fault func(), after func()) {
		t.Helper()
		wvStats(t, l, ip, "reset")
		passes0, _, _ := wvStats(t, l, ip, "")
		fault()
		time.Sleep(6 * time.Second)
		passes, errs, longest := wvStats(t, l, ip, "")
		line := fmt.Sprintf("%s: guest's longest write-verify pass %v (healthy %v), %d passes, %d errors", name, longest, healthy, passes-passes0, errs)
		t.Log(line)
		summary = append(summary, line)
		if errs != 0 {
			t.Errorf("%s: the guest saw %d write-verify errors", name, errs)
		}
		if longest > bar+healthy {
			t.Errorf("%s: the guest's longest pass %v is over the bar (%v plus a healthy pass)", name, longest, bar)
		}
		if passes-passes0 < 3 {
			t.Errorf("%s: the guest's loop made %d passes in 6 s", name, passes-passes0)
		}
		after()
	}

	own, _ := owner()
	phase("planned shutdown of the owner "+own+" (fabric storage shutdown)", 200*time.Millisecond, func() {
		out, err := l.Fabric("storage", "shutdown", own)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "storage node "+own+" drained in") || !strings.Contains(out, "its daemon exits") || !strings.Contains(out, "fabric storage undrain "+own) {
			t.Errorf("fabric storage shutdown %s said: %q", own, out)
		}
	}, func() {
		if err := waitFor(10*time.Second, func() bool { return l.Exited(StorageProc(own)) }); err != nil {
			t.Fatalf("%s's daemon did not exit after fabric storage shutdown: %v", own, err)
		}
		if err := l.RestartStorage(StorageProc(own)); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Fabric("storage", "undrain", own); err != nil {
			t.Fatal(err)
		}
		inSync("restarted and undrained")
	})
	own, _ = owner()
	phase("kill -9 of the owner "+own, 2*time.Second, func() {
		if err := l.Kill(StorageProc(own)); err != nil {
			t.Fatal(err)
		}
	}, func() {
		if err := l.RestartStorage(StorageProc(own)); err != nil {
			t.Fatal(err)
		}
		inSync("owner restarted")
	})
	own, other := owner()
	phase("kill -9 of the follower "+other, 2*time.Second, func() {
		if err := l.Kill(StorageProc(other)); err != nil {
			t.Fatal(err)
		}
	}, func() {
		if err := l.RestartStorage(StorageProc(other)); err != nil {
			t.Fatal(err)
		}
		inSync("follower restarted")
	})
	own, _ = owner()
	ns := l.StorageNS
	if own == "sn2" {
		ns = l.Storage2NS
	}
	phase("link down on the owner "+own+" for 5 s", 2*time.Second, func() {
		if _, err := In(ns, "ip", "link", "set", "eth0", "down"); err != nil {
			t.Fatal(err)
		}
		time.AfterFunc(5*time.Second, func() { _, _ = In(ns, "ip", "link", "set", "eth0", "up") })
	}, func() { inSync("link back") })

	summary = append(summary, ioIsolation(t, l, ip)...)

	_, slow, h, err := p.Stop()
	if err != nil {
		t.Fatal(err)
	}
	summary = append(summary, fmt.Sprintf("ping at 1 Hz: %d sent, %d lost; HTTP: %d ok, %d failed, slowest %v", slow.Sent, slow.Lost(), h.OK, h.Failed, h.MaxLatency))
	t.Logf("summary:\n  %s", strings.Join(summary, "\n  "))
	if slow.Lost() > 0 {
		t.Errorf("1 Hz ping lost %d of %d", slow.Lost(), slow.Sent)
	}
	if h.Failed > 0 {
		t.Errorf("HTTP failed %d times", h.Failed)
	}
}
