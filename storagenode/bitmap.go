package storagenode

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"

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
	f     *os.File
	words []uint64
	n     uint64 // regions
	dirty uint64 // bits set
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
func (b *bitmap) mark(off, size int64) error {
	first, last := uint64(off/RegionSize), uint64((off+size-1)/RegionSize)
	changed := -1
	for r := first; r <= last && r < b.n; r++ {
		if !b.test(r) {
			b.words[r/64] |= 1 << (r % 64)
			b.dirty++
			if changed < 0 {
				changed = int(r / 64)
			}
		}
	}
	if changed < 0 {
		return nil
	}
	end := int(last/64) + 1
	return b.writeWords(changed, end)
}

func (b *bitmap) writeWords(from, to int) error {
	raw := make([]byte, (to-from)*8)
	for i := from; i < to; i++ {
		w := b.words[i]
		for j := 0; j < 8; j++ {
			raw[(i-from)*8+j] = byte(w >> (8 * j))
		}
	}
	if _, err := b.f.WriteAt(raw, int64(from)*8); err != nil {
		return fmt.Errorf("dirty bitmap: %w", err)
	}
	if err := unix.Fdatasync(int(b.f.Fd())); err != nil {
		return fmt.Errorf("dirty bitmap: %w", err)
	}
	return nil
}

// setAll marks every region (a full sync).
func (b *bitmap) setAll() error {
	for r := uint64(0); r < b.n; r++ {
		b.words[r/64] |= 1 << (r % 64)
	}
	b.dirty = b.n
	return b.writeWords(0, len(b.words))
}

// clear clears region r in memory.
func (b *bitmap) clear(r uint64) {
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
func (b *bitmap) flush() error { return b.writeWords(0, len(b.words)) }
