// Package initiator is a userspace ATA over Ethernet initiator (AoEr11):
// it discovers targets, identifies a volume, and reads, writes and flushes
// it with a window of outstanding requests, retransmitting on timeout and
// spreading requests over every target MAC that answers for the volume
// (several paths to one shelf.slot, as two storage nodes in a pair give).
package initiator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fabric-project/fabric/aoe/rawsock"
	"github.com/fabric-project/fabric/aoe/wire"
	"github.com/mdlayher/aoe"
)

// Target is one answer to Query Config: a volume seen through one MAC.
type Target struct {
	Shelf      uint16
	Slot       uint8
	MAC        net.HardwareAddr
	BufCount   uint16
	MaxSectors int
	Firmware   uint16
	Config     string
}

// Addr is e<shelf>.<slot>.
func (t Target) Addr() string { return wire.Addr(t.Shelf, t.Slot) }

// Config tunes an initiator.
type Config struct {
	Window  int           // outstanding frames per device; default 16, max 1024
	Timeout time.Duration // first retransmit timeout; default 200ms, doubles per retry
	Retries int           // attempts per frame before failing; default 8
	// MaxTimeout caps the doubling; default 16 times Timeout. The Linux
	// driver resends about every 100 ms without backing off, which is
	// what lets a storage pair's MAC takeover end a stall at once.
	MaxTimeout time.Duration
	// OneFrame makes every system call carry one frame: each request
	// leaves in a send of its own, each reply comes in a receive of its
	// own. That is how most initiators talk at a low queue depth (the
	// Linux driver sends a frame per call); a benchmark uses it to see a
	// target's cost per frame without the batching of this initiator
	// (recvmmsg of up to 64 replies, one sendmmsg for the requests they
	// free).
	OneFrame bool
}

// Initiator owns a raw socket on one interface.
type Initiator struct {
	c   *rawsock.Conn
	mac net.HardwareAddr
	mtu int
	cfg Config

	mu      sync.Mutex
	devices map[uint32]*Device
	control []chan wire.Frame // listeners for non-ATA replies
	tagSeq  uint32
	closed  chan struct{}

	// tx serialises ATA sends. While the receive goroutine handles a batch
	// of replies (deferred), frames queue in pending and leave in one
	// sendmmsg after the batch.
	tx struct {
		sync.Mutex
		deferred bool
		pending  [][]byte
		sndr     rawsock.Sender
	}
	wg sync.WaitGroup
	// lastReply is when any target last answered (unix nanoseconds).
	lastReply atomic.Int64
}

// LastReply is when any AoE target last answered this initiator.
func (in *Initiator) LastReply() time.Time {
	if n := in.lastReply.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Probe broadcasts a Query Config for every volume: the answers keep
// LastReply current while no I/O runs.
func (in *Initiator) Probe() error {
	tag := in.nextTag()
	hdr := aoe.Header{Version: aoe.Version, Major: wire.BroadcastShelf, Minor: wire.BroadcastSlot, Command: aoe.CommandQueryConfigInformation,
		Arg: &aoe.ConfigArg{Command: aoe.ConfigCommandRead}, Tag: [4]byte{byte(tag >> 24), byte(tag >> 16), byte(tag >> 8), byte(tag)}}
	return in.send(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, &hdr)
}

// ErrTimeout is returned when a frame got no answer after every retry.
var ErrTimeout = errors.New("aoe: no answer from target")

// New opens an initiator on the named interface. Call it inside the
// interface's network namespace.
func New(ifname string, cfg Config) (*Initiator, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("aoe: interface %q: %w", ifname, err)
	}
	c, err := rawsock.Listen(ifi, wire.EtherType, rawsock.Config{Buffer: 4 << 20})
	if err != nil {
		return nil, err
	}
	if cfg.Window <= 0 {
		cfg.Window = 16
	}
	if cfg.Window > 1024 {
		cfg.Window = 1024
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 200 * time.Millisecond
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 8
	}
	if cfg.MaxTimeout < cfg.Timeout {
		cfg.MaxTimeout = cfg.Timeout << 4
	}
	in := &Initiator{c: c, mac: ifi.HardwareAddr, mtu: ifi.MTU, cfg: cfg,
		devices: map[uint32]*Device{}, closed: make(chan struct{})}
	in.wg.Add(2)
	go in.receive()
	go in.retransmit()
	return in, nil
}

