package storagenode

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fabric-project/fabric/aoe/wire"
	"github.com/fabric-project/fabric/internal/atomicfile"
	"github.com/fabric-project/fabric/storagenode/replication"
	"github.com/fabric-project/fabric/storagenode/witness"
)

// PairConfig makes a storage node one of a pair (docs/storage-pairs.md).
type PairConfig struct {
	Name     string // the pair's name, the same on both nodes
	Node     string // this node's name
	PeerNode string // the other node's name
	Listen   string // replication address to listen on, host:port
	PeerAddr string // the other node's replication address
	Witness  string // the witness's URL, http://host:port
	// WitnessHTTP, if set, is the client for the witness (the
	// controller's, with the node's certificate); it should time out
	// within a third of the lease. Default: plain HTTP, 300ms.
	WitnessHTTP *http.Client
	// LinkTimeout is how long the replication link may stay silent
	// before the peer counts as gone; default 500ms.
	LinkTimeout time.Duration
	// ReadLease is how long the follower may serve reads after the owner
	// answered its ping; default 800ms. An owner that loses its follower
	// waits this out before acknowledging any write alone.
	ReadLease time.Duration
	// Promise is how long after the owner's last answer the follower
	// will not ask the witness for ownership; default 1s.
	Promise time.Duration
	// ResyncRate limits resync traffic, bytes per second; default 100 MiB/s.
	ResyncRate int64
	// NoTakeover disables taking over the peer's AoE MAC while alone.
	NoTakeover bool
}

func (c *PairConfig) defaults() {
	if c.LinkTimeout <= 0 {
		c.LinkTimeout = 500 * time.Millisecond
	}
	if c.ReadLease <= 0 {
		c.ReadLease = 800 * time.Millisecond
	}
	if c.Promise <= 0 {
		c.Promise = time.Second
	}
	if c.ResyncRate <= 0 {
		c.ResyncRate = 100 << 20
	}
}

func (c *PairConfig) check() error {
	var miss []string
	for _, f := range []struct{ v, flag string }{{c.Name, "--pair"}, {c.Node, "--node"}, {c.PeerNode, "--peer-node"},
		{c.Listen, "--replication-listen"}, {c.PeerAddr, "--peer"}, {c.Witness, "--witness"}} {
		if f.v == "" {
			miss = append(miss, f.flag)
		}
	}
	if len(miss) > 0 {
		return fmt.Errorf("storagenode: a pair needs %s", strings.Join(miss, ", "))
	}
	if c.Node == c.PeerNode {
		return fmt.Errorf("storagenode: --node and --peer-node are both %q", c.Node)
	}
	return nil
}

type role int

const (
	roleNone     role = iota // deciding; silent
	roleOwner                // orders and acknowledges writes
	roleFollower             // connected to the owner (serving once in sync)
)

func (r role) String() string {
	return [...]string{"none", "owner", "follower"}[r]
}

// pairDisk is what a node keeps across restarts (pair.json in the pool).
type pairDisk struct {
	Epoch uint64 `json:"epoch"` // the highest epoch seen
	// Generation is the data generation this node's volumes hold.
	Generation string `json:"generation"`
	// OwnedEpoch is set while this node owns (or last owned) writes and
	// has not since been brought in sync by another owner: its volumes
	// may hold writes its peer never saw, so it cannot vouch for them.
	OwnedEpoch uint64 `json:"owned_epoch"`
	// PeerGeneration is the generation the peer held when last in sync:
	// the owner's bitmaps hold what changed since.
	PeerGeneration string   `json:"peer_generation"`
	PeerMACs       []string `json:"peer_macs"`
}

// recentWrite is a sequenced write the follower may not have applied yet:
// what a forward stamped with an older Seen must not overwrite.
type recentWrite struct {
	key      uint32
	lba, end uint64 // sectors [lba, end)
	seq      uint64
}

// writeID names an initiator's write: the volume, the initiator's
// address, the frame's tag, the sectors and a checksum of the data. Tags
// repeat: our initiator's after 2^21 requests to one volume (10 s at
// 200,000 frames/s), the Linux driver's after a wrap of its counter and
// of jiffies' low 16 bits; a repeat counts as a duplicate only if the
// sectors and data match too.
type writeID struct {
	vol uint32
	mac [6]byte
	tag uint32
	lba uint64
	n   int
	sum uint32 // CRC-32C of the data
}

func newWriteID(vol uint32, mac [6]byte, tag uint32, lba uint64, data []byte) writeID {
	return writeID{vol, mac, tag, lba, len(data) / wire.SectorSize, crc32.Checksum(data, castagnoli)}
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Completed writes are remembered for doneWindow, at most doneMax of
// them: longer than the hardware node's initiator tries a frame (50 ms
// doubling to 800 ms, 10 tries: 5.5 s).
const (
	doneWindow = 10 * time.Second
	doneMax    = 1 << 17
)

// doneWrites is the owner's memory of the writes it completed lately,
// however they came (to its own address, or forwarded by the follower).
// Our initiator resends a timed-out frame through the other node under
// the same tag; when the original was only held up (in a queue behind a
// slow disk), the resend completes first, the initiator moves on to its
// next write of the same sectors, and the original, applied last, would
// put the older data back. An original the owner has completed is
// answered, not applied again. It has its own lock: completions run
// under p.mu and outside it.
type doneWrites struct {
	mu   sync.Mutex
	at   map[writeID]time.Time
	fifo []doneEntry // in completion order
	head int
}

type doneEntry struct {
	id writeID
	at time.Time
}

// add records id as completed now.
func (d *doneWrites) add(id writeID) {
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.at == nil {
		d.at = map[writeID]time.Time{}
	}
	d.pruneLocked(now)
	d.at[id] = now
	d.fifo = append(d.fifo, doneEntry{id, now})
}

// has says whether id completed within doneWindow.
func (d *doneWrites) has(id writeID) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	at, ok := d.at[id]
	return ok && time.Since(at) < doneWindow
}

func (d *doneWrites) pruneLocked(now time.Time) {
	for d.head < len(d.fifo) {
		e := d.fifo[d.head]
		if now.Sub(e.at) < doneWindow && len(d.fifo)-d.head < doneMax {
			break
		}
		if d.at[e.id] == e.at { // not completed again since
			delete(d.at, e.id)
		}
		d.fifo[d.head] = doneEntry{}
		d.head++
	}
	if d.head > 1024 && d.head*2 > len(d.fifo) {
		d.fifo = append(d.fifo[:0], d.fifo[d.head:]...)
		d.head = 0
	}
}

// completes wraps done to record id once the write is answered.
func (d *doneWrites) completes(id writeID, done func(bool)) func(bool) {
	return func(ok bool) {
		if ok {
			d.add(id)
		}
		done(ok)
	}
}

type pendingWrite struct {
	key    uint32 // volume
	off    int64
	size   int
	region int64 // resync copies: the region; -1 for writes
	done   func(ok bool)
}

// plink is one replication connection; messages leave in the order they
// were queued.
type plink struct {
	c        net.Conn
	peer     *replication.Hello
	mu       sync.Mutex
	buf      []byte
	wake     chan struct{}
	closed   chan struct{}
	once     sync.Once
	lastRecv atomic.Int64 // unix nanos
	pings    []time.Time  // follower: send times of unanswered pings
	window   chan struct{}
}

func newLink(c net.Conn) *plink {
	l := &plink{c: c, wake: make(chan struct{}, 1), closed: make(chan struct{}), window: make(chan struct{}, 16)}
	l.lastRecv.Store(time.Now().UnixNano())
	return l
}

