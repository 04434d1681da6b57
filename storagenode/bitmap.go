package storagenode

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// RegionSize is what one bit of a dirty bitmap covers.
const RegionSize = 64 << 10

// bitmap records which regions of a volume the peer may lack: set while
// the owner writes alone, cleared region by region as a resync copies
// them. It lives in a file beside the pool; a bit turning on is on disk
// (fdatasync) before the write it covers is acknowledged, so a crash
// never forgets a region the peer lacks. Bits turning off reach the file
// at the end of a resync (a crash before that resyncs them again).
type bitmap struct {
	f *os.File
	// flushMu orders the file's writes (taken before mu, never with it
	// held); mu guards words, dirty, lo, hi and setGen against a sync
	// running beside the pair's lock.
	flushMu sync.Mutex
	mu      sync.Mutex
	words   []uint64
	n       uint64 // regions
	dirty   uint64 // bits set
	lo, hi  int    // words with a bit turned on since the last write: [lo, hi)
	setGen  uint64 // counts changes that turned a bit on
	flushed atomic.Uint64
}

// openBitmap opens (or creates) the bitmap at path for a volume of size
// bytes.
func openBitmap(path string, size int64) (*bitmap, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	n := uint64((size + RegionSize - 1) / RegionSize)
	b := &bitmap{f: f, n: n, words: make([]uint64, (n+63)/64)}
	raw := make([]byte, len(b.words)*8)
	// A new or short file reads as clean where it has no bytes.
	if _, err := f.ReadAt(raw, 0); err != nil && !errors.Is(err, io.EOF) {
		f.Close()
		return nil, err
	}
	for i := range b.words {
		for j := 0; j < 8; j++ {
			b.words[i] |= uint64(raw[i*8+j]) << (8 * j)
		}
	}
	if extra := uint64(len(b.words))*64 - n; extra > 0 && len(b.words) > 0 {
		b.words[len(b.words)-1] &= ^uint64(0) >> extra
	}
	for _, w := range b.words {
		b.dirty += uint64(bits.OnesCount64(w))
	}
	return b, nil
}

func (b *bitmap) close() error { return b.f.Close() }

func (b *bitmap) test(r uint64) bool { return b.words[r/64]&(1<<(r%64)) != 0 }

// mark sets the bits of [off, off+size) and makes any new one durable.
func (b *bitmap) mark(off, size int64) error { return b.sync(b.set(off, size)) }

// set sets the bits of [off, off+size) in memory and returns the
// generation that must be on disk (sync) before a write there is
// acknowledged.
func (b *bitmap) set(off, size int64) uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	first, last := uint64(off/RegionSize), uint64((off+size-1)/RegionSize)
	changed := false
	for r := first; r <= last && r < b.n; r++ {
		if !b.test(r) {
			b.words[r/64] |= 1 << (r % 64)
			b.dirty++
			b.touch(int(r/64), int(r/64)+1)
			changed = true
		}
	}
	if changed {
		b.setGen++
	}
	return b.setGen
}

// touch adds words [from, to) to those the next write carries; the caller
// holds b.mu.
func (b *bitmap) touch(from, to int) {
	if b.lo >= b.hi {
		b.lo, b.hi = from, to
		return
	}
	b.lo, b.hi = min(b.lo, from), max(b.hi, to)
}

// sync makes every bit set up to generation need durable. Writes arriving
// while one sync runs share the next: one write and fdatasync for all of
// them (a group commit).
func (b *bitmap) sync(need uint64) error {
	if b.flushed.Load() >= need {
		return nil
	}
	b.flushMu.Lock()
	defer b.flushMu.Unlock()
	if b.flushed.Load() >= need {
		return nil
	}
	b.mu.Lock()
	lo, hi, gen := b.lo, b.hi, b.setGen
	if lo >= hi {
		lo, hi = 0, 0
	}
	raw := b.encode(lo, hi)
	b.lo, b.hi = 0, 0
	b.mu.Unlock()
	if err := b.write(lo, raw); err != nil {
		b.mu.Lock()
		if hi > lo {
			b.touch(lo, hi)
		}
		b.mu.Unlock()
		return err
	}
	b.flushed.Store(gen)
	return nil
}

// encode returns words [from, to) as the file holds them; the caller
// holds b.mu.
func (b *bitmap) encode(from, to int) []byte {
	raw := make([]byte, (to-from)*8)
	for i := from; i < to; i++ {
		binary.LittleEndian.PutUint64(raw[(i-from)*8:], b.words[i])
	}
	return raw
}

// write writes raw at word from and makes it durable.
func (b *bitmap) write(from int, raw []byte) error {
	if len(raw) > 0 {
		if _, err := b.f.WriteAt(raw, int64(from)*8); err != nil {
			return fmt.Errorf("dirty bitmap: %w", err)
		}
	}
	if err := unix.Fdatasync(int(b.f.Fd())); err != nil {
		return fmt.Errorf("dirty bitmap: %w", err)
	}
	return nil
}

// writeAll writes every word and makes them durable.
func (b *bitmap) writeAll() error {
	b.flushMu.Lock()
	defer b.flushMu.Unlock()
	b.mu.Lock()
	raw, gen := b.encode(0, len(b.words)), b.setGen
	b.lo, b.hi = 0, 0
	b.mu.Unlock()
	if err := b.write(0, raw); err != nil {
		return err
	}
	b.flushed.Store(gen)
	return nil
}

// setAll marks every region (a full sync).
func (b *bitmap) setAll() error {
	b.mu.Lock()
	for r := uint64(0); r < b.n; r++ {
		b.words[r/64] |= 1 << (r % 64)
	}
	b.dirty = b.n
	b.setGen++
	b.mu.Unlock()
	return b.writeAll()
}

// clear clears region r in memory.
func (b *bitmap) clear(r uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.test(r) {
		b.words[r/64] &^= 1 << (r % 64)
		b.dirty--
	}
}

// next returns the first set region at or after r, or false.
func (b *bitmap) next(r uint64) (uint64, bool) {
	for ; r < b.n; r++ {
		w := b.words[r/64] >> (r % 64)
		if w == 0 {
			r = (r/64+1)*64 - 1
			continue
		}
		r += uint64(bits.TrailingZeros64(w))
		return r, r < b.n
	}
	return 0, false
}

// flush writes the whole bitmap (after clears).
func (b *bitmap) flush() error { return b.writeAll() }
