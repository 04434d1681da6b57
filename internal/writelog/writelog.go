// Package writelog checks a block device against a log of acknowledged
// writes: the property a replicated storage pair must keep through every
// fault is that each block holds the last write acknowledged for it, or a
// later one not acknowledged (yet), and never anything older.
//
// A Log hands out block contents carrying a stamp (run, block, sequence)
// and a CRC over the whole block, so a read tells which write it holds and
// whether it is torn. The caller writes them through whatever path it
// tests, tells the Log which writes were acknowledged, and after a fault
// reads every block back and checks it. At most one write per block may be
// outstanding at a time.
package writelog

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"
	"time"
)

// headerSize is the stamp at the start of every block; the CRC takes the
// last four bytes.
const headerSize = 4 + 8 + 8 + 8

var magic = [4]byte{'F', 'W', 'L', 'G'}

// MinBlockSize is the smallest block a Log can stamp.
const MinBlockSize = headerSize + 4 + 4

// Stamp identifies one write: which run (Log) made it, for which block,
// and its sequence number in that run (increasing across all blocks).
type Stamp struct {
	Run   uint64
	Block uint64
	Seq   uint64
}

// Errors of Parse.
var (
	ErrNotStamped = errors.New("writelog: block holds no stamp")
	ErrTorn       = errors.New("writelog: block is torn (CRC mismatch)")
)

// Encode fills b (the whole block) with the stamp, pseudo-random filler
// derived from it, and the CRC.
func Encode(b []byte, s Stamp) {
	copy(b, magic[:])
	binary.BigEndian.PutUint64(b[4:], s.Run)
	binary.BigEndian.PutUint64(b[12:], s.Block)
	binary.BigEndian.PutUint64(b[20:], s.Seq)
	x := s.Run ^ s.Block*0x9e3779b97f4a7c15 ^ s.Seq*0xbf58476d1ce4e5b9 | 1
	body := b[headerSize : len(b)-4]
	for i := 0; i < len(body); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], x)
		copy(body[i:], w[:])
	}
	binary.BigEndian.PutUint32(b[len(b)-4:], crc32.ChecksumIEEE(b[:len(b)-4]))
}

// Parse reads the stamp of a block. A block of zeros, or of anything
// without the magic, is ErrNotStamped; a stamped block whose CRC does not
// match is ErrTorn (with the stamp its header claims).
func Parse(b []byte) (Stamp, error) {
	if len(b) < MinBlockSize || [4]byte(b[:4]) != magic {
		return Stamp{}, ErrNotStamped
	}
	s := Stamp{Run: binary.BigEndian.Uint64(b[4:]), Block: binary.BigEndian.Uint64(b[12:]), Seq: binary.BigEndian.Uint64(b[20:])}
	if crc32.ChecksumIEEE(b[:len(b)-4]) != binary.BigEndian.Uint32(b[len(b)-4:]) {
		return s, ErrTorn
	}
	return s, nil
}

// blockState is what the log knows of one block.
type blockState struct {
	acked   uint64   // sequence of the last acknowledged write (0: none)
	maybe   []uint64 // writes issued after it, not acknowledged: on disk or not
	pending bool     // a write is outstanding
}

// Log is the record of one run of writes.
type Log struct {
	BlockSize int
	Blocks    uint64

	mu      sync.Mutex
	run     uint64
	seq     uint64
	blocks  map[uint64]*blockState
	lastAck time.Time
	maxGap  time.Duration
}

// New starts a run over blocks blocks of blockSize bytes.
func New(blocks uint64, blockSize int) (*Log, error) {
	if blockSize < MinBlockSize || blockSize%8 != 0 {
		return nil, fmt.Errorf("writelog: block size %d: want a multiple of 8, at least %d", blockSize, MinBlockSize)
	}
	var r [8]byte
	_, _ = rand.Read(r[:])
	return &Log{BlockSize: blockSize, Blocks: blocks, run: binary.BigEndian.Uint64(r[:]) | 1, blocks: map[uint64]*blockState{}}, nil
}

// Next returns the next write for block: its stamp and the block's
// contents. It fails if a write to the block is still outstanding.
func (l *Log) Next(block uint64) (Stamp, []byte, error) {
	if block >= l.Blocks {
		return Stamp{}, nil, fmt.Errorf("writelog: block %d of %d", block, l.Blocks)
	}
	l.mu.Lock()
	st := l.blocks[block]
	if st == nil {
		st = &blockState{}
		l.blocks[block] = st
	}
	if st.pending {
		l.mu.Unlock()
		return Stamp{}, nil, fmt.Errorf("writelog: block %d has a write outstanding", block)
	}
	l.seq++
	s := Stamp{Run: l.run, Block: block, Seq: l.seq}
	st.pending = true
	st.maybe = append(st.maybe, s.Seq)
	l.mu.Unlock()
	b := make([]byte, l.BlockSize)
	Encode(b, s)
	return s, b, nil
}