// MAC is the address the initiator sends from: what a target's MAC allow
// list must name.
func (in *Initiator) MAC() net.HardwareAddr { return in.mac }

// Close stops the initiator; outstanding requests fail.
func (in *Initiator) Close() error {
	select {
	case <-in.closed:
		return nil
	default:
	}
	close(in.closed)
	err := in.c.Close()
	in.wg.Wait()
	return err
}

func key(shelf uint16, slot uint8) uint32 { return uint32(shelf)<<8 | uint32(slot) }

// bufMTU is the MTU the receive buffers hold: the link's at New, and at
// least jumbo frames, so that a device opened after the link was raised
// to 9000 gets whole replies.
func (in *Initiator) bufMTU() int { return max(in.mtu, 9000) }

// receive dispatches replies: ATA replies to the device that sent the
// request (matched by tag), everything else to control listeners.
func (in *Initiator) receive() {
	defer in.wg.Done()
	b := rawsock.NewBatch(64, in.bufMTU()+wire.EthLen)
	if in.cfg.OneFrame {
		b = rawsock.NewBatch(1, in.bufMTU()+wire.EthLen)
	}
	for {
		n, err := in.c.ReadBatch(b)
		if err != nil {
			in.failAll(err)
			return
		}
		if in.cfg.OneFrame {
			in.dispatch(b, n) // requests it frees leave at once, one per send
			continue
		}
		in.tx.Lock()
		in.tx.deferred = true
		in.tx.Unlock()
		in.dispatch(b, n)
		in.tx.Lock()
		in.tx.deferred = false
		if len(in.tx.pending) > 0 {
			// A lost frame is like one lost on the wire: retransmitted.
			_ = in.c.SendFrames(&in.tx.sndr, in.tx.pending)
			clear(in.tx.pending)
			in.tx.pending = in.tx.pending[:0]
		}
		in.tx.Unlock()
	}
}

// sendFrames sends ATA request frames, or queues them while a batch of
// replies is being dispatched.
func (in *Initiator) sendFrames(fs ...[]byte) error {
	if in.cfg.OneFrame {
		for _, f := range fs {
			if err := in.c.WriteFrame(f); err != nil {
				return err
			}
		}
		return nil
	}
	in.tx.Lock()
	defer in.tx.Unlock()
	if in.tx.deferred {
		in.tx.pending = append(in.tx.pending, fs...)
		return nil
	}
	return in.c.SendFrames(&in.tx.sndr, fs)
}

// dispatch hands n received frames of b to their devices and listeners.
func (in *Initiator) dispatch(b *rawsock.Batch, n int) {
	for i := 0; i < n; i++ {
		f := wire.Frame(b.Bufs[i][:b.Lens[i]])
		if f.Check() != nil || !f.Response() {
			continue
		}
		in.lastReply.Store(time.Now().UnixNano())
		if f.Command() == aoe.CommandIssueATACommand {
			in.mu.Lock()
			d := in.devices[key(f.Shelf(), f.Slot())]
			in.mu.Unlock()
			if d != nil {
				d.complete(f)
			}
			continue
		}
		cp := wire.Frame(slices.Clone([]byte(f)))
		in.mu.Lock()
		if d := in.devices[key(f.Shelf(), f.Slot())]; d != nil && f.Command() == aoe.CommandQueryConfigInformation && !f.IsError() {
			// A down path's probe answered (or any path announced).
			d.mu.Lock()
			d.aliveLocked(f.Src())
			d.mu.Unlock()
		}
		for _, ch := range in.control {
			select {
			case ch <- cp:
			default:
			}
		}
		in.mu.Unlock()
	}
}

func (in *Initiator) failAll(err error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, d := range in.devices {
		d.failAll(err)
	}
}

func (in *Initiator) retransmit() {
	defer in.wg.Done()
	t := time.NewTicker(in.cfg.Timeout / 4)
	defer t.Stop()
	for {
		select {
		case <-in.closed:
			return
		case now := <-t.C:
			in.mu.Lock()
			devs := make([]*Device, 0, len(in.devices))
			for _, d := range in.devices {
				devs = append(devs, d)
			}
			in.mu.Unlock()
			for _, d := range devs {
				d.expire(now)
			}
		}
	}
}

func (in *Initiator) nextTag() uint32 {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.tagSeq++
	return in.tagSeq | 0x80000000 // control tags; ATA tags have the top bit clear
}

