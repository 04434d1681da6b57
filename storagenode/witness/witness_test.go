package witness

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// testWitness makes a witness on a fake clock (the returned time) with a
// one-second lease; do asks it for pair p and fails the test on an error.
func testWitness(t *testing.T, path string) (now *time.Time, do func(node, op string, epoch uint64, peer string) Reply) {
	t.Helper()
	clock := time.Unix(1000, 0)
	s, err := New(path, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.now = func() time.Time { return clock }
	return &clock, func(node, op string, epoch uint64, peer string) Reply {
		t.Helper()
		r, err := s.Do(Request{Pair: "p", Node: node, Op: op, Epoch: epoch, Peer: peer})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
}

func TestLeases(t *testing.T) {
	path := filepath.Join(t.TempDir(), "w.json")
	clock, do := testWitness(t, path)
	if r := do("a", OpAcquire, 0, ""); !r.Granted || r.Epoch != 1 || !slices.Equal(r.Current, []string{"a"}) {
		t.Fatalf("first acquire: %+v", r)
	}
	if r := do("b", OpAcquire, 0, ""); r.Granted {
		t.Fatalf("second node acquired during a's lease: %+v", r)
	}
	if r := do("a", OpInSync, 1, "b"); !r.Granted || !slices.Equal(r.Current, []string{"a", "b"}) {
		t.Fatalf("insync: %+v", r)
	}
	*clock = clock.Add(900 * time.Millisecond)
	if r := do("a", OpRenew, 1, ""); !r.Granted {
		t.Fatalf("renew: %+v", r)
	}
	*clock = clock.Add(900 * time.Millisecond) // 0.9 s after the renewal: still a's
	if r := do("b", OpAcquire, 1, ""); r.Granted {
		t.Fatalf("b acquired before a's renewed lease ended: %+v", r)
	}
	*clock = clock.Add(200 * time.Millisecond)
	r := do("b", OpAcquire, 1, "")
	if !r.Granted || r.Epoch != 2 || r.Owner != "b" {
		t.Fatalf("b after a's lease: %+v", r)
	}
	if r := do("a", OpRenew, 1, ""); r.Granted || r.Epoch != 2 {
		t.Fatalf("deposed a renewed: %+v", r)
	}
	if r := do("b", OpDegraded, 2, ""); !r.Granted || !slices.Equal(r.Current, []string{"b"}) {
		t.Fatalf("degraded: %+v", r)
	}
	// b dies; a is stale and may never own.
	*clock = clock.Add(5 * time.Second)
	if r := do("a", OpAcquire, 2, ""); r.Granted {
		t.Fatalf("stale a acquired: %+v", r)
	}
	// The state survives a restart, and the owner's lease restarts in full.
	s2, err := New(path, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	s2.now = func() time.Time { return *clock }
	r2, _ := s2.Do(Request{Pair: "p", Node: "b", Op: OpAcquire, Epoch: 2})
	if !r2.Granted || r2.Epoch != 2 {
		t.Errorf("b re-acquiring its own running lease after a witness restart: %+v", r2)
	}
	if r, _ := s2.Do(Request{Pair: "p", Node: "a", Op: OpAcquire}); r.Granted {
		t.Errorf("a acquired after restart: %+v", r)
	}
	if _, err := s2.Do(Request{Pair: "p", Node: "a", Op: "steal"}); err == nil {
		t.Error("unknown operation accepted")
	}
	if r, _ := s2.Do(Request{Pair: "p", Node: "b", Op: OpInSync, Epoch: 2}); r.Granted {
		t.Error("insync without a peer granted")
	}
}

// TestStateDirectory: the state file's directory is made at start, and one
// that cannot be is an error then, not at a pair's first request.
func TestStateDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new", "dir", "witness.json")
	if _, err := New(path, time.Second, nil); err != nil {
		t.Fatalf("a missing state directory: %v", err)
	}
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(filepath.Join(blocker, "witness.json"), time.Second, nil); err == nil {
		t.Error("a state path under a regular file was accepted")
	}
	bad := filepath.Join(t.TempDir(), "witness.json")
	if err := os.WriteFile(bad, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(bad, time.Second, nil); err == nil {
		t.Error("a corrupt state file was accepted")
	}
}

// TestHandover: an owner hands ownership straight to its current peer in
// one step (a new epoch, the peer the only current node); a node that does
// not own, a peer that is not current, or no peer is refused.
func TestHandover(t *testing.T) {
	clock, do := testWitness(t, filepath.Join(t.TempDir(), "w.json"))
	do("a", OpAcquire, 0, "")
	if r := do("a", OpHandover, 1, "b"); r.Granted || r.Owner != "a" {
		t.Fatalf("handover to b, not current: %+v", r)
	}
	do("a", OpInSync, 1, "b")
	for _, tc := range []struct {
		node  string
		epoch uint64
		peer  string
	}{{"b", 1, "a"}, {"a", 0, "b"}, {"a", 1, ""}, {"a", 1, "a"}} {
		if r := do(tc.node, OpHandover, tc.epoch, tc.peer); r.Granted || r.Owner != "a" || r.Epoch != 1 {
			t.Errorf("handover by %s of epoch %d to %q: %+v", tc.node, tc.epoch, tc.peer, r)
		}
	}
	r := do("a", OpHandover, 1, "b")
	if !r.Granted || r.Owner != "b" || r.Epoch != 2 || !slices.Equal(r.Current, []string{"b"}) || r.LeaseMS != 1000 {
		t.Fatalf("handover: %+v", r)
	}
	if r := do("a", OpRenew, 1, ""); r.Granted {
		t.Fatalf("a renewed after handing over: %+v", r)
	}
	if r := do("b", OpRenew, 2, ""); !r.Granted {
		t.Fatalf("b renewing the epoch handed to it: %+v", r)
	}
	// a comes back stale: it may not own until it is current again.
	*clock = clock.Add(5 * time.Second)
	if r := do("a", OpAcquire, 1, ""); r.Granted {
		t.Fatalf("a acquired after handing over: %+v", r)
	}
}