// Acked records that the write s was acknowledged at time t. Every write
// to the block issued before it is now history: finding one later is a
// reordering.
func (l *Log) Acked(s Stamp, t time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.blocks[s.Block]
	if st == nil {
		return
	}
	st.pending = false
	if s.Seq > st.acked {
		st.acked = s.Seq
		kept := st.maybe[:0]
		for _, m := range st.maybe {
			if m > s.Seq {
				kept = append(kept, m)
			}
		}
		st.maybe = kept
	}
	if !l.lastAck.IsZero() && t.Sub(l.lastAck) > l.maxGap {
		l.maxGap = t.Sub(l.lastAck)
	}
	if t.After(l.lastAck) {
		l.lastAck = t
	}
}

// Failed records that the write s was not acknowledged (an error, a
// timeout): it may or may not be on the disk.
func (l *Log) Failed(s Stamp) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st := l.blocks[s.Block]; st != nil {
		st.pending = false
	}
}

// LongestGap is the longest time between two acknowledgements so far: the
// longest write stall the run saw. ResetGap starts measuring anew.
func (l *Log) LongestGap() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.maxGap
}

// ResetGap forgets the gaps measured so far and measures from now: a
// fault injected right after it stalls writes from this moment, and the
// first acknowledgement after the stall ends the gap.
func (l *Log) ResetGap() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.maxGap, l.lastAck = 0, time.Now()
}

// Acknowledged is how many blocks hold an acknowledged write.
func (l *Log) Acknowledged() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, st := range l.blocks {
		if st.acked > 0 {
			n++
		}
	}
	return n
}

// Check says whether b, read from block, is acceptable: the last
// acknowledged write or a later unacknowledged one, untorn unless an
// unacknowledged write may have been cut short.
func (l *Log) Check(block uint64, b []byte) error {
	l.mu.Lock()
	st := l.blocks[block]
	var acked uint64
	var maybe []uint64
	if st != nil {
		acked, maybe = st.acked, append([]uint64(nil), st.maybe...)
	}
	l.mu.Unlock()
	s, err := Parse(b)
	switch {
	case errors.Is(err, ErrNotStamped) && acked == 0:
		return nil // never acknowledged: any content is fine
	case errors.Is(err, ErrNotStamped):
		return fmt.Errorf("block %d: lost: holds no stamp, write %d was acknowledged", block, acked)
	case s.Run != l.run:
		return fmt.Errorf("block %d: holds a write of another run (%x)", block, s.Run)
	case s.Block != block:
		return fmt.Errorf("block %d: holds block %d's write %d (misdirected)", block, s.Block, s.Seq)
	case errors.Is(err, ErrTorn) && len(maybe) == 0:
		return fmt.Errorf("block %d: torn, and no write to it is unacknowledged (last acknowledged %d)", block, acked)
	case errors.Is(err, ErrTorn):
		return nil // an unacknowledged write cut short
	case s.Seq == acked:
		return nil
	case s.Seq < acked:
		return fmt.Errorf("block %d: stale: holds write %d, write %d was acknowledged after it", block, s.Seq, acked)
	}
	for _, m := range maybe {
		if m == s.Seq {
			return nil
		}
	}
	return fmt.Errorf("block %d: holds write %d, which was neither acknowledged last nor issued since (last acknowledged %d)", block, s.Seq, acked)
}

// Report is the outcome of checking every block.
type Report struct {
	Blocks, Acknowledged, Bad int
	Errors                    []error // the first few
}

// Verify reads every block with read and checks it.
func (l *Log) Verify(read func(block uint64, b []byte) error) (Report, error) {
	r := Report{Blocks: int(l.Blocks), Acknowledged: l.Acknowledged()}
	b := make([]byte, l.BlockSize)
	for i := uint64(0); i < l.Blocks; i++ {
		if err := read(i, b); err != nil {
			return r, fmt.Errorf("writelog: reading block %d: %w", i, err)
		}
		if err := l.Check(i, b); err != nil {
			r.Bad++
			if len(r.Errors) < 10 {
				r.Errors = append(r.Errors, err)
			}
		}
	}
	return r, nil
}
