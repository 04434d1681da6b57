package storagenode

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/fabric-project/fabric/aoe/wire"
)

// Limit caps a volume's I/O at the target, so one busy guest cannot
// starve the others of a storage node (or pair). IOPS counts ATA
// commands (one per AoE frame: a 4 KiB I/O is one frame at MTU 9000 and
// four at 1500); BytesPerSecond counts data read and written. Zero is no
// limit.
type Limit struct {
	IOPS           int64 `json:"iops,omitempty"`
	BytesPerSecond int64 `json:"bytes_per_second,omitempty"`
}

// IsZero reports whether l limits nothing.
func (l Limit) IsZero() bool { return l.IOPS <= 0 && l.BytesPerSecond <= 0 }

// limiter is a volume's pair of token buckets and the queue of frames
// waiting for tokens. Frames over the limit are not dropped (that would
// cost the initiator a retransmit timeout): they wait in arrival order
// and are served by the limiter's goroutine as tokens come, replying
// straight from there. A full queue drops: the initiator resends.
type limiter struct {
	// half: a pair peer serves the volume too (initiators spread their
	// frames over both), so this node grants half the limit.
	half    *atomic.Bool
	mu      sync.Mutex
	lim     Limit
	ops     float64 // tokens
	bytes   float64
	last    time.Time
	queue   []queued
	wake    chan struct{}
	closed  chan struct{}
	stopped sync.Once
}

type queued struct {
	frame []byte
	h     Handler // the handler the frame arrived on (its reply address and sender)
}

const limiterQueue = 1024

func newLimiter(l Limit, half *atomic.Bool) *limiter {
	lm := &limiter{lim: l, half: half, last: time.Now(), wake: make(chan struct{}, 1), closed: make(chan struct{})}
	lm.ops, lm.bytes = lm.burst()
	return lm
}

// rates are the limits this node grants now, per second.
func (lm *limiter) rates() (ops, bytes float64) {
	ops, bytes = float64(lm.lim.IOPS), float64(lm.lim.BytesPerSecond)
	if lm.half != nil && lm.half.Load() {
		ops, bytes = ops/2, bytes/2
	}
	return ops, bytes
}

// burst is what a bucket holds at most: a tenth of a second's worth, at
// least one frame.
func (lm *limiter) burst() (ops, bytes float64) {
	ops, bytes = lm.rates()
	return max(ops/10, 1), max(bytes/10, 9000)
}

func (lm *limiter) set(l Limit) {
	lm.mu.Lock()
	lm.refillLocked(time.Now())
	lm.lim = l
	bo, bb := lm.burst()
	lm.ops, lm.bytes = min(lm.ops, bo), min(lm.bytes, bb)
	lm.mu.Unlock()
	lm.signal()
}

func (lm *limiter) signal() {
	select {
	case lm.wake <- struct{}{}:
	default:
	}
}

func (lm *limiter) refillLocked(now time.Time) {
	dt := now.Sub(lm.last).Seconds()
	lm.last = now
	bo, bb := lm.burst()
	ro, rb := lm.rates()
	if lm.lim.IOPS > 0 {
		lm.ops = min(bo, lm.ops+dt*ro)
	}
	if lm.lim.BytesPerSecond > 0 {
		lm.bytes = min(bb, lm.bytes+dt*rb)
	}
}

// takeLocked spends the tokens for one frame moving n bytes, or says how
// long until they are there.
func (lm *limiter) takeLocked(n int, now time.Time) (time.Duration, bool) {
	lm.refillLocked(now)
	ro, rb := lm.rates()
	var wait time.Duration
	if lm.lim.IOPS > 0 && lm.ops < 1 {
		wait = max(wait, time.Duration((1-lm.ops)/ro*float64(time.Second)))
	}
	if lm.lim.BytesPerSecond > 0 && lm.bytes < float64(n) {
		wait = max(wait, time.Duration((float64(n)-lm.bytes)/rb*float64(time.Second)))
	}
	if wait > 0 {
		return wait, false
	}
	if lm.lim.IOPS > 0 {
		lm.ops--
	}
	if lm.lim.BytesPerSecond > 0 {
		lm.bytes -= float64(n)
	}
	return 0, true
}

