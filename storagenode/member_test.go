package storagenode_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fabric-project/fabric/aoe/initiator"
	"github.com/fabric-project/fabric/controller/controllerapi"
)

// TestPairReportsToController: both nodes of a pair enroll with a
// controller (one-time tokens, mutual TLS) and report; the controller
// knows each one's volumes and its role and sync state in the pair, and
// sees the pair change when the owner dies.
func TestPairReportsToController(t *testing.T) {
	l := newPairLab(t, 8<<20)
	l.waitInSync(20 * time.Second)
	c := serveController(t, l.Lab)
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, c.CACertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	// A storage node not started, to show as never reported.
	if _, err := c.Registry().Register(controllerapi.RegisterRequest{Name: "sn9", MAC: "52:54:00:99:00:09", Role: controllerapi.RoleStorage}); err != nil {
		t.Fatal(err)
	}
	for i, n := range l.Nodes {
		if _, err := c.Registry().Register(controllerapi.RegisterRequest{Name: n.Name, MAC: n.MAC, Role: controllerapi.RoleStorage}); err != nil {
			t.Fatal(err)
		}
		tok, err := c.Registry().IssueToken(n.Name, "test", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		l.Kill(n, syscall.SIGKILL)
		n.Args = append(n.Args, "--controller", fmt.Sprintf("https://10.78.%d.254:8443", i+1), "--ca", ca, "--name", n.Name, "--token", tok)
		l.Start(n)
	}
	l.waitInSync(30 * time.Second)
	wait := func(what string, ok func(map[string]controllerapi.StorageNode) bool) map[string]controllerapi.StorageNode {
		t.Helper()
		var got map[string]controllerapi.StorageNode
		for end := time.Now().Add(15 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
			ns, err := c.StorageNodes()
			if err != nil {
				t.Fatal(err)
			}
			got = map[string]controllerapi.StorageNode{}
			for _, n := range ns {
				got[n.Name] = n
			}
			if ok(got) {
				return got
			}
		}
		t.Fatalf("%s: the controller has %+v\n%s", what, got, l.Logs())
		return nil
	}
	own, other := l.Owner()
	got := wait("both report in sync", func(m map[string]controllerapi.StorageNode) bool {
		for _, n := range l.Nodes {
			if r := m[n.Name].Report; !m[n.Name].Alive || r == nil || r.Pair == nil || r.Pair.State != "in sync" {
				return false
			}
		}
		return true
	})
	for _, n := range l.Nodes {
		r := got[n.Name].Report
		want := "follower"
		if n == own {
			want = "owner"
		}
		if r.Pair.Role != want || r.Pair.Pair != "p1" || len(r.Volumes) != 1 || r.Volumes[0].Name != "vol1" || r.Volumes[0].Addr != "e7.1" ||
			r.Capacity.FreeBytes <= 0 || len(r.Interfaces) != 1 || r.Interfaces[0].MAC != n.MAC {
			t.Errorf("%s's report: %+v (pair %+v)", n.Name, r, r.Pair)
		}
	}
	if sn9 := got["sn9"]; sn9.Alive || sn9.Report != nil {
		t.Errorf("sn9 never started, but: %+v", sn9)
	}
	t.Logf("the controller sees %s owner and %s follower, both in sync, volume e7.1 on each", own.Name, other.Name)

	// The storage plane as a witness, and fencing through it: the
	// initiator stands in for hardware node hn1.
	iniMAC := l.in.MAC().String()
	if _, err := c.Registry().Register(controllerapi.RegisterRequest{Name: "hn1", MAC: iniMAC, Role: controllerapi.RoleHWNode}); err != nil {
		t.Fatal(err)
	}
	var quick *initiator.Initiator
	if err := l.ini.Do(func() (err error) {
		quick, err = initiator.New("ini0", initiator.Config{Timeout: 100 * time.Millisecond, MaxTimeout: 100 * time.Millisecond, Retries: 5})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer quick.Close()
	io := func() error {
		d, err := quick.Open(context.Background(), 7, 1, 300*time.Millisecond)
		if err != nil {
			return err
		}
		defer d.Close()
		_, err = d.WriteAt(make([]byte, 4096), 0)
		return err
	}
	if err := io(); err != nil {
		t.Fatalf("I/O before the fence: %v", err)
	}
	wait("both storage nodes saw I/O from hn1's MAC", func(m map[string]controllerapi.StorageNode) bool {
		for _, n := range l.Nodes {
			if r := m[n.Name].Report; r == nil || time.Since(r.Initiators[iniMAC]) > 5*time.Second {
				return false
			}
		}
		return true
	})
	start := time.Now()
	confirmed, err := c.Fence("hn1", "test", "test")
	if err != nil || len(confirmed) != 2 {
		t.Fatalf("fence: %v, confirmed by %v", err, confirmed)
	}
	t.Logf("hn1 fenced, confirmed by %v in %v", confirmed, time.Since(start).Round(time.Millisecond))
	if err := io(); err == nil {
		t.Fatal("the fenced MAC still reads and writes the volume")
	} else {
		t.Logf("the fenced MAC gets no answer: %v", err)
	}
	if err := c.Unfence("hn1", "test"); err != nil {
		t.Fatal(err)
	}
	if err := io(); err != nil {
		t.Fatalf("I/O after unfence: %v", err)
	}
	t.Logf("after unfence hn1's MAC reads and writes again")

	// Planned maintenance on the controller's word: the owner is drained
	// under 8 writers (hands over, stops serving: no failover's stall),
	// then undrained and back in sync through a resync; every block holds
	// its last acknowledged write, through each node.
	var drained controllerapi.StorageNode
	stall := l.phase("drain of the owner "+own.Name+" by the controller", func() {
		start := time.Now()
		if drained, err = c.DrainStorage(own.Name, "test"); err != nil {
			t.Errorf("drain: %v\n%s", err, l.Logs())
		}
		t.Logf("DrainStorage(%s) returned after %v", own.Name, time.Since(start).Round(time.Millisecond))
	}, 2*time.Second)
	if err != nil {
		t.FailNow()
	}
	if r := drained.Report; r == nil || !r.Drained || r.Pair.Serving {
		t.Errorf("%s after the drain: %+v", own.Name, r)
	}
	if stall > 200*time.Millisecond {
		t.Errorf("the drain stalled writes %v (bar: 200 ms, as a planned shutdown)", stall)
	}
	if _, err := c.DrainStorage(other.Name, "test"); err == nil || !strings.Contains(err.Error(), "would take its volumes offline") {
		t.Errorf("draining the last serving node of the pair: %v", err)
	}
	l.check("after the drain", other)
	start = time.Now()
	back, err := c.UndrainStorage(own.Name, "test", time.Minute)
	if err != nil {
		t.Fatalf("undrain: %v\n%s", err, l.Logs())
	}
	t.Logf("undrained: %s %s and %s again after %v", own.Name, back.Report.Pair.Role, back.Report.Pair.State, time.Since(start).Round(time.Millisecond))
	l.check("after the undrain", l.Nodes[0], l.Nodes[1])
	own, other = l.Owner()

	l.Kill(own, syscall.SIGKILL)
	wait("the owner dead, the other owning alone", func(m map[string]controllerapi.StorageNode) bool {
		r := m[other.Name].Report
		return !m[own.Name].Alive && m[other.Name].Alive && r != nil && r.Pair.Role == "owner" && r.Pair.State == "alone"
	})
	t.Logf("after kill -9 of %s the controller sees it not reporting and %s owning alone", own.Name, other.Name)

}
