package storagenode_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fabric-project/fabric/aoe/initiator"
	"github.com/fabric-project/fabric/internal/netns"
	"github.com/fabric-project/fabric/internal/pairlab"
	"github.com/fabric-project/fabric/internal/writelog"
	"github.com/fabric-project/fabric/storagenode"
	"github.com/fabric-project/fabric/storagenode/replication"
	"github.com/fabric-project/fabric/storagenode/witness"
)

// pairLab is a storage pair (internal/pairlab) on a switch with an
// initiator: our own, sending each 4 KiB write as frames spread over both
// nodes' MACs, the way the Linux driver does.
type pairLab struct {
	*pairlab.Lab
	t        *testing.T
	ini      *netns.NS
	dev      *initiator.Device
	in       *initiator.Initiator
	shelf    uint16
	slot     uint8
	blockSz  int
	vol      string // the volume's name in the pools
	blocks   uint64
	log      *writelog.Log
	mu       sync.Mutex
	failures int
}

func newPairLab(t *testing.T, volSize int64) *pairLab {
	t.Helper()
	l := newPairLabStopped(t)
	l.Volume("vol1", volSize, "7.1", "")
	l.StartAll()
	l.setBlocks(volSize)
	return l
}

// setBlocks sizes the write log for a volume of volSize bytes.
func (l *pairLab) setBlocks(volSize int64) {
	l.t.Helper()
	l.blocks = uint64(volSize / int64(l.blockSz))
	var err error
	if l.log, err = writelog.New(l.blocks, l.blockSz); err != nil {
		l.t.Fatal(err)
	}
}

// newPairLabStopped is the pair's machines and the initiator, with
// nothing in the pools and nothing started.
func newPairLabStopped(t *testing.T) *pairLab {
	t.Helper()
	netns.Skip(t)
	sw, ini := netns.New(t, "psw"), netns.New(t, "pini")
	sw.Must(t, "ip", "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
	sw.Must(t, "ip", "link", "set", "br0", "up")
	netns.Veth(t, ini, "ini0", "", sw, "pi", "")
	sw.Must(t, "ip", "link", "set", "pi", "master", "br0")
	pl := pairlab.New(t, pairlab.Fabricd(t, ".."), sw, "br0")
	l := &pairLab{Lab: pl, t: t, ini: ini, shelf: 7, slot: 1, blockSz: 4096, vol: "vol1"}
	if err := ini.Do(func() (err error) {
		l.in, err = initiator.New("ini0", initiator.Config{Window: 32, Timeout: 100 * time.Millisecond, MaxTimeout: 200 * time.Millisecond, Retries: 60})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.in.Close() })
	return l
}

func (l *pairLab) waitInSync(within time.Duration) {
	l.t.Helper()
	if err := l.WaitInSync(within); err != nil {
		l.t.Fatal(err)
	}
}

func (l *pairLab) volPath(n *pairlab.Node) string { return l.VolumePath(n, l.vol) }
func (l *pairLab) dumpLogs()                      { l.t.Log(l.Logs()) }

// open opens the volume through both nodes' MACs.
func (l *pairLab) open() {
	l.t.Helper()
	var ts []initiator.Target
	for _, n := range l.Nodes {
		mac, _ := net.ParseMAC(n.MAC)
		ts = append(ts, initiator.Target{Shelf: l.shelf, Slot: l.slot, MAC: mac, MaxSectors: 255})
	}
	d, err := l.in.OpenTargets(context.Background(), ts)
	if err != nil {
		l.t.Fatal(err)
	}
	l.dev = d
}

// writers writes stamped blocks with workers goroutines (disjoint blocks)
// until stop is closed.
func (l *pairLab) writers(workers int, stop chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for {
				select {
				case <-stop:
					return
				default:
				}
				blk := uint64(r.IntN(int(l.blocks)/workers))*uint64(workers) + uint64(w)
				s, b, err := l.log.Next(blk)
				if err != nil {
					continue
				}
				if _, err := l.dev.WriteAt(b, int64(blk)*int64(l.blockSz)); err != nil {
					l.log.Failed(s)
					l.mu.Lock()
					l.failures++
					l.mu.Unlock()
					continue
				}
				l.log.Acked(s, time.Now())
			}
		}()
	}
	return &wg
}

