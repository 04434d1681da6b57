package storagenode

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fabric-project/fabric/aoe/rawsock"
	"github.com/fabric-project/fabric/aoe/wire"
	"golang.org/x/sync/errgroup"
)

// batchSize is how many frames one system call receives or sends.
const batchSize = 64

// minBufMTU is the smallest MTU the frame buffers are sized for: a port
// opened at 1500 still serves jumbo frames once the link is raised to
// 9000, without a restart.
const minBufMTU = 9000

// mtuPoll is how often Serve rereads the interface's MTU.
var mtuPoll = time.Second

// Port is an interface the target serves on: one raw socket per queue, all
// in one PACKET_FANOUT group so the kernel spreads initiators across them
// (each initiator's frames stay on one queue, in order).
type Port struct {
	ifi   *net.Interface
	conns []*rawsock.Conn
	mu    sync.Mutex // serialises announcements
	// mtu is the interface's MTU now: Serve rereads it every mtuPoll and,
	// when it changes, announces every volume again so that initiators
	// learn the new sectors per frame (the Linux aoe driver sizes its
	// requests from the sector count of the last Query Config reply).
	// bufMTU is what the frame buffers hold, the ceiling of what is
	// advertised.
	mtu    atomic.Int32
	bufMTU int
}

// Listen opens queues raw sockets on the named interface (0: one). More
// queues spread initiators over cores with PACKET_FANOUT; on a small machine
// where the initiators share the CPUs one queue did better (measured:
// 923 vs 706 MB/s on 2 cores, when the queues still took frames
// round-robin: docs/benchmarks.md as of 0d1baea).
// Call it inside the network namespace the interface lives in; Serve can
// then run anywhere.
func Listen(ifname string, queues int) (*Port, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("storagenode: interface %q: %w", ifname, err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("storagenode: interface %s has no Ethernet address", ifname)
	}
	if queues <= 0 {
		queues = 1
	}
	group := uint16((os.Getpid()*131 + ifi.Index*7919) & 0xffff)
	if group == 0 {
		group = 1
	}
	p := &Port{ifi: ifi, bufMTU: max(ifi.MTU, minBufMTU)}
	p.mtu.Store(int32(ifi.MTU))
	for i := 0; i < queues; i++ {
		// The queues wait on Go's poller. Waiting in the kernel instead
		// (rawsock.Config.BlockingRead, in git at b329b7c) took about half
		// the target's CPU per GiB with the Linux aoe driver as the
		// client, but with it TestLiveMigration failed in 4 of 6 runs,
		// its guest's memory corrupted after migrations; a wait the
		// scheduler sees saved nothing (docs/benchmarks.md).
		cfg := rawsock.Config{Buffer: 8 << 20}
		if queues > 1 {
			cfg.FanoutGroup = group
		}
		c, err := rawsock.Listen(ifi, wire.EtherType, cfg)
		if err != nil {
			p.Close()
			return nil, err
		}
		p.conns = append(p.conns, c)
	}
	return p, nil
}

// Interface is the port's interface.
func (p *Port) Interface() *net.Interface { return p.ifi }

// Close closes the port's sockets.
func (p *Port) Close() error {
	for _, c := range p.conns {
		c.Close()
	}
	return nil
}

// earlyFlush is after how many of n frames just received the queue sends
// the replies it has so far, before it answers the rest; 0 for never.
//
// A receive that found fewer frames than a batch holds drained the socket:
// the client has nothing more on the way and waits for these replies.
// Answering the whole batch with one sendmmsg then leaves the client idle
// while the queue reads the disk, and the queue idle while the client
// handles the replies and sends the next requests. Sending the first
// quarter as soon as it is ready lets the two overlap, for one system call
// more per batch. With our batching client at window 16, where every
// batch drained the socket, that was 1.47-1.90x the throughput at
// 0.72-0.88x the target's CPU per GiB for reads and sequential writes,
// random writes within the spread, in an interleaved A/B of 3 rounds
// (docs/benchmarks.md). A full batch (more frames still queued) and a
// batch under 4 frames, what the Linux aoe driver mostly sends, are
// answered in one call.
func earlyFlush(n int) int {
	if n >= batchSize || n < 4 {
		return 0
	}
	return (n + 3) / 4
}

// txq is a Replier that collects replies into a batch and sends them with
// one sendmmsg.
type txq struct {
	c *rawsock.Conn
	b *rawsock.Batch
	n int
	h *Handler
	// err is the first send error; the queue stops on it.
	err error
}

func (q *txq) Buf() []byte {
	if q.n == len(q.b.Bufs) {
		q.flush()
	}
	return q.b.Bufs[q.n]
}

func (q *txq) Commit(n int) {
	q.b.Lens[q.n] = n
	q.n++
}

// CommitRead reads a read reply's data into its frame with pread: the
// data, or an ATA error if pread fails or comes short (a file truncated
// behind the target's back). Sending the data from a mapping of the volume
// instead (a second iovec in the sendmmsg) cost 1.2-2.2x the target's CPU
// per GiB in every one of 24 interleaved A/B pairs (3 rounds, seqread and
// randread, windows 16 and 64, both clients; 2026-11-30): the kernel
// faults the mapping's pages in during the send. Copying from the mapping
// in user space cost 2.0x pread's for sequential reads from the Linux aoe
// driver (a fault per page touched for the first time; session 13).
func (q *txq) CommitRead(n int, v *volume, off int64, size int) {
	buf := q.b.Bufs[q.n]
	if err := v.readAt(buf[n:n+size], off, q.h.raw); err != nil {
		wire.SetATAStatus(buf, wire.ErrABRT, wire.StatusDRDY|wire.StatusERR)
		q.h.c.ataErr.Add(1)
		q.h.t.log.Warn("read failed", "shelf", v.Shelf, "slot", v.Slot, "offset", off, "err", err)
		q.b.Lens[q.n] = n
	} else {
		q.b.Lens[q.n] = n + size
	}
	q.n++
}