func (l *plink) send(m replication.Message) {
	l.mu.Lock()
	var err error
	l.buf, err = replication.Append(l.buf, m)
	l.mu.Unlock()
	if err != nil {
		panic(fmt.Sprintf("storagenode: encoding %T: %v", m, err)) // we built it
	}
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *plink) writer() {
	var out []byte
	for {
		select {
		case <-l.closed:
			return
		case <-l.wake:
		}
		l.mu.Lock()
		out, l.buf = l.buf, out[:0]
		l.mu.Unlock()
		if len(out) == 0 {
			continue
		}
		_ = l.c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if _, err := l.c.Write(out); err != nil {
			l.close()
			return
		}
	}
}

func (l *plink) close() {
	l.once.Do(func() {
		close(l.closed)
		l.c.Close()
	})
}

// Pair runs this node's half of a storage pair: ownership through the
// witness, the replication link, resync, and MAC takeover while alone.
type Pair struct {
	cfg    PairConfig
	t      *Target
	dir    string
	ifaces []string
	wc     *witness.Client
	log    *slog.Logger
	ctx    context.Context

	renewing   atomic.Bool
	dialing    atomic.Bool
	stopping   atomic.Bool // Leave was called: neither bid nor follow until Rejoin
	rejoin     chan struct{}
	serveUntil atomic.Int64 // unix nanos: may answer initiators for replicated volumes until then

	mu         sync.Mutex
	changed    chan struct{} // closed and replaced on every role change
	role       role
	st         pairDisk
	lease      time.Duration
	leaseEnd   time.Time
	link       *plink
	peerSyncd  bool      // owner: the follower is in sync and serving
	readLease  time.Time // owner: the latest read lease granted to the follower
	promiseEnd time.Time // owner: the follower will not seek ownership before this
	degrading  bool      // owner: link lost, waiting to be recorded alone
	leaving    bool      // owner: handing over; takes no new write
	alone      bool      // owner: the witness records only this node as current
	waiting    []func(bool)
	pending    map[uint64]pendingWrite
	seq        uint64
	bitmaps    map[uint32]*bitmap
	fInSync    bool                 // follower: in sync, may answer initiators
	fReadEnd   time.Time            // follower: read lease
	lastAnswer time.Time            // follower: the owner's last answer
	fwd        map[uint64]forwarded // follower: writes forwarded to the owner, not answered yet
	applied    uint64               // follower: the highest owner sequence number applied on this link
	recent     []recentWrite        // owner: writes the follower may not have applied yet, by sequence
	done       doneWrites           // owner: writes completed lately (writeID)
	takeovers  []*takeover
	resync     resyncProgress
	events     []string // the last 20, oldest first
	waitingFor string   // what keeps this node from owning, following or acknowledging, if anything

	stats struct {
		forwards, superseded, duplicates, dropped, refused, stale, resyncBytes, replicated atomic.Uint64
	}
}

type resyncProgress struct {
	running     bool
	total, done int64            // bytes
	perVolume   map[uint32]int64 // bytes to copy per volume when the resync started
	started     time.Time
}

// NewPair prepares t's pair half; Run starts it. dir holds its state
// (the pool directory); ifaces are the AoE interfaces (for takeover).
func NewPair(t *Target, cfg PairConfig, dir string, ifaces []string, log *slog.Logger) (*Pair, error) {
	cfg.defaults()
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	hc := cfg.WitnessHTTP
	if hc == nil {
		hc = &http.Client{Timeout: 300 * time.Millisecond}
	}
	p := &Pair{cfg: cfg, t: t, dir: dir, ifaces: ifaces, log: log.With("pair", cfg.Name),
		wc:      &witness.Client{URL: strings.TrimRight(cfg.Witness, "/"), HTTP: hc},
		changed: make(chan struct{}), pending: map[uint64]pendingWrite{}, bitmaps: map[uint32]*bitmap{}, fwd: map[uint64]forwarded{},
		rejoin: make(chan struct{}, 1)}
	b, err := os.ReadFile(p.statePath())
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		if err := json.Unmarshal(b, &p.st); err != nil {
			return nil, fmt.Errorf("storagenode: %s: %w", p.statePath(), err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "pair-bitmaps"), 0o755); err != nil {
		return nil, err
	}
	if !t.pair.CompareAndSwap(nil, p) {
		return nil, fmt.Errorf("storagenode: this node is already in pair %q", t.pair.Load().cfg.Name)
	}
	return p, nil
}

func (p *Pair) statePath() string { return filepath.Join(p.dir, "pair.json") }