// verifyThrough reads every block through one node's MAC alone.
func (l *pairLab) verifyThrough(n *pairlab.Node) writelog.Report {
	l.t.Helper()
	mac, _ := net.ParseMAC(n.MAC)
	d, err := l.in.OpenTargets(context.Background(), []initiator.Target{{Shelf: l.shelf, Slot: l.slot, MAC: mac, MaxSectors: 255}})
	if err != nil {
		l.t.Fatalf("open through %s: %v", n.Name, err)
	}
	defer d.Close()
	rep, err := l.log.Verify(func(block uint64, b []byte) error {
		_, err := d.ReadAt(b, int64(block)*int64(l.blockSz))
		return err
	})
	if err != nil {
		l.t.Fatalf("reading through %s: %v", n.Name, err)
	}
	return rep
}

func fileSum(t *testing.T, path string) string {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))[:16]
}

// phase runs writers through a fault: writes for a second, fault(),
// writes for after, then stops and returns the longest write stall.
func (l *pairLab) phase(name string, fault func(), after time.Duration) time.Duration {
	l.t.Helper()
	l.open()
	stop := make(chan struct{})
	wg := l.writers(8, stop)
	time.Sleep(time.Second)
	l.log.ResetGap()
	fault()
	time.Sleep(after)
	close(stop)
	wg.Wait()
	stall := l.log.LongestGap()
	l.dev.Close()
	l.t.Logf("%s: longest write stall %v; %d blocks hold acknowledged writes; %d writes failed so far", name, stall.Round(time.Millisecond), l.log.Acknowledged(), l.failures)
	return stall
}

// check verifies every block through each live node and, when both are
// up and in sync, that their volume files are identical.
func (l *pairLab) check(name string, live ...*pairlab.Node) {
	l.t.Helper()
	for _, n := range live {
		rep := l.verifyThrough(n)
		if rep.Bad > 0 {
			l.dumpLogs()
			l.t.Fatalf("%s: reading through %s: %d of %d blocks wrong (%d acknowledged): %v", name, n.Name, rep.Bad, rep.Blocks, rep.Acknowledged, rep.Errors)
		}
		l.t.Logf("%s: through %s: all %d blocks hold their last acknowledged write or a later one (%d acknowledged)", name, n.Name, rep.Blocks, rep.Acknowledged)
	}
	if len(live) == 2 {
		a, b := fileSum(l.t, l.volPath(l.Nodes[0])), fileSum(l.t, l.volPath(l.Nodes[1]))
		if a != b {
			l.t.Fatalf("%s: copies differ after resync: sn1 %s, sn2 %s", name, a, b)
		}
		l.t.Logf("%s: both copies identical (sha256 %s)", name, a)
	}
}