func (q *txq) flush() {
	if q.n > 0 {
		if err := q.c.WriteBatch(q.b, q.n); err != nil && q.err == nil {
			q.err = err
		}
	}
	q.n = 0
}

// Serve answers AoE on p until ctx ends, one goroutine per queue. It
// announces every volume on start.
func (t *Target) Serve(ctx context.Context, p *Port) error {
	t.mu.Lock()
	t.ports = append(t.ports, p)
	vols := t.tab.Load().list
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		for i, q := range t.ports {
			if q == p {
				t.ports = append(t.ports[:i], t.ports[i+1:]...)
				break
			}
		}
		t.mu.Unlock()
	}()
	for _, v := range vols {
		p.announce(t, v)
	}
	t.log.Info("serving AoE", "iface", p.ifi.Name, "mtu", p.mtu.Load(), "queues", len(p.conns),
		"max_sectors", min(wire.MaxSectors(int(p.mtu.Load())), wire.MaxSectors(p.bufMTU)))

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		<-ctx.Done()
		p.Close()
		return nil
	})
	g.Go(func() error {
		p.followMTU(ctx, t)
		return nil
	})
	size := p.bufMTU + wire.EthLen
	// Raw volume I/O while a P stays free beside every queue (Handler.raw).
	queues := t.nqueues.Add(int32(len(p.conns)))
	defer t.nqueues.Add(-int32(len(p.conns)))
	raw := int(queues) < runtime.GOMAXPROCS(0)
	for _, c := range p.conns {
		h := t.newHandler(p.ifi.HardwareAddr, &p.mtu, p.bufMTU)
		h.send = c.WriteFrame
		h.raw = raw
		g.Go(func() error {
			rx := rawsock.NewBatch(batchSize, size)
			tx := &txq{c: c, b: rawsock.NewBatch(batchSize, size), h: h}
			down := false
			for {
				n, err := c.ReadBatch(rx)
				if err != nil {
					if ctx.Err() != nil || rawsock.IsClosed(err) {
						return nil
					}
					if errors.Is(err, syscall.ENETDOWN) {
						// The link is down (a cable, a switch port): wait
						// for it, never exit; initiators resend meanwhile.
						if !down {
							t.log.Warn("link down; serving again when it returns", "iface", p.ifi.Name)
							down = true
						}
						sleep(ctx, 100*time.Millisecond)
						continue
					}
					return fmt.Errorf("storagenode: %s: %w", p.ifi.Name, err)
				}
				if down {
					down = false
					t.log.Info("link up again", "iface", p.ifi.Name)
					for _, v := range t.tab.Load().list {
						p.announce(t, v)
					}
				}
				t.inflight.RLock()
				early := earlyFlush(n)
				for i := 0; i < n; i++ {
					h.Handle(rx.Bufs[i][:rx.Lens[i]], tx)
					if i+1 == early {
						tx.flush()
					}
				}
				tx.flush()
				t.inflight.RUnlock()
				if tx.err != nil {
					if ctx.Err() != nil || rawsock.IsClosed(tx.err) {
						return nil
					}
					if errors.Is(tx.err, syscall.ENETDOWN) {
						tx.err = nil // the replies are lost; initiators resend
						continue
					}
					return fmt.Errorf("storagenode: %s: %w", p.ifi.Name, tx.err)
				}
			}
		})
	}
	return g.Wait()
}

// oneShot is a Replier that sends each reply straight away.
type oneShot struct {
	c   *rawsock.Conn
	buf []byte
}

func (o *oneShot) Buf() []byte { return o.buf }
func (o *oneShot) Commit(n int) {
	_ = o.c.WriteFrame(o.buf[:n])
}

func (o *oneShot) CommitRead(n int, v *volume, off int64, size int) {
	panic("storagenode: oneShot carries announcements, not reads")
}

// announce broadcasts v's Query Config reply on p.
func (p *Port) announce(t *Target, v *volume) { p.announceAs(t, v, [6]byte(p.ifi.HardwareAddr)) }

// announceAs broadcasts v's Query Config reply from src: the port's own
// address, or one it serves for an absent pair peer (which also teaches
// the switch where that address is now).
func (p *Port) announceAs(t *Target, v *volume, src [6]byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := &Handler{t: t, mac: [6]byte(p.ifi.HardwareAddr), src: src, mtu: &p.mtu, bufSectors: wire.MaxSectors(p.bufMTU), c: new(counters)}
	h.announcement(v, &oneShot{c: p.conns[0], buf: make([]byte, p.bufMTU+wire.EthLen)})
}

// followMTU rereads the interface's MTU every mtuPoll until ctx ends; on a
// change it stores it and announces every volume again.
func (p *Port) followMTU(ctx context.Context, t *Target) {
	tick := time.NewTicker(mtuPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		mtu, err := p.conns[0].MTU()
		if err != nil || int32(mtu) == p.mtu.Load() {
			continue
		}
		old := p.mtu.Swap(int32(mtu))
		t.log.Info("MTU changed; announcing the new frame size", "iface", p.ifi.Name, "from", old, "to", mtu,
			"max_sectors", min(wire.MaxSectors(mtu), wire.MaxSectors(p.bufMTU)))
		for _, v := range t.tab.Load().list {
			p.announce(t, v)
		}
	}
}
