package storagenode

import (
	"bytes"
	"context"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fabric-project/fabric/aoe/wire"
	"github.com/fabric-project/fabric/storagenode/replication"
	"github.com/fabric-project/fabric/storagenode/witness"
	"github.com/mdlayher/aoe"
)

// inProcessPair is two targets in one process, each with one replicated
// 1 MiB volume at e7.1, paired over loopback with a witness on loopback.
// Frames are handed to each node's Handler directly: the test decides
// which node sees which frame, and when.
type inProcessPair struct {
	owner, follower *Target
	paths           map[*Target]string
}

func newInProcessPair(t *testing.T) *inProcessPair {
	t.Helper()
	w, err := witness.New(filepath.Join(t.TempDir(), "witness.json"), 1500*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	ws := httptest.NewServer(w)
	t.Cleanup(ws.Close)
	addrs := make([]string, 2)
	for i := range addrs {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs[i] = ln.Addr().String()
		ln.Close()
	}
	ctx, cancel := context.WithCancel(context.Background())
	names := []string{"sa", "sb"}
	pairs := make([]*Pair, 2)
	targets := make([]*Target, 2)
	done := make(chan error, 2)
	ip := &inProcessPair{paths: map[*Target]string{}}
	for i := range pairs {
		dir := t.TempDir()
		path := filepath.Join(dir, "vol")
		if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		tg := NewTarget(TargetConfig{})
		p, err := NewPair(tg, PairConfig{Name: "p", Node: names[i], PeerNode: names[1-i], Listen: addrs[i], PeerAddr: addrs[1-i],
			Witness: ws.URL, NoTakeover: true}, dir, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := tg.Add(Export{Shelf: 7, Slot: 1, Path: path, Replicated: true}); err != nil {
			t.Fatal(err)
		}
		targets[i], pairs[i] = tg, p
		ip.paths[tg] = path
		go func() { done <- p.Run(ctx) }()
	}
	t.Cleanup(func() {
		cancel()
		for range pairs {
			if err := <-done; err != nil {
				t.Errorf("pair: %v", err)
			}
		}
		for _, tg := range targets {
			tg.Close()
		}
	})
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		a, b := pairs[0].Status(), pairs[1].Status()
		if a.State == "in sync" && b.State == "in sync" && a.Serving && b.Serving {
			if a.Role == "owner" {
				ip.owner, ip.follower = targets[0], targets[1]
			} else {
				ip.owner, ip.follower = targets[1], targets[0]
			}
			return ip
		}
		if time.Since(start) > 15*time.Second {
			t.Fatalf("pair not in sync after 15 s: %+v / %+v", a, b)
		}
	}
}

// write hands an initiator's write frame to tg and waits up to a second
// for its reply; it reports whether one came.
func (ip *inProcessPair) write(t *testing.T, tg *Target, src net.HardwareAddr, tag uint32, lba uint64, data []byte) bool {
	t.Helper()
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0x7e, 0x01}
	h := tg.NewHandler(mac, 9000)
	replies := make(chan []byte, 1)
	h.send = func(b []byte) error { replies <- bytes.Clone(b); return nil }
	f := make([]byte, wire.ATALen+len(data))
	wire.PutHeader(f, mac, src, 0, 0, 7, 1, aoe.CommandIssueATACommand, tag)
	wire.PutATA(f, wire.AFlagExtended|wire.AFlagWrite, 0, uint8(len(data)/wire.SectorSize), wire.CmdWriteSectorsExt, lba)
	copy(f[wire.ATALen:], data)
	r := &oneShot{buf: make([]byte, 9000+wire.EthLen)}
	h.Handle(f, r)
	select {
	case b := <-replies:
		if rf := wire.Frame(b); rf.Tag() != tag || rf.CmdStatus()&wire.StatusERR != 0 {
			t.Fatalf("reply to tag %#x: tag %#x, status %#x", tag, rf.Tag(), rf.CmdStatus())
		}
		return true
	case <-time.After(time.Second):
		return false
	}
}

// read returns sectors [lba, lba+n) of tg's volume file.
func (ip *inProcessPair) read(t *testing.T, tg *Target, lba uint64, n int) []byte {
	t.Helper()
	f, err := os.Open(ip.paths[tg])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n*wire.SectorSize)
	if _, err := f.ReadAt(b, int64(lba*wire.SectorSize)); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPairLateOriginal: our initiator resends a timed-out write, under