func TestPairFaults(t *testing.T) {
	l := newPairLab(t, 32<<20)
	l.waitInSync(20 * time.Second)
	own, fol := l.Owner()
	t.Logf("pair in sync; owner %s", own.Name)
	for _, n := range []*pairlab.Node{own, fol} {
		out, err := exec.Command(l.Bin, "storage", "status", "--data-dir", n.Dir).CombinedOutput()
		role := map[bool]string{true: "owner", false: "follower"}[n == own]
		if err != nil || !strings.Contains(string(out), n.Name+" is "+role) || !strings.Contains(string(out), "state: in sync") ||
			!strings.Contains(string(out), "e7.1") || !strings.Contains(string(out), n.MAC+" on aoe0") {
			t.Errorf("fabricd storage status on %s: %v\n%s", n.Name, err, out)
		} else {
			t.Logf("fabricd storage status on %s:\n%s", n.Name, out)
		}
	}
	var stalls []string
	bar := 2 * time.Second
	record := func(name string, d time.Duration) {
		stalls = append(stalls, fmt.Sprintf("%s %v", name, d.Round(time.Millisecond)))
		if d > bar {
			t.Errorf("%s: writes stalled %v (bar: resume within %v)", name, d, bar)
		}
	}

	// Healthy: writes through both paths, reads through each.
	record("healthy", l.phase("healthy", func() {}, time.Second))
	l.check("healthy", l.Nodes[0], l.Nodes[1])

	// kill -9 of the owner.
	own, other := l.Owner()
	record("kill -9 owner", l.phase("kill -9 of the owner "+own.Name, func() { l.Kill(own, syscall.SIGKILL) }, 3*time.Second))
	if s := l.Status(other); s.Role != "owner" {
		t.Fatalf("after the owner died, %s is %s (%s)", other.Name, s.Role, s.State)
	}
	l.check("owner killed", other)
	l.Start(own)
	l.waitInSync(30 * time.Second)
	l.check("owner restarted and resynced", l.Nodes[0], l.Nodes[1])

	// kill -9 of the follower.
	own, other = l.Owner()
	record("kill -9 follower", l.phase("kill -9 of the follower "+other.Name, func() { l.Kill(other, syscall.SIGKILL) }, 3*time.Second))
	if s := l.Status(own); s.Role != "owner" || s.State != "alone" {
		t.Errorf("after the follower died, %s is %s, %s", own.Name, s.Role, s.State)
	}
	l.check("follower killed", own)
	l.Start(other)
	l.waitInSync(30 * time.Second)
	l.check("follower restarted and resynced", l.Nodes[0], l.Nodes[1])

	// SIGSTOP of the owner past its lease, then SIGCONT.
	own, other = l.Owner()
	record("SIGSTOP owner", l.phase("SIGSTOP of the owner "+own.Name+" for 4 s", func() {
		l.Kill(own, syscall.SIGSTOP)
		time.AfterFunc(4*time.Second, func() { l.Kill(own, syscall.SIGCONT) })
	}, 6*time.Second))
	if os.Getenv("PAIR_DEBUG") != "" {
		l.dumpLogs()
	}
	l.waitInSync(30 * time.Second)
	if s := l.Status(other); s.Role != "owner" {
		t.Errorf("after the owner was stopped past its lease, %s is %s", other.Name, s.Role)
	}
	l.check("owner stopped and resumed", l.Nodes[0], l.Nodes[1])

	// The replication link cut while both nodes still reach initiators
	// and the witness: one side acknowledges, the other goes silent.
	own, other = l.Owner()
	var during storagenode.PairStatus
	record("link cut", l.phase("replication link cut for 3 s", func() {
		own.NS.Must(t, "ip", "link", "set", "rep0", "down")
		time.AfterFunc(2500*time.Millisecond, func() { during = l.Status(other) })
		time.AfterFunc(3*time.Second, func() { own.NS.Must(t, "ip", "link", "set", "rep0", "up") })
	}, 4*time.Second))
	if during.Serving || during.Role == "owner" {
		t.Errorf("during the cut the follower %s was %s, serving %v (want silent)", other.Name, during.Role, during.Serving)
	} else {
		t.Logf("during the cut: %s %s, serving %v (%s)", other.Name, during.Role, during.Serving, during.State)
	}
	l.waitInSync(30 * time.Second)
	l.check("link restored and resynced", l.Nodes[0], l.Nodes[1])
	t.Logf("write stalls: %s", strings.Join(stalls, "; "))
}

// TestPairPlannedShutdown: stopping a node (SIGTERM) hands ownership over
// or voids the follower's read lease first, so writes barely stall; the
// node comes back through a resync of what changed meanwhile only.
func TestPairPlannedShutdown(t *testing.T) {
	l := newPairLab(t, 32<<20)
	l.waitInSync(20 * time.Second)
	var stalls []string
	for _, who := range []string{"owner", "follower"} {
		own, other := l.Owner()
		victim, survivor := own, other
		if who == "follower" {
			victim, survivor = other, own
		}
		var stopErr error
		d := l.phase("planned shutdown of the "+who+" "+victim.Name, func() { stopErr = l.Stop(victim) }, 2*time.Second)
		if stopErr != nil {
			t.Fatal(stopErr)
		}
		stalls = append(stalls, fmt.Sprintf("%s %v", who, d.Round(time.Millisecond)))
		if s := l.Status(survivor); s.Role != "owner" || s.State != "alone" {
			t.Errorf("after %s's planned shutdown %s is %s, %s", victim.Name, survivor.Name, s.Role, s.State)
		}
		if d > 200*time.Millisecond {
			t.Errorf("planned shutdown of the %s stalled writes %v (bar: 200 ms)", who, d)
		}
		l.check("after the "+who+"'s planned shutdown", survivor)
		l.Start(victim)
		l.waitInSync(30 * time.Second)
		ev := strings.Join(l.Status(survivor).Events, "\n")
		if !strings.Contains(ev, victim.Name+" connected (changed regions only resync)") {
			t.Errorf("%s came back with a full resync after a planned shutdown:\n%s", victim.Name, ev)
		}
		l.check("after the "+who+" came back", l.Nodes[0], l.Nodes[1])
	}
	t.Logf("write stalls of planned shutdowns: %s", strings.Join(stalls, "; "))
}

// waitWaiting waits up to 10 s for n's status to say it waits for
// something containing what, and returns the status.
func (l *pairLab) waitWaiting(n *pairlab.Node, what string) storagenode.PairStatus {
	var s storagenode.PairStatus
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if s = l.Status(n); strings.Contains(s.Waiting, what) {
			break
		}
	}
	return s
}