// listen subscribes to control replies until stop is called.
func (in *Initiator) listen(n int) (ch chan wire.Frame, stop func()) {
	ch = make(chan wire.Frame, n)
	in.mu.Lock()
	in.control = append(in.control, ch)
	in.mu.Unlock()
	return ch, func() {
		in.mu.Lock()
		in.control = slices.DeleteFunc(in.control, func(c chan wire.Frame) bool { return c == ch })
		in.mu.Unlock()
	}
}

// Discover broadcasts Query Config for shelf.slot (wildcards:
// wire.BroadcastShelf, wire.BroadcastSlot) and collects answers for wait.
func (in *Initiator) Discover(ctx context.Context, shelf uint16, slot uint8, wait time.Duration) ([]Target, error) {
	ch, stop := in.listen(256)
	defer stop()
	tag := in.nextTag()
	hdr := aoe.Header{Version: aoe.Version, Major: shelf, Minor: slot, Command: aoe.CommandQueryConfigInformation,
		Arg: &aoe.ConfigArg{Command: aoe.ConfigCommandRead}}
	tb := [4]byte{byte(tag >> 24), byte(tag >> 16), byte(tag >> 8), byte(tag)}
	hdr.Tag = tb
	if err := in.send(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, &hdr); err != nil {
		return nil, err
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	var out []Target
	seen := map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			return out, ctx.Err()
		case <-timer.C:
			slices.SortFunc(out, func(a, b Target) int {
				if d := int(key(a.Shelf, a.Slot)) - int(key(b.Shelf, b.Slot)); d != 0 {
					return d
				}
				return slices.Compare(a.MAC, b.MAC)
			})
			return out, nil
		case f := <-ch:
			if f.Command() != aoe.CommandQueryConfigInformation || f.IsError() {
				continue
			}
			var h aoe.Header
			if h.UnmarshalBinary(f[wire.EthLen:]) != nil {
				continue
			}
			a := h.Arg.(*aoe.ConfigArg)
			if (shelf != wire.BroadcastShelf && h.Major != shelf) || (slot != wire.BroadcastSlot && h.Minor != slot) {
				continue
			}
			t := Target{Shelf: h.Major, Slot: h.Minor, MAC: slices.Clone(f.Src()), BufCount: a.BufferCount,
				MaxSectors: int(a.SectorCount), Firmware: a.FirmwareVersion, Config: string(a.String)}
			id := t.Addr() + t.MAC.String()
			if !seen[id] {
				seen[id] = true
				out = append(out, t)
			}
		}
	}
}

// Control sends one control command (Query Config, MAC Mask, Reserve) to
// dst and returns the first reply with the same tag.
func (in *Initiator) Control(ctx context.Context, dst net.HardwareAddr, hdr *aoe.Header) (*aoe.Header, error) {
	ch, stop := in.listen(16)
	defer stop()
	tag := in.nextTag()
	hdr.Version = aoe.Version
	hdr.Tag = [4]byte{byte(tag >> 24), byte(tag >> 16), byte(tag >> 8), byte(tag)}
	for try := 0; try < in.cfg.Retries; try++ {
		if err := in.send(dst, hdr); err != nil {
			return nil, err
		}
		timer := time.NewTimer(in.cfg.Timeout << min(try, 4))
	wait:
		for {
			select {
			case <-ctx.Done():
				timer.Stop()
				return nil, ctx.Err()
			case <-timer.C:
				break wait
			case f := <-ch:
				if f.Tag() != tag {
					continue
				}
				timer.Stop()
				if f.IsError() {
					return nil, fmt.Errorf("aoe: target %s: %w", f.Src(), f.Error())
				}
				var h aoe.Header
				if err := h.UnmarshalBinary(f.Control()); err != nil {
					return nil, fmt.Errorf("aoe: bad reply from %s: %w", f.Src(), err)
				}
				return &h, nil
			}
		}
	}
	return nil, ErrTimeout
}

func (in *Initiator) send(dst net.HardwareAddr, hdr *aoe.Header) error {
	b, err := hdr.MarshalBinary()
	if err != nil {
		return err
	}
	f := make([]byte, max(wire.EthLen+len(b), wire.MinFrame))
	copy(f[0:6], dst)
	copy(f[6:12], in.mac)
	f[12], f[13] = 0x88, 0xa2
	copy(f[wire.EthLen:], b)
	return in.c.WriteFrame(f)
}