// the same tag, through the other node. When the original was only held
// up (a queue behind a slow disk), the resend completes first and the
// initiator moves on to its next write of the same sectors. The original,
// handled last, must not put the older data back: whichever node it
// reaches, the owner answers it as completed and does not apply it.
func TestPairLateOriginal(t *testing.T) {
	ip := newInProcessPair(t)
	ini := net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	older := bytes.Repeat([]byte{0xaa}, 4096)
	newer := bytes.Repeat([]byte{0xbb}, 4096)
	for i, tc := range []struct {
		name           string
		resent, late   *Target // where the resend went, where the original arrives late
		lba            uint64
		tagOld, tagNew uint32
	}{
		{"original to the owner, resend through the follower", ip.follower, ip.owner, 64, 0x101, 0x102},
		{"original to the follower, resend to the owner", ip.owner, ip.follower, 128, 0x201, 0x202},
	} {
		if !ip.write(t, tc.resent, ini, tc.tagOld, tc.lba, older) {
			t.Fatalf("%s: no reply to the resend", tc.name)
		}
		if !ip.write(t, tc.resent, ini, tc.tagNew, tc.lba, newer) {
			t.Fatalf("%s: no reply to the next write", tc.name)
		}
		if !ip.write(t, tc.late, ini, tc.tagOld, tc.lba, older) {
			t.Errorf("%s: the late original got no reply; want it answered as completed", tc.name)
		}
		for _, tg := range []*Target{ip.owner, ip.follower} {
			if got := ip.read(t, tg, tc.lba, 8); !bytes.Equal(got, newer) {
				which := "owner"
				if tg == ip.follower {
					which = "follower"
				}
				t.Errorf("%s: the %s holds %#x... at LBA %d, want the newer write's %#x", tc.name, which, got[0], tc.lba, newer[0])
			}
		}
		if d := ip.owner.pair.Load().Status().Counters.Duplicates; d != uint64(i+1) {
			t.Errorf("%s: %d duplicate writes counted, want %d", tc.name, d, i+1)
		}
	}
	// A tag seen before, with other sectors or other data (tags wrap),
	// is a new write: applied.
	other := bytes.Repeat([]byte{0xcc}, 4096)
	for _, lba := range []uint64{256, 64} {
		if !ip.write(t, ip.owner, ini, 0x101, lba, other) {
			t.Fatalf("LBA %d: no reply to a new write under a tag seen before", lba)
		}
		if got := ip.read(t, ip.follower, lba, 8); !bytes.Equal(got, other) {
			t.Errorf("LBA %d: a new write under a tag seen before was not applied: %#x...", lba, got[0])
		}
	}
}

// TestDoneWritesBounded: the owner's memory of completed writes keeps
// the newest doneMax and forgets the oldest.
func TestDoneWritesBounded(t *testing.T) {
	var d doneWrites
	id := func(i int) writeID { return writeID{tag: uint32(i), lba: uint64(i)} }
	for i := 0; i < doneMax+100; i++ {
		d.add(id(i))
	}
	if d.has(id(0)) || d.has(id(99)) {
		t.Error("the oldest writes are still remembered past doneMax")
	}
	if !d.has(id(100)) || !d.has(id(doneMax+99)) {
		t.Error("a write among the newest doneMax is forgotten")
	}
	if d.has(writeID{tag: 5, lba: 6}) {
		t.Error("a write never completed counts as completed")
	}
	if n := len(d.at); n > doneMax {
		t.Errorf("%d writes remembered, want at most %d", n, doneMax)
	}
}

// BenchmarkDoneWrites: what the completed-write memory adds to each write
// of a pair (4 KiB): the checksum, the lookup and the record.
func BenchmarkDoneWrites(b *testing.B) {
	var d doneWrites
	data := bytes.Repeat([]byte{0x5a}, 4096)
	b.SetBytes(int64(len(data)))
	for i := 0; i < b.N; i++ {
		id := newWriteID(1, [6]byte{2}, uint32(i), uint64(i&0xffff)*8, data)
		if d.has(id) {
			b.Fatal("a new write counts as done")
		}
		d.add(id)
	}
}

// TestPairForwardWithoutInitiator: a follower paired with an owner of the
// release before (no HelloIdentified in its hello) forwards writes in the
// older form, and they are applied on both nodes.
func TestPairForwardWithoutInitiator(t *testing.T) {
	ip := newInProcessPair(t)
	f := ip.follower.pair.Load()
	f.mu.Lock()
	f.link.peer.Flags &^= replication.HelloIdentified
	f.mu.Unlock()
	ini := net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x57}
	for i, b := range []byte{0x11, 0x22} {
		data := bytes.Repeat([]byte{b}, 4096)
		if !ip.write(t, ip.follower, ini, uint32(0x300+i), 512, data) {
			t.Fatalf("write %d: no reply through the follower", i)
		}
		for _, tg := range []*Target{ip.owner, ip.follower} {
			if got := ip.read(t, tg, 512, 8); !bytes.Equal(got, data) {
				t.Errorf("write %d: a node holds %#x..., want %#x", i, got[0], b)
			}
		}
	}
	if d := ip.owner.pair.Load().Status().Counters.Duplicates; d != 0 {
		t.Errorf("%d duplicates counted for forwards that name no initiator", d)
	}
}