// TestPairBadPeers: what a pair refuses, and the counters that say so.
func TestPairBadPeers(t *testing.T) {
	l := newPairLab(t, 8<<20)
	l.waitInSync(20 * time.Second)
	own, other := l.Owner()
	ownIdx := slices.Index(l.Nodes[:], own)

	// Garbage, a truncated message, and a hello from an unknown node, on
	// the owner's replication port.
	before := l.Status(own).Counters
	send := func(b []byte) {
		if err := other.NS.Do(func() error {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("10.77.0.%d:7410", ownIdx+1), time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.Write(b)
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			io.Copy(io.Discard, c)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	send([]byte("GET / HTTP/1.0\r\n\r\n"))
	hello, _ := replication.Append(nil, &replication.Hello{Pair: "p1", Node: "sn1", MACs: [][6]byte{}})
	send(hello[:len(hello)-3])
	stranger, _ := replication.Append(nil, &replication.Hello{Pair: "p1", Node: "mallory", MACs: [][6]byte{}})
	send(stranger)
	time.Sleep(700 * time.Millisecond)
	after := l.Status(own).Counters
	if after.Dropped < before.Dropped+2 || after.Refused < before.Refused+1 {
		t.Errorf("garbage, truncated and unknown-peer connections: dropped %d -> %d, refused %d -> %d", before.Dropped, after.Dropped, before.Refused, after.Refused)
	}
	if s := l.Status(own); s.State != "in sync" {
		t.Errorf("after bad connections the pair is %q", s.State)
	}

	// A peer whose volume has another size: refused with a message.
	l.Kill(other, syscall.SIGKILL)
	if err := os.Truncate(l.volPath(other), 4<<20); err != nil {
		t.Fatal(err)
	}
	l.Start(other)
	s := l.waitWaiting(other, "sectors")
	if !strings.Contains(s.Waiting, "volumes differ") || s.Serving {
		t.Errorf("peer with a smaller volume: serving %v, waiting %q", s.Serving, s.Waiting)
	} else {
		t.Logf("peer with a smaller volume refused: %s", s.Waiting)
	}

	// A peer with another epoch history.
	l.Kill(other, syscall.SIGKILL)
	if err := os.Truncate(l.volPath(other), 8<<20); err != nil {
		t.Fatal(err)
	}
	st, _ := os.ReadFile(filepath.Join(other.Dir, "pair.json"))
	var pd map[string]any
	json.Unmarshal(st, &pd)
	pd["epoch"] = 99
	st, _ = json.Marshal(pd)
	os.WriteFile(filepath.Join(other.Dir, "pair.json"), st, 0o644)
	l.Start(other)
	s = l.waitWaiting(other, "epoch")
	if !strings.Contains(s.Waiting, "epoch history differs") || s.Serving {
		t.Errorf("peer with epoch 99: serving %v, waiting %q", s.Serving, s.Waiting)
	} else {
		t.Logf("peer with another epoch history refused: %s", s.Waiting)
	}
	if o := l.Status(own); o.Role != "owner" {
		t.Errorf("the owner stepped down for a peer's claimed epoch: %+v", o)
	}

	// The witness takes ownership away (released on the owner's behalf,
	// as after a lost or replaced witness state file): the owner's next
	// renewal is refused and it steps down; it may then win a new,
	// higher epoch, never keep the old one.
	epoch := l.Status(own).Epoch
	l.Kill(other, syscall.SIGKILL)
	time.Sleep(2 * time.Second) // the owner's lease at the witness runs on, renewed
	rep, err := l.Witness.Do(witness.Request{Pair: "p1", Node: own.Name, Op: witness.OpRelease, Epoch: epoch})
	if err != nil || !rep.Granted {
		t.Fatalf("release: %v %+v", err, rep)
	}
	rep, err = l.Witness.Do(witness.Request{Pair: "p1", Node: other.Name, Op: witness.OpAcquire})
	if err == nil && !rep.Granted {
		t.Logf("witness refused %s: %s", other.Name, rep.Reason)
	}
	deadline := time.Now().Add(5 * time.Second)
	var o storagenode.PairStatus
	for time.Now().Before(deadline) {
		if o = l.Status(own); o.Role != "owner" || o.Epoch > epoch {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if o.Role == "owner" && o.Epoch == epoch {
		t.Errorf("%s still owns epoch %d after the witness moved on: %+v", own.Name, epoch, o)
	} else {
		t.Logf("%s left epoch %d: now %s of epoch %d (%s)", own.Name, epoch, o.Role, o.Epoch, o.LastEvent)
	}

}
