package writelog

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// disk is an in-memory device the tests damage on purpose.
type disk struct {
	bs   int
	data []byte
}

func newDisk(blocks, bs int) *disk { return &disk{bs: bs, data: make([]byte, blocks*bs)} }

func (d *disk) write(block uint64, b []byte) { copy(d.data[int(block)*d.bs:], b) }
func (d *disk) read(block uint64, b []byte) error {
	copy(b, d.data[int(block)*d.bs:int(block+1)*d.bs])
	return nil
}

func mustNext(t *testing.T, l *Log, block uint64) (Stamp, []byte) {
	t.Helper()
	s, b, err := l.Next(block)
	if err != nil {
		t.Fatal(err)
	}
	return s, b
}

func TestHealthyDevicePasses(t *testing.T) {
	l, err := New(64, 512)
	if err != nil {
		t.Fatal(err)
	}
	d := newDisk(64, 512)
	now := time.Now()
	for round := 0; round < 3; round++ {
		for blk := uint64(0); blk < 64; blk += 2 { // odd blocks never written
			s, b := mustNext(t, l, blk)
			d.write(blk, b)
			l.Acked(s, now)
		}
	}
	r, err := l.Verify(d.read)
	if err != nil || r.Bad != 0 || r.Acknowledged != 32 {
		t.Errorf("healthy device: %+v, %v; want 32 acknowledged, none bad", r, err)
	}
}

// Each kind of damage a broken pair can do is caught, with the block
// named.
func TestCatchesDamage(t *testing.T) {
	l, _ := New(8, 512)
	d := newDisk(8, 512)
	now := time.Now()
	write := func(blk uint64, ack bool) []byte {
		s, b := mustNext(t, l, blk)
		d.write(blk, b)
		if ack {
			l.Acked(s, now)
		} else {
			l.Failed(s)
		}
		return b
	}
	// Block 0: an acknowledged write lost (the block reverts to zeros).
	write(0, true)
	d.write(0, make([]byte, 512))
	// Block 1: a stale read: the older acknowledged write comes back.
	old := write(1, true)
	write(1, true)
	d.write(1, old)
	// Block 2: a late unacknowledged original lands after a newer
	// acknowledged write (a reordering).
	s, late := mustNext(t, l, 2)
	l.Failed(s)
	write(2, true)
	d.write(2, late)
	// Block 3: torn with nothing outstanding.
	write(3, true)
	d.data[3*512+100] ^= 0xff
	// Block 4: another block's write.
	b5 := write(5, true)
	write(4, true)
	d.write(4, b5)
	// Block 6: torn while an unacknowledged write may have been cut short:
	// allowed. Block 7: an unacknowledged write that did not land: allowed.
	write(6, true)
	write(6, false)
	d.data[6*512+100] ^= 0xff
	write(7, true)
	s7, _ := mustNext(t, l, 7)
	l.Failed(s7)

	r, err := l.Verify(d.read)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"block 0: lost", "block 1: stale", "block 2: stale", "block 3: torn", "block 4: holds block 5"}
	if r.Bad != len(want) {
		t.Errorf("%d bad blocks; want %d: %v", r.Bad, len(want), r.Errors)
	}
	for i, w := range want {
		if i >= len(r.Errors) || !strings.Contains(r.Errors[i].Error(), w) {
			t.Errorf("error %d: %v; want %q", i, r.Errors, w)
		}
	}
}

func TestOneOutstandingWritePerBlock(t *testing.T) {
	l, _ := New(4, 64)
	s, _ := mustNext(t, l, 1)
	if _, _, err := l.Next(1); err == nil {
		t.Error("second outstanding write to block 1 allowed")
	}
	if _, _, err := l.Next(4); err == nil {
		t.Error("block past the end allowed")
	}
	l.Acked(s, time.Now())
	if _, _, err := l.Next(1); err != nil {
		t.Errorf("after the ack: %v", err)
	}
	if _, err := New(4, 33); err == nil {
		t.Error("odd block size accepted")
	}
}

func TestLongestGap(t *testing.T) {
	l, _ := New(4, 64)
	t0 := time.Now()
	for i, at := range []time.Duration{0, 10 * time.Millisecond, 1500 * time.Millisecond, 1510 * time.Millisecond} {
		s, _ := mustNext(t, l, uint64(i))
		l.Acked(s, t0.Add(at))
	}
	if g := l.LongestGap(); g != 1490*time.Millisecond {
		t.Errorf("longest gap %v; want 1.49s", g)
	}
	l.ResetGap()
	if g := l.LongestGap(); g != 0 {
		t.Errorf("after reset: %v", g)
	}
}

// FuzzParse: no block content makes Parse panic, and what Encode writes
// Parse reads back exactly; any single flipped byte of it is caught.
func FuzzParse(f *testing.F) {
	f.Add([]byte{}, uint64(1), uint64(2), uint64(3), 512, 7)
	f.Add([]byte("FWLG"), uint64(0), uint64(0), uint64(0), 40, 0)
	f.Fuzz(func(t *testing.T, junk []byte, run, block, seq uint64, size, flip int) {
		_, _ = Parse(junk)
		size -= size % 8
		if size < MinBlockSize || size > 1<<16 {
			return
		}
		b := make([]byte, size)
		s := Stamp{run, block, seq}
		Encode(b, s)
		got, err := Parse(b)
		if err != nil || got != s {
			t.Fatalf("round trip of %+v: %+v, %v", s, got, err)
		}
		i := flip % size
		if i < 0 {
			i = -i
		}
		b[i] ^= 0x5a
		if got, err := Parse(b); err == nil && got == s {
			t.Fatalf("byte %d flipped, still read as intact %+v", i, got)
		} else if err != nil && !errors.Is(err, ErrTorn) && !errors.Is(err, ErrNotStamped) {
			t.Fatalf("unexpected error %v", err)
		}
	})
}