// save persists p.st; the caller holds p.mu.
func (p *Pair) save() error {
	b, err := json.MarshalIndent(p.st, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(p.statePath(), append(b, '\n'), 0o644)
}

func (p *Pair) mustSave() {
	if err := p.save(); err != nil {
		// Without its metadata a node cannot vouch for itself later:
		// stop rather than acknowledge on a record that did not stick.
		p.log.Error("saving pair state", "err", err)
		panic(err)
	}
}

// serving: may this node answer initiators for replicated volumes now?
func (p *Pair) serving() bool { return time.Now().UnixNano() < p.serveUntil.Load() }

// updateServe recomputes serveUntil; the caller holds p.mu. Reads and
// writes have one bound: the owner's authority, or the follower's read
// lease while it is in sync and linked.
func (p *Pair) updateServe() {
	var until time.Time
	switch p.role {
	case roleOwner:
		until = p.leaseEnd
		if p.link != nil && p.promiseEnd.After(until) {
			until = p.promiseEnd
		}
	case roleFollower:
		if p.fInSync && p.link != nil {
			until = p.fReadEnd
		}
	}
	n := int64(0)
	if !until.IsZero() {
		n = until.UnixNano()
	}
	p.serveUntil.Store(n)
	p.t.limitHalf.Store(p.link != nil && (p.role == roleOwner && p.peerSyncd || p.role == roleFollower && p.fInSync))
}

func (p *Pair) setRole(r role) {
	if p.role == r {
		return
	}
	p.log.Info("pair role", "from", p.role.String(), "to", r.String(), "epoch", p.st.Epoch)
	p.role = r
	close(p.changed)
	p.changed = make(chan struct{})
	p.updateServe()
}

// event records what happened (the status keeps the last 20); the caller
// holds p.mu.
func (p *Pair) event(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.events = append(p.events, time.Now().UTC().Format(time.RFC3339Nano)+" "+msg)
	if len(p.events) > 20 {
		p.events = p.events[len(p.events)-20:]
	}
	p.log.Info(msg)
}

func newGeneration() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func genBytes(s string) (g [16]byte) {
	b, err := hex.DecodeString(s)
	if err == nil && len(b) == 16 {
		copy(g[:], b)
	}
	return g
}

// vouch is the generation this node can stand behind in a hello: none if
// it owned an epoch and has not been brought in sync since.
func (p *Pair) vouch() [16]byte {
	if p.st.OwnedEpoch != 0 && p.role != roleOwner {
		return [16]byte{}
	}
	return genBytes(p.st.Generation)
}

// Run takes part in the pair until ctx ends.
func (p *Pair) Run(ctx context.Context) error {
	p.ctx = ctx
	ln, err := net.Listen("tcp", p.cfg.Listen)
	if err != nil {
		return fmt.Errorf("storagenode: replication listen: %w", err)
	}
	defer ln.Close()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	go p.accept(ln)
	go p.tick(ctx)
	defer p.shutdown()
	var lastTry time.Time
	for ctx.Err() == nil {
		if p.stopping.Load() {
			// Left the pair (drained): wait to be asked back.
			select {
			case <-ctx.Done():
			case <-p.rejoin:
			}
			continue
		}
		p.mu.Lock()
		r, changed, link := p.role, p.changed, p.link
		notBefore := p.lastAnswer.Add(p.cfg.Promise)
		p.mu.Unlock()
		if r == roleOwner || link != nil {
			select {
			case <-ctx.Done():
			case <-changed:
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		if d := time.Until(lastTry.Add(100 * time.Millisecond)); d > 0 {
			sleep(ctx, d)
		}
		lastTry = time.Now()
		// Not connected to an owner: may this node own? (Only once its
		// promise to the last owner it heard has run out.)
		if time.Now().After(notBefore) && p.tryAcquire() {
			continue
		}
		// Meanwhile try to follow the peer, without holding up the next
		// bid: a dial to a machine that lost power waits out its timeout.
		if p.dialing.CompareAndSwap(false, true) {
			go func() {
				defer p.dialing.Store(false)
				p.follow(ctx)
			}()
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// shutdown closes the link and gives back any taken-over MAC.
func (p *Pair) shutdown() {
	p.mu.Lock()
	if p.link != nil {
		p.link.close()
	}
	tks := p.takeovers
	p.takeovers = nil
	p.serveUntil.Store(0)
	for _, b := range p.bitmaps {
		_ = b.close()
	}
	p.bitmaps = map[uint32]*bitmap{}
	p.mu.Unlock()
	for _, tk := range tks {
		tk.release()
	}
}

// tryAcquire asks the witness for ownership.
func (p *Pair) tryAcquire() bool { return p.acquire(false) }

// acquire asks the witness for ownership. handover: the owner released it
// to this node in sync, so the old owner holds this node's generation and
// will need only what changes from now on.
func (p *Pair) acquire(handover bool) bool {
	p.mu.Lock()
	epoch := p.st.Epoch
	p.mu.Unlock()
	sent := time.Now()
	rep, err := p.wc.Do(witness.Request{Pair: p.cfg.Name, Node: p.cfg.Node, Op: witness.OpAcquire, Epoch: epoch})
	if err != nil {
		p.mu.Lock()
		p.waitingFor = "witness: " + err.Error()
		p.mu.Unlock()
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if rep.Epoch > p.st.Epoch {
		p.st.Epoch = rep.Epoch
		p.mustSave()
	}
	if !rep.Granted {
		p.waitingFor = rep.Reason
		return false
	}
	p.lease = time.Duration(rep.LeaseMS) * time.Millisecond
	p.leaseEnd = sent.Add(p.lease)
	p.st.Epoch, p.st.OwnedEpoch = rep.Epoch, rep.Epoch
	// Whatever the peer holds, this node cannot tell which regions differ
	// (it may have been the follower, or an owner that crashed with
	// writes in flight): the next peer to join gets a full sync. After a
	// handover the old owner holds exactly this node's data.
	p.st.PeerGeneration = ""
	if handover {
		p.st.PeerGeneration = p.st.Generation
		p.clearBitmaps()
	}
	p.mustSave()
	p.event("owner of epoch %d (witness: current %v)", rep.Epoch, rep.Current)
	p.setRole(roleOwner)
	p.degrading = true
	go p.degrade(rep.Epoch)
	return true
}

// degrade makes the owner able to acknowledge alone: it waits out the
// read lease it granted, has the witness record it as the only current
// node, and takes over the peer's MACs.
func (p *Pair) degrade(epoch uint64) {
	p.mu.Lock()
	wait := time.Until(p.readLease)
	p.mu.Unlock()
	if wait > 0 {
		sleep(p.ctx, wait+10*time.Millisecond)
	}
	for p.ctx.Err() == nil {
		p.mu.Lock()
		if p.role != roleOwner || p.st.Epoch != epoch || !p.degrading {
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		sent := time.Now()
		rep, err := p.wc.Do(witness.Request{Pair: p.cfg.Name, Node: p.cfg.Node, Op: witness.OpDegraded, Epoch: epoch})
		if err != nil {
			p.mu.Lock()
			p.waitingFor = "alone, writes wait for the witness: " + err.Error()
			p.mu.Unlock()
			sleep(p.ctx, 100*time.Millisecond)
			continue
		}
		if !rep.Granted {
			p.stepDown("witness refused: " + rep.Reason)
			return
		}
		p.mu.Lock()
		if p.role != roleOwner || p.st.Epoch != epoch || !p.degrading {
			p.mu.Unlock()
			return
		}
		p.leaseEnd = sent.Add(time.Duration(rep.LeaseMS) * time.Millisecond)
		p.degrading = false
		p.st.Generation = newGeneration()
		p.mustSave()
		ws := p.waiting
		p.waiting = nil
		p.updateServe()
		p.event("writing alone (epoch %d, generation %s); %d writes waited", epoch, p.st.Generation[:8], len(ws))
		macs := slices.Clone(p.st.PeerMACs)
		p.mu.Unlock()
		for _, w := range ws {
			w(true)
		}
		if !p.cfg.NoTakeover {
			p.takeOver(epoch, macs)
		}
		return
	}
}

// stepDown gives up ownership: nothing waiting is acknowledged, the link
// closes, taken-over MACs go back.
func (p *Pair) stepDown(why string) {
	p.mu.Lock()
	if p.role != roleOwner {
		p.mu.Unlock()
		return
	}
	p.event("stepping down: %s", why)
	if p.link != nil {
		p.link.close()
		p.link = nil
	}
	p.pending = map[uint64]pendingWrite{}
	p.waiting = nil
	p.degrading, p.peerSyncd = false, false
	p.leaseEnd = time.Time{}
	p.setRole(roleNone)
	tks := p.takeovers
	p.takeovers = nil
	p.mu.Unlock()
	for _, tk := range tks {
		tk.release()
	}
}

// tick runs the timers: lease renewal, pings, link watchdogs, status.
func (p *Pair) tick(ctx context.Context) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	var lastRenew, lastPing, lastStatus time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			p.mu.Lock()
			r, link, epoch, lease := p.role, p.link, p.st.Epoch, p.lease
			p.mu.Unlock()
			if r == roleOwner && now.Sub(lastRenew) >= max(lease/3, 100*time.Millisecond) {
				lastRenew = now
				go p.renew(epoch)
			}
			if link != nil && now.Sub(time.Unix(0, link.lastRecv.Load())) > p.cfg.LinkTimeout {
				p.linkDown(link, fmt.Sprintf("peer silent for %v", p.cfg.LinkTimeout))
			}
			if r == roleFollower && link != nil && now.Sub(lastPing) >= 100*time.Millisecond {
				lastPing = now
				p.mu.Lock()
				if p.link == link {
					link.pings = append(link.pings, now)
					link.send(&replication.Ping{Epoch: epoch, Applied: p.applied})
				}
				p.mu.Unlock()
			}
			if now.Sub(lastStatus) >= 500*time.Millisecond {
				lastStatus = now
				p.writeStatus()
			}
		}
	}
}

func (p *Pair) renew(epoch uint64) {
	if !p.renewing.CompareAndSwap(false, true) {
		return
	}
	defer p.renewing.Store(false)
	sent := time.Now()
	rep, err := p.wc.Do(witness.Request{Pair: p.cfg.Name, Node: p.cfg.Node, Op: witness.OpRenew, Epoch: epoch})
	if err != nil {
		return // the lease runs out unless the follower's promise holds
	}
	if !rep.Granted {
		p.mu.Lock()
		if rep.Epoch > p.st.Epoch {
			p.st.Epoch = rep.Epoch
			p.mustSave()
		}
		p.mu.Unlock()
		p.stepDown("lease renewal refused: " + rep.Reason)
		return
	}
	p.mu.Lock()
	// A renewal granted just before this node handed ownership over
	// (Leave) must not make it serve again.
	if p.role == roleOwner && p.st.Epoch == epoch && !p.leaving && !p.stopping.Load() {
		p.lease = time.Duration(rep.LeaseMS) * time.Millisecond
		p.leaseEnd = sent.Add(p.lease)
		p.updateServe()
	}
	p.mu.Unlock()
}

// hello is this node's hello.
func (p *Pair) hello() *replication.Hello {
	h := &replication.Hello{Pair: p.cfg.Name, Node: p.cfg.Node, Epoch: p.st.Epoch, Generation: p.vouch(), MACs: [][6]byte{},
		Flags: replication.HelloIdentified}
	if p.role == roleOwner {
		h.Flags |= replication.HelloOwner
	}
	for _, name := range p.ifaces {
		if ifi, err := net.InterfaceByName(name); err == nil && len(ifi.HardwareAddr) == 6 {
			h.MACs = append(h.MACs, [6]byte(ifi.HardwareAddr))
		}
	}
	for _, v := range p.t.tab.Load().list {
		if v.Replicated {
			name := v.Name
			if name == "" {
				name = v.Addr()
			}
			h.Volumes = append(h.Volumes, replication.VolumeInfo{Shelf: v.Shelf, Slot: v.Slot, Sectors: v.sectors, Serial: name})
		}
	}
	return h
}

// compareHello says what is wrong with a peer's hello, or "".
func compareHello(cfg PairConfig, mine, theirs *replication.Hello) string {
	if theirs.Pair != cfg.Name {
		return fmt.Sprintf("peer %q is in pair %q, not %q", theirs.Node, theirs.Pair, cfg.Name)
	}
	if theirs.Node != cfg.PeerNode {
		return fmt.Sprintf("unknown peer %q (expected %q)", theirs.Node, cfg.PeerNode)
	}
	key := func(v replication.VolumeInfo) string { return wire.Addr(v.Shelf, v.Slot) }
	there := map[string]replication.VolumeInfo{}
	for _, v := range theirs.Volumes {
		there[key(v)] = v
	}
	var diffs []string
	for _, v := range mine.Volumes {
		o, ok := there[key(v)]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("%s (%s) missing on %s", key(v), v.Serial, theirs.Node))
		case o.Sectors != v.Sectors:
			diffs = append(diffs, fmt.Sprintf("%s: %d sectors on %s, %d on %s", key(v), v.Sectors, mine.Node, o.Sectors, theirs.Node))
		case o.Serial != v.Serial:
			diffs = append(diffs, fmt.Sprintf("%s: serial %q on %s, %q on %s", key(v), v.Serial, mine.Node, o.Serial, theirs.Node))
		}
		delete(there, key(v))
	}
	for k, o := range there {
		diffs = append(diffs, fmt.Sprintf("%s (%s) missing on %s", k, o.Serial, mine.Node))
	}
	slices.Sort(diffs)
	if len(diffs) > 0 {
		return "volumes differ: " + strings.Join(diffs, "; ")
	}
	return ""
}

// accept takes followers' connections (only an owner keeps one).
func (p *Pair) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go p.serveConn(c)
	}
}

func (p *Pair) refuse(c net.Conn, why string) {
	p.stats.refused.Add(1)
	p.mu.Lock()
	p.event("replication connection from %s refused: %s", c.RemoteAddr(), why)
	p.mu.Unlock()
	b, _ := replication.Append(nil, &replication.Refuse{Reason: why})
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.Write(b)
	c.Close()
}

func (p *Pair) serveConn(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	m, _, err := replication.Read(c, nil)
	if err != nil {
		p.stats.dropped.Add(1)
		p.log.Warn("replication connection dropped", "from", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	theirs, ok := m.(*replication.Hello)
	if !ok {
		p.stats.dropped.Add(1)
		p.refuse(c, fmt.Sprintf("expected a hello, got %T", m))
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	p.mu.Lock()
	mine := p.hello()
	if why := compareHello(p.cfg, mine, theirs); why != "" {
		p.mu.Unlock()
		p.refuse(c, why)
		return
	}
	switch {
	case p.role == roleOwner && theirs.Flags&replication.HelloOwner != 0:
		// Both claim ownership: the witness's renewal settles it (the
		// lower epoch's is refused and it steps down); until then, no link.
		p.mu.Unlock()
		p.refuse(c, fmt.Sprintf("%s and %s both claim ownership (epochs %d and %d)", p.cfg.Node, theirs.Node, mine.Epoch, theirs.Epoch))
		return
	case theirs.Epoch > p.st.Epoch && p.role == roleOwner:
		// The peer claims to have seen an epoch this owner never held:
		// its history differs from the witness's, which made this node
		// owner. (A deposed owner learns it from the witness at its next
		// renewal, not from a peer's word.)
		p.mu.Unlock()
		p.refuse(c, fmt.Sprintf("epoch history differs: %s has seen epoch %d, but %s owns epoch %d", theirs.Node, theirs.Epoch, p.cfg.Node, mine.Epoch))
		return
	case p.role != roleOwner:
		p.mu.Unlock()
		p.refuse(c, fmt.Sprintf("%s does not own writes", p.cfg.Node))
		return
	case p.link != nil:
		p.mu.Unlock()
		p.refuse(c, "already connected to the peer")
		return
	case p.degrading:
		p.mu.Unlock()
		p.refuse(c, "owner is recording that it is alone; try again")
		return
	}
	l := newLink(c)
	l.peer = theirs
	p.link = l
	p.peerSyncd = false
	p.recent = p.recent[:0]
	peerMACs := make([]string, len(theirs.MACs))
	for i, m := range theirs.MACs {
		peerMACs[i] = net.HardwareAddr(m[:]).String()
	}
	full := theirs.Generation == [16]byte{} || hex.EncodeToString(theirs.Generation[:]) != p.st.PeerGeneration
	p.st.PeerMACs = peerMACs
	var err2 error
	for _, v := range p.t.tab.Load().list {
		if !v.Replicated {
			continue
		}
		bm, err := p.bitmapFor(v)
		if err == nil && full {
			err = bm.setAll()
		}
		if err != nil {
			err2 = err
		}
	}
	p.mustSave()
	p.event("follower %s connected (%s resync)", theirs.Node, map[bool]string{true: "full", false: "changed regions only"}[full])
	p.updateServe()
	l.send(mine)
	p.mu.Unlock()
	if err2 != nil {
		p.linkDown(l, "bitmap: "+err2.Error())
		return
	}
	go l.writer()
	go p.resyncTo(l)
	p.read(l)
}

func (p *Pair) bitmapFor(v *volume) (*bitmap, error) {
	k := key(v.Shelf, v.Slot)
	size := int64(v.sectors) * wire.SectorSize
	if b := p.bitmaps[k]; b != nil {
		if b.n == uint64((size+RegionSize-1)/RegionSize) {
			return b, nil
		}
		// The volume was grown (its file reread): the same bits, more
		// regions.
		if err := b.flush(); err != nil {
			return nil, err
		}
		_ = b.close()
		delete(p.bitmaps, k)
	}
	b, err := openBitmap(filepath.Join(p.dir, "pair-bitmaps", strings.TrimPrefix(v.Addr(), "e")), size)
	if err != nil {
		return nil, err
	}
	p.bitmaps[k] = b
	return b, nil
}

// follow connects to the peer as a follower and runs the link until it
// fails.
func (p *Pair) follow(ctx context.Context) {
	d := net.Dialer{Timeout: p.cfg.LinkTimeout}
	c, err := d.DialContext(ctx, "tcp", p.cfg.PeerAddr)
	if err != nil {
		return
	}
	p.mu.Lock()
	if p.role == roleOwner {
		p.mu.Unlock()
		c.Close()
		return
	}
	mine := p.hello()
	p.mu.Unlock()
	b, _ := replication.Append(nil, mine)
	// A stopped peer's kernel still accepts the connection; waiting
	// longer than the link timeout for its hello would only delay this
	// node's own bid for ownership.
	_ = c.SetDeadline(time.Now().Add(p.cfg.LinkTimeout))
	if _, err := c.Write(b); err != nil {
		c.Close()
		return
	}
	m, _, err := replication.Read(c, nil)
	if err != nil {
		c.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	switch h := m.(type) {
	case *replication.Refuse:
		p.mu.Lock()
		p.waitingFor = "peer refused: " + h.Reason
		p.mu.Unlock()
		c.Close()
		sleep(ctx, 200*time.Millisecond)
		return
	case *replication.Hello:
		p.mu.Lock()
		why := compareHello(p.cfg, mine, h)
		if why == "" && h.Flags&replication.HelloOwner == 0 {
			why = "peer does not own writes"
		}
		if why == "" && h.Epoch < p.st.Epoch {
			why = fmt.Sprintf("peer owns epoch %d, older than %d seen here", h.Epoch, p.st.Epoch)
		}
		if why != "" || p.role == roleOwner {
			p.waitingFor = why
			p.mu.Unlock()
			p.stats.refused.Add(1)
			c.Close()
			sleep(ctx, 200*time.Millisecond)
			return
		}
		p.st.PeerMACs = p.st.PeerMACs[:0]
		for _, m := range h.MACs {
			p.st.PeerMACs = append(p.st.PeerMACs, net.HardwareAddr(m[:]).String())
		}
		p.st.Epoch = max(p.st.Epoch, h.Epoch)
		p.mustSave()
		l := newLink(c)
		l.peer = h
		p.link = l
		p.fInSync = false
		p.applied = 0
		p.lastAnswer = time.Now()
		p.setRole(roleFollower)
		p.event("following %s (epoch %d)", h.Node, h.Epoch)
		p.mu.Unlock()
		go l.writer()
		p.read(l)
	default:
		p.stats.dropped.Add(1)
		c.Close()
	}
}

// read handles a link's messages until it fails.
func (p *Pair) read(l *plink) {
	var buf []byte
	br := bufio.NewReaderSize(l.c, 256<<10)
	for {
		m, b, err := replication.Read(br, buf)
		buf = b
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				p.stats.dropped.Add(1)
			}
			p.linkDown(l, "replication link: "+err.Error())
			return
		}
		l.lastRecv.Store(time.Now().UnixNano())
		switch m := m.(type) {
		case *replication.Write:
			p.onWrite(l, m)
		case *replication.Ack:
			p.onAck(l, m)
		case *replication.Ping:
			p.onPing(l, m)
		case *replication.InSync:
			p.onInSync(l, m)
		case *replication.Leave:
			p.onLeave(l, m)
		case *replication.Refuse:
			p.linkDown(l, "peer: "+m.Reason)
			return
		default:
			p.stats.dropped.Add(1)
			p.linkDown(l, fmt.Sprintf("unexpected %T", m))
			return
		}
	}
}

// linkDown handles the loss of l.
func (p *Pair) linkDown(l *plink, why string) {
	l.close()
	p.mu.Lock()
	if p.link != l {
		p.mu.Unlock()
		return
	}
	p.link = nil
	p.event("replication link down: %s", why)
	switch p.role {
	case roleOwner:
		// Every write in flight may be missing at the peer.
		for _, w := range p.pending {
			if w.region < 0 {
				if v := p.t.tab.Load().byAddr[w.key]; v != nil {
					if bm, err := p.bitmapFor(v); err == nil {
						if err := bm.mark(w.off, int64(w.size)); err != nil {
							p.log.Error("marking dirty", "err", err)
						}
					}
				}
				if w.done != nil {
					p.waiting = append(p.waiting, w.done)
				}
			}
		}
		p.pending = map[uint64]pendingWrite{}
		p.recent = p.recent[:0]
		p.peerSyncd = false
		p.resync.running = false
		if !p.degrading {
			p.degrading = true
			go p.degrade(p.st.Epoch)
		}
	case roleFollower:
		p.fInSync = false
		p.fwd = map[uint64]forwarded{}
		p.setRole(roleNone)
	}
	p.updateServe()
	p.mu.Unlock()
}

// onPing: the owner answers the follower's ping, granting a read lease
// while the follower serves; the follower takes the answer's lease.
func (p *Pair) onPing(l *plink, m *replication.Ping) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.link != l {
		return
	}
	now := time.Now()
	switch p.role {
	case roleOwner:
		p.pruneRecent(m.Applied)
		ans := &replication.Ping{Epoch: p.st.Epoch}
		if p.peerSyncd {
			ans.ReadLeaseMS = uint32(p.cfg.ReadLease.Milliseconds())
			p.readLease = now.Add(p.cfg.ReadLease)
		}
		p.promiseEnd = now.Add(p.cfg.Promise)
		p.updateServe()
		l.send(ans)
	case roleFollower:
		if len(l.pings) == 0 {
			return
		}
		sent := l.pings[0]
		l.pings = l.pings[1:]
		p.lastAnswer = now
		if m.Epoch > p.st.Epoch {
			p.st.Epoch = m.Epoch
			p.mustSave()
		}
		if m.ReadLeaseMS > 0 && p.fInSync {
			p.fReadEnd = sent.Add(time.Duration(m.ReadLeaseMS) * time.Millisecond)
		}
		p.updateServe()
	}
}

// onInSync: the follower holds the owner's generation and may serve.
func (p *Pair) onInSync(l *plink, m *replication.InSync) {
	p.mu.Lock()
	if p.link != l || p.role != roleFollower {
		p.mu.Unlock()
		return
	}
	p.st.Generation = hex.EncodeToString(m.Generation[:])
	p.st.OwnedEpoch = 0
	if m.Epoch > p.st.Epoch {
		p.st.Epoch = m.Epoch
	}
	p.mustSave()
	p.fInSync = true
	p.updateServe()
	p.event("in sync with %s (generation %s): serving", l.peer.Node, p.st.Generation[:8])
	p.mu.Unlock()
	// Serve from the next answered ping on (the read lease), and tell
	// the switch and the initiators where this node's MAC is.
	go func() {
		deadline := time.Now().Add(2 * time.Second)
		for !p.serving() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		p.t.announceAll()
	}()
}

// onWrite applies a write: on the follower, the owner's replicated (or
// resync) write; on the owner, a follower's forward.
func (p *Pair) onWrite(l *plink, m *replication.Write) {
	if m.Flags&replication.FlagForward != 0 {
		p.onForward(l, m)
		return
	}
	p.mu.Lock()
	if p.link != l || p.role != roleFollower {
		p.mu.Unlock()
		return
	}
	if m.Epoch < p.st.Epoch {
		p.stats.stale.Add(1)
		l.send(&replication.Ack{Epoch: p.st.Epoch, Seq: m.Seq, Status: replication.StatusStaleEpoch})
		p.mu.Unlock()
		return
	}
	if m.Epoch > p.st.Epoch {
		p.st.Epoch = m.Epoch
		p.mustSave()
	}
	epoch := p.st.Epoch
	p.mu.Unlock()
	st := p.apply(m.Shelf, m.Slot, m.LBA, m.Data)
	p.mu.Lock()
	if p.link == l && st == replication.StatusOK {
		p.applied = max(p.applied, m.Seq)
	}
	p.mu.Unlock()
	if m.Flags&replication.FlagResync != 0 {
		p.stats.resyncBytes.Add(uint64(len(m.Data)))
	} else {
		p.stats.replicated.Add(uint64(len(m.Data)))
	}
	l.send(&replication.Ack{Epoch: epoch, Seq: m.Seq, Status: st})
}

// apply writes data at lba of shelf.slot on this node.
func (p *Pair) apply(shelf uint16, slot uint8, lba uint64, data []byte) replication.Status {
	p.t.inflight.RLock()
	defer p.t.inflight.RUnlock()
	v := p.t.tab.Load().byAddr[key(shelf, slot)]
	if v == nil || !v.Replicated {
		return replication.StatusNoVolume
	}
	n := uint64(len(data) / wire.SectorSize)
	if lba >= v.sectors || n > v.sectors-lba {
		return replication.StatusOutOfRange
	}
	if err := v.writeAt(data, int64(lba*wire.SectorSize), false); err != nil {
		p.log.Warn("replicated write failed", "volume", v.Addr(), "lba", lba, "err", err)
		return replication.StatusIOError
	}
	return replication.StatusOK
}

// onForward: the owner applies a follower's forwarded write and
// acknowledges it once it is on both nodes.
func (p *Pair) onForward(l *plink, m *replication.Write) {
	p.stats.forwards.Add(1)
	p.mu.Lock()
	epoch, r := p.st.Epoch, p.role
	p.mu.Unlock()
	switch {
	case m.Epoch < epoch:
		p.stats.stale.Add(1)
		l.send(&replication.Ack{Epoch: epoch, Seq: m.Seq, Status: replication.StatusStaleEpoch})
		return
	case r != roleOwner:
		l.send(&replication.Ack{Epoch: epoch, Seq: m.Seq, Status: replication.StatusNotOwner})
		return
	}
	p.t.inflight.RLock()
	defer p.t.inflight.RUnlock()
	v := p.t.tab.Load().byAddr[key(m.Shelf, m.Slot)]
	n := uint64(len(m.Data) / wire.SectorSize)
	switch {
	case v == nil || !v.Replicated:
		l.send(&replication.Ack{Epoch: epoch, Seq: m.Seq, Status: replication.StatusNoVolume})
		return
	case m.LBA >= v.sectors || n > v.sectors-m.LBA:
		l.send(&replication.Ack{Epoch: epoch, Seq: m.Seq, Status: replication.StatusOutOfRange})
		return
	}
	seq := m.Seq
	// A forward that names its initiator can be known again; one from a
	// node of the release before cannot.
	identified := m.Flags&replication.FlagIdentified != 0
	var id writeID
	if identified {
		id = newWriteID(key(m.Shelf, m.Slot), m.Initiator, m.Tag, m.LBA, m.Data)
	}
	if identified && p.done.has(id) {
		// The late original of a resend this node completed already.
		p.stats.duplicates.Add(1)
		l.send(&replication.Ack{Epoch: epoch, Seq: seq, Status: replication.StatusOK})
		return
	}
	p.mu.Lock()
	p.pruneRecent(m.Seen)
	if p.superseded(key(m.Shelf, m.Slot), m.LBA, m.LBA+n, m.Seen) {
		// A late resend of a write already overtaken, or a write
		// concurrent with an overlapping one: ordered before it, so
		// there is nothing to apply.
		p.mu.Unlock()
		p.stats.superseded.Add(1)
		if identified {
			p.done.add(id)
		}
		l.send(&replication.Ack{Epoch: epoch, Seq: seq, Status: replication.StatusOK})
		return
	}
	p.mu.Unlock()
	ack := func(ok bool) {
		st := replication.StatusOK
		if !ok {
			st = replication.StatusIOError
		}
		l.send(&replication.Ack{Epoch: epoch, Seq: seq, Status: st})
	}
	if identified {
		ack = p.done.completes(id, ack)
	}
	p.ownerWrite(v, int64(m.LBA*wire.SectorSize), slices.Clone(m.Data), ack)
}

// pruneRecent forgets writes the follower has applied; the caller holds
// p.mu.
func (p *Pair) pruneRecent(applied uint64) {
	i := 0
	for i < len(p.recent) && p.recent[i].seq <= applied {
		i++
	}
	if i > 0 {
		p.recent = append(p.recent[:0], p.recent[i:]...)
	}
}

// superseded says whether a forward stamped seen overlaps a write the
// owner sequenced after seen; the caller holds p.mu.
func (p *Pair) superseded(k uint32, lba, end, seen uint64) bool {
	for _, r := range p.recent {
		if r.seq > seen && r.key == k && r.lba < end && lba < r.end {
			return true
		}
	}
	return false
}

// onAck completes a replicated write, a resync copy or a forward.
func (p *Pair) onAck(l *plink, m *replication.Ack) {
	p.mu.Lock()
	if p.link != l {
		p.mu.Unlock()
		return
	}
	if m.Status == replication.StatusStaleEpoch || m.Epoch > p.st.Epoch {
		p.stats.stale.Add(1)
		p.mu.Unlock()
		p.linkDown(l, fmt.Sprintf("peer is at epoch %d", m.Epoch))
		if m.Epoch > p.st.Epoch {
			p.mu.Lock()
			p.st.Epoch = m.Epoch
			p.mustSave()
			p.mu.Unlock()
			p.stepDown(fmt.Sprintf("peer has seen epoch %d", m.Epoch))
		}
		return
	}
	switch p.role {
	case roleOwner:
		w, ok := p.pending[m.Seq]
		if !ok {
			p.mu.Unlock()
			return
		}
		delete(p.pending, m.Seq)
		if m.Status != replication.StatusOK {
			p.mu.Unlock()
			p.linkDown(l, fmt.Sprintf("peer failed a write (status %d)", m.Status))
			return
		}
		if w.region >= 0 {
			if bm := p.bitmaps[w.key]; bm != nil {
				bm.clear(uint64(w.region))
			}
			p.resync.done += int64(w.size)
			select {
			case <-l.window:
			default:
			}
		}
		p.mu.Unlock()
		if w.done != nil {
			w.done(true)
		}
	case roleFollower:
		fw, ok := p.fwd[m.Seq]
		delete(p.fwd, m.Seq)
		p.mu.Unlock()
		if ok {
			fw.done(m.Status == replication.StatusOK)
		}
	default:
		p.mu.Unlock()
	}
}

// ownerWrite applies a write on the owner and acknowledges it (done) once
// it is on both nodes, or, alone, once the witness has recorded that and
// the region is marked in the bitmap. done is never called for a write
// this node may not acknowledge: the initiator resends. The caller holds
// p.t.inflight for reading.
func (p *Pair) ownerWrite(v *volume, off int64, data []byte, done func(bool)) {
	p.mu.Lock()
	now := time.Now()
	valid := now.Before(p.leaseEnd) || (p.link != nil && now.Before(p.promiseEnd))
	if p.role != roleOwner || !valid || p.leaving {
		p.mu.Unlock()
		return
	}
	if err := v.writeAt(data, off, false); err != nil {
		p.mu.Unlock()
		p.log.Warn("write failed", "volume", v.Addr(), "offset", off, "err", err)
		done(false)
		return
	}
	k := key(v.Shelf, v.Slot)
	if l := p.link; l != nil {
		p.seq++
		p.pending[p.seq] = pendingWrite{key: k, off: off, size: len(data), region: -1, done: done}
		lba := uint64(off / wire.SectorSize)
		p.recent = append(p.recent, recentWrite{key: k, lba: lba, end: lba + uint64(len(data)/wire.SectorSize), seq: p.seq})
		flags := uint8(0)
		if v.Sync {
			flags |= replication.FlagSync
		}
		l.send(&replication.Write{Epoch: p.st.Epoch, Seq: p.seq, Shelf: v.Shelf, Slot: v.Slot, Flags: flags,
			LBA: uint64(off / wire.SectorSize), Data: data})
		p.mu.Unlock()
		return
	}
	bm, err := p.bitmapFor(v)
	if err != nil {
		p.mu.Unlock()
		p.log.Error("cannot record a write made alone; not acknowledging it", "err", err)
		return
	}
	// The region's bit is set now and on disk before the answer; the
	// fdatasync runs outside p.mu and is shared by the writes that come
	// meanwhile.
	need := bm.set(off, int64(len(data)))
	ack := func(ok bool) {
		if ok {
			if err := bm.sync(need); err != nil {
				p.log.Error("cannot record a write made alone; not acknowledging it", "err", err)
				return
			}
		}
		done(ok)
	}
	if p.degrading {
		p.waiting = append(p.waiting, ack)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	if bm.flushed.Load() >= need {
		done(true)
		return
	}
	go ack(true)
}

// aoeWrite takes an initiator's write to a replicated volume. The reply
// leaves once the write is on both nodes (or on the owner alone, recorded
// as such); a write this node may not take gets no reply at all.
func (p *Pair) aoeWrite(h *Handler, v *volume, f wire.Frame, off int64, size int) {
	reply := make([]byte, max(wire.ATALen, wire.MinFrame))
	wire.PutHeader(reply, f.Src(), h.src[:], wire.FlagResponse, 0, v.Shelf, v.Slot, f.Command(), f.Tag())
	copy(reply[wire.HeaderLen:wire.ATALen], f[wire.HeaderLen:wire.ATALen])
	data := slices.Clone(f.Data()[:size])
	c := h.c
	send := h.send
	done := func(ok bool) {
		if !ok {
			return // silence: the initiator resends, to this node or the other
		}
		wire.SetATAStatus(reply, 0, wire.StatusDRDY)
		c.wr.Add(uint64(size))
		c.tx.Add(1)
		if send != nil {
			_ = send(reply)
		}
	}
	id := newWriteID(key(v.Shelf, v.Slot), [6]byte(f.Src()), f.Tag(), uint64(off/wire.SectorSize), data)
	p.mu.Lock()
	r, l, epoch := p.role, p.link, p.st.Epoch
	p.mu.Unlock()
	switch r {
	case roleOwner:
		if p.done.has(id) {
			// The late original of a resend this node completed already
			// (forwarded by the follower): answered, not applied again.
			p.stats.duplicates.Add(1)
			done(true)
			return
		}
		p.ownerWrite(v, off, data, p.done.completes(id, done))
	case roleFollower:
		if l == nil {
			return
		}
		p.mu.Lock()
		if p.link != l || !p.fInSync {
			p.mu.Unlock()
			return
		}
		p.seq++
		p.fwd[p.seq] = forwarded{key: key(v.Shelf, v.Slot), id: id, off: off, data: data, done: done}
		flags := uint8(replication.FlagForward)
		if v.Sync {
			flags |= replication.FlagSync
		}
		if l.peer.Flags&replication.HelloIdentified != 0 {
			flags |= replication.FlagIdentified
		}
		l.send(&replication.Write{Epoch: epoch, Seq: p.seq, Shelf: v.Shelf, Slot: v.Slot, Flags: flags,
			LBA: uint64(off / wire.SectorSize), Seen: p.applied, Initiator: id.mac, Tag: id.tag, Data: data})
		p.mu.Unlock()
	}
}

// resyncTo copies every dirty region to the follower on l, rate-limited,
// then records the pair in sync at the witness, gives back the follower's
// MAC and tells it to serve.
func (p *Pair) resyncTo(l *plink) {
	p.mu.Lock()
	var total int64
	per := map[uint32]int64{}
	for _, v := range p.t.tab.Load().list {
		if bm := p.bitmaps[key(v.Shelf, v.Slot)]; v.Replicated && bm != nil {
			total += int64(bm.dirty) * RegionSize
			per[key(v.Shelf, v.Slot)] = int64(bm.dirty) * RegionSize
		}
	}
	p.resync = resyncProgress{running: true, total: total, perVolume: per, started: time.Now()}
	p.mu.Unlock()
	start := time.Now()
	var sent int64
	for _, v := range p.t.tab.Load().list {
		if !v.Replicated {
			continue
		}
		for r := uint64(0); ; r++ {
			select {
			case l.window <- struct{}{}:
			case <-l.closed:
				return
			}
			p.t.inflight.RLock()
			p.mu.Lock()
			if p.link != l {
				p.mu.Unlock()
				p.t.inflight.RUnlock()
				return
			}
			bm := p.bitmaps[key(v.Shelf, v.Slot)]
			var ok bool
			if bm != nil {
				r, ok = bm.next(r)
			}
			if !ok || v.f == nil {
				p.mu.Unlock()
				p.t.inflight.RUnlock()
				<-l.window
				break
			}
			off := int64(r) * RegionSize
			size := min(int64(RegionSize), int64(v.sectors)*wire.SectorSize-off)
			data := make([]byte, size)
			if err := v.readAt(data, off, false); err != nil {
				p.mu.Unlock()
				p.t.inflight.RUnlock()
				p.linkDown(l, "resync read: "+err.Error())
				return
			}
			p.seq++
			p.pending[p.seq] = pendingWrite{key: key(v.Shelf, v.Slot), off: off, size: int(size), region: int64(r)}
			l.send(&replication.Write{Epoch: p.st.Epoch, Seq: p.seq, Shelf: v.Shelf, Slot: v.Slot, Flags: replication.FlagResync,
				LBA: uint64(off / wire.SectorSize), Data: data})
			p.mu.Unlock()
			p.t.inflight.RUnlock()
			sent += size
			if ahead := time.Duration(float64(sent)/float64(p.cfg.ResyncRate)*float64(time.Second)) - time.Since(start); ahead > 0 {
				select {
				case <-time.After(ahead):
				case <-l.closed:
					return
				}
			}
		}
	}
	// Wait for the last copies' acknowledgements.
	for i := 0; i < cap(l.window); i++ {
		select {
		case l.window <- struct{}{}:
		case <-l.closed:
			return
		}
	}
	for {
		p.mu.Lock()
		if p.link != l || p.role != roleOwner {
			p.mu.Unlock()
			return
		}
		epoch, peer := p.st.Epoch, l.peer.Node
		var err error
		for _, bm := range p.bitmaps {
			if bm.dirty != 0 {
				err = fmt.Errorf("%d regions still dirty", bm.dirty)
			}
		}
		if err == nil {
			for _, bm := range p.bitmaps {
				if ferr := bm.flush(); ferr != nil {
					err = ferr
				}
			}
		}
		p.mu.Unlock()
		if err != nil {
			p.linkDown(l, "resync: "+err.Error())
			return
		}
		rep, werr := p.wc.Do(witness.Request{Pair: p.cfg.Name, Node: p.cfg.Node, Op: witness.OpInSync, Epoch: epoch, Peer: peer})
		if werr != nil {
			p.mu.Lock()
			p.waitingFor = "resync done, waiting for the witness: " + werr.Error()
			p.mu.Unlock()
			select {
			case <-time.After(100 * time.Millisecond):
				continue
			case <-l.closed:
				return
			}
		}
		if !rep.Granted {
			p.stepDown("witness refused in-sync: " + rep.Reason)
			return
		}
		break
	}
	// Give the follower's MAC back before it serves from it.
	p.mu.Lock()
	tks := p.takeovers
	p.takeovers = nil
	p.mu.Unlock()
	for _, tk := range tks {
		tk.release()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.link != l {
		return
	}
	p.peerSyncd = true
	p.updateServe()
	p.st.PeerGeneration = p.st.Generation
	p.mustSave()
	p.resync.running = false
	p.event("follower %s in sync: %d MiB copied in %v", l.peer.Node, sent>>20, time.Since(start).Round(time.Millisecond))
	l.send(&replication.InSync{Epoch: p.st.Epoch, Generation: genBytes(p.st.Generation)})
}

// Leave departs from the pair in a planned way, so that the peer carries
// on without a failover's stall: an owner with an in-sync follower stops
// taking writes, lets those in flight complete, releases ownership at the
// witness and tells the follower to take it; a follower stops serving and
// tells the owner its read lease is void, so the owner goes on alone at
// once. Afterwards this node neither bids nor follows. It returns within
// about timeout.
func (p *Pair) Leave(timeout time.Duration) {
	p.stopping.Store(true)
	start := time.Now()
	deadline := start.Add(timeout)
	p.mu.Lock()
	l, epoch := p.link, p.st.Epoch
	switch {
	case p.role == roleOwner && l != nil && p.peerSyncd:
		p.leaving = true
		p.mu.Unlock()
		drained := false
		for time.Now().Before(deadline) {
			p.mu.Lock()
			drained = len(p.pending) == 0 && len(p.waiting) == 0
			p.mu.Unlock()
			if drained {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		// The witness makes the peer the owner, alone, in one step; the
		// peer then writes as soon as the Leave reaches it. A witness
		// that refuses (an older one, or one that does not count the
		// peer current) takes ownership back instead, and the peer asks
		// for it.
		sent := time.Now()
		rep, err := p.wc.Do(witness.Request{Pair: p.cfg.Name, Node: p.cfg.Node, Op: witness.OpHandover, Epoch: epoch, Peer: l.peer.Node})
		handover := err == nil && rep.Granted
		if !handover {
			rep, err = p.wc.Do(witness.Request{Pair: p.cfg.Name, Node: p.cfg.Node, Op: witness.OpRelease, Epoch: epoch})
		}
		p.mu.Lock()
		if err != nil || !rep.Granted {
			p.event("handover: the witness did not take ownership back (%v %s); the peer will fail over", err, rep.Reason)
		} else {
			if drained {
				// Everything this node acknowledged is on the peer, and it
				// took nothing since: it can vouch for its copy.
				p.st.OwnedEpoch = 0
				p.mustSave()
			}
			msg, how := &replication.Leave{Epoch: epoch}, "it asks the witness"
			if left := time.Duration(rep.LeaseMS)*time.Millisecond - time.Since(sent); handover && left > handoverMargin {
				msg.NewEpoch, msg.LeaseMS = rep.Epoch, uint32(left.Milliseconds())
				how = fmt.Sprintf("it owns epoch %d on receipt", rep.Epoch)
			}
			l.send(msg)
			p.event("handed ownership of epoch %d to %s in %v (%s)", epoch, l.peer.Node, time.Since(start).Round(100*time.Microsecond), how)
		}
		p.leaseEnd, p.promiseEnd = time.Time{}, time.Time{}
		p.updateServe()
		p.mu.Unlock()
	case p.role == roleFollower && l != nil:
		p.fInSync = false
		p.updateServe()
		l.send(&replication.Leave{Epoch: epoch})
		p.event("leaving the pair: told %s", l.peer.Node)
		p.mu.Unlock()
	default:
		p.mu.Unlock()
		return
	}
	// Let the message go out and the peer act on it (it closes the link).
	select {
	case <-l.closed:
	case <-time.After(time.Until(deadline)):
	}
}

// Left says whether the node has left the pair (Leave) and not rejoined.
func (p *Pair) Left() bool { return p.stopping.Load() }

// Rejoin undoes Leave: the node follows (or bids) again and comes back
// through a resync.
func (p *Pair) Rejoin() {
	p.mu.Lock()
	p.leaving = false
	p.mu.Unlock()
	if p.stopping.CompareAndSwap(true, false) {
		p.mu.Lock()
		p.event("rejoining the pair")
		p.mu.Unlock()
		select {
		case p.rejoin <- struct{}{}:
		default:
		}
	}
}

// onLeave: the peer departs in a planned way (Leave).
func (p *Pair) onLeave(l *plink, m *replication.Leave) {
	p.mu.Lock()
	if p.link != l {
		p.mu.Unlock()
		return
	}
	switch p.role {
	case roleOwner:
		// The follower no longer serves: nothing to wait out.
		p.readLease = time.Time{}
		p.mu.Unlock()
		p.linkDown(l, "the follower is leaving")
	case roleFollower:
		p.link = nil
		l.close()
		p.fInSync = false
		held := p.fwd
		p.fwd = map[uint64]forwarded{}
		if m.NewEpoch > p.st.Epoch && !p.stopping.Load() {
			p.ownByHandover(l.peer.Node, m)
			p.mu.Unlock()
			p.replay(held)
			return
		}
		p.event("%s handed over ownership (epoch %d)", l.peer.Node, m.Epoch)
		p.setRole(roleNone)
		p.mu.Unlock()
		go func() {
			for end := time.Now().Add(2 * time.Second); time.Now().Before(end) && !p.stopping.Load(); time.Sleep(10 * time.Millisecond) {
				if p.acquire(true) {
					return
				}
			}
		}()
	default:
		p.mu.Unlock()
	}
}

// forwarded is a write a follower forwarded to the owner.
type forwarded struct {
	key  uint32
	id   writeID
	off  int64
	data []byte
	done func(bool)
}

// replay applies, as the new owner, the writes this node forwarded to the
// owner that handed over and that it never answered: a leaving owner
// takes no write, and the writes it took are answered before its Leave.
// Applied in the order they were forwarded, they are answered at once
// instead of at the initiator's resend, which would bring the same data.
func (p *Pair) replay(held map[uint64]forwarded) {
	if len(held) == 0 {
		return
	}
	p.t.inflight.RLock()
	defer p.t.inflight.RUnlock()
	tab := p.t.tab.Load()
	for _, seq := range slices.Sorted(maps.Keys(held)) {
		fw := held[seq]
		if v := tab.byAddr[fw.key]; v != nil && v.Replicated {
			p.ownerWrite(v, fw.off, fw.data, p.done.completes(fw.id, fw.done))
		}
	}
	p.mu.Lock()
	p.event("answered %d writes the old owner left unanswered", len(held))
	p.mu.Unlock()
}

// handoverMargin is taken off a lease handed over in a Leave, for the
// message's flight and the clocks' drift.
const handoverMargin = 50 * time.Millisecond

// ownByHandover makes this node the owner of the epoch the witness gave
// it from the leaving owner (m.NewEpoch), writing alone at once: the
// witness already counts it the only current node. The old owner holds
// exactly this node's data, so it will need only what changes from now
// on. The caller holds p.mu.
func (p *Pair) ownByHandover(from string, m *replication.Leave) {
	p.lease = time.Duration(m.LeaseMS) * time.Millisecond
	p.leaseEnd = time.Now().Add(p.lease - handoverMargin)
	p.st.Epoch, p.st.OwnedEpoch = m.NewEpoch, m.NewEpoch
	p.st.PeerGeneration = p.st.Generation
	p.clearBitmaps()
	p.st.Generation = newGeneration()
	p.mustSave()
	p.setRole(roleOwner)
	p.degrading, p.waiting = false, nil
	p.updateServe()
	p.event("owner of epoch %d, handed over by %s; writing alone (generation %s)", m.NewEpoch, from, p.st.Generation[:8])
	if !p.cfg.NoTakeover {
		go p.takeOver(m.NewEpoch, slices.Clone(p.st.PeerMACs))
	}
}

// clearBitmaps empties every volume's bitmap; the caller holds p.mu.
func (p *Pair) clearBitmaps() {
	for _, v := range p.t.tab.Load().list {
		if !v.Replicated {
			continue
		}
		bm, err := p.bitmapFor(v)
		if err != nil {
			continue
		}
		for r := range bm.n {
			bm.clear(r)
		}
		if err := bm.flush(); err != nil {
			p.log.Error("clearing dirty bitmap", "err", err)
		}
	}
}

// announceAll re-announces every volume on every port.
func (t *Target) announceAll() {
	t.mu.Lock()
	ports := slices.Clone(t.ports)
	vols := t.tab.Load().list
	t.mu.Unlock()
	for _, p := range ports {
		for _, v := range vols {
			p.announce(t, v)
		}
	}
}