// admit says whether a frame moving n bytes may be handled now; if not,
// it is queued (a copy) for the limiter's goroutine, or dropped when the
// queue is full.
func (lm *limiter) admit(h *Handler, f wire.Frame, n int) bool {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	if len(lm.queue) == 0 {
		if _, ok := lm.takeLocked(n, time.Now()); ok {
			return true
		}
	}
	if len(lm.queue) >= limiterQueue {
		h.c.ignored.Add(1)
		return false
	}
	q := queued{frame: append([]byte(nil), f...), h: *h}
	lm.queue = append(lm.queue, q)
	if len(lm.queue) == 1 {
		lm.signal()
	}
	return false
}

// run serves queued frames of v as tokens come, until close.
func (lm *limiter) run(t *Target, v *volume) {
	for {
		lm.mu.Lock()
		var wait time.Duration
		var next *queued
		if len(lm.queue) > 0 {
			f := wire.Frame(lm.queue[0].frame)
			var ok bool
			if wait, ok = lm.takeLocked(frameBytes(f), time.Now()); ok {
				q := lm.queue[0]
				lm.queue = lm.queue[1:]
				next = &q
			}
		}
		lm.mu.Unlock()
		if next != nil {
			t.inflight.RLock()
			if t.tab.Load().byAddr[key(v.Shelf, v.Slot)] == v {
				h := next.h
				r := &asyncReplier{buf: make([]byte, max(len(next.frame), 1514, wire.ATALen+h.maxSectors()*wire.SectorSize)), send: h.send, h: &h}
				h.ata(v, wire.Frame(next.frame), r)
			}
			t.inflight.RUnlock()
			continue
		}
		var timer <-chan time.Time
		if wait > 0 {
			timer = time.After(wait)
		}
		select {
		case <-lm.closed:
			return
		case <-lm.wake:
		case <-timer:
		}
	}
}

func (lm *limiter) close() { lm.stopped.Do(func() { close(lm.closed) }) }

// frameBytes is the data an ATA frame moves: what it writes, or what a
// read asks for.
func frameBytes(f wire.Frame) int {
	if f.AFlags()&wire.AFlagWrite != 0 {
		return len(f.Data())
	}
	return int(f.Count()) * wire.SectorSize
}

// asyncReplier sends each reply at once, from outside a receive batch; a
// read's data is copied into the frame.
type asyncReplier struct {
	buf  []byte
	send func([]byte) error
	h    *Handler
}

func (a *asyncReplier) Buf() []byte { return a.buf }
func (a *asyncReplier) Commit(n int) {
	if a.send != nil {
		_ = a.send(a.buf[:n])
	}
}

func (a *asyncReplier) CommitRead(n int, v *volume, off int64, size int) {
	if err := v.readAt(a.buf[n:n+size], off, false); err != nil {
		wire.SetATAStatus(a.buf, wire.ErrABRT, wire.StatusDRDY|wire.StatusERR)
		a.h.c.ataErr.Add(1)
		size = 0
	}
	a.Commit(n + size)
}

// SetLimit changes the I/O limit of the volume at shelf.slot in place.
func (t *Target) SetLimit(shelf uint16, slot uint8, l Limit) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	v := t.tab.Load().byAddr[key(shelf, slot)]
	if v == nil {
		return false
	}
	v.setLimit(t, l)
	return true
}

// setLimit installs, changes or removes v's limiter; the caller holds t.mu.
func (v *volume) setLimit(t *Target, l Limit) {
	v.Limit = l
	cur := v.limit.Load()
	switch {
	case l.IsZero() && cur != nil:
		v.limit.Store(nil)
		cur.close()
	case l.IsZero():
	case cur != nil:
		cur.set(l)
	default:
		lm := newLimiter(l, &t.limitHalf)
		v.limit.Store(lm)
		go lm.run(t, v)
	}
}
