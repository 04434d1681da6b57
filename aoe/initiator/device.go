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

	"github.com/fabric-project/fabric/aoe/wire"
	"github.com/mdlayher/aoe"
)

// Device is one volume (shelf.slot) reached through one or more target MACs.
type Device struct {
	in         *Initiator
	Shelf      uint16
	Slot       uint8
	Paths      []net.HardwareAddr
	MaxSectors int
	Identity   wire.Identity

	sem   chan int // free request slots
	mu    sync.Mutex
	reqs  []*request
	gen   uint32
	path  int // next path, round robin
	force int // >= 0: every frame goes to this path (per-path IDENTIFY)
	paths []pathState
	fdsc  [][]byte
	// PathChanges counts paths going down or coming back.
	PathChanges atomic.Int64
}

// pathState is what the device knows of one target MAC. A path that
// leaves DownAfter frames in a row unanswered is down: new frames avoid
// it and its outstanding ones are resent on the others. A down path is
// probed with Query Config every ProbeEvery and used again once it
// answers. DownAfter is one: a guest's I/O is mostly one request at a
// time (an fsync is a write, a journal write, a flush), and with three
// a dead path cost it three resend timeouts in a row before it was
// dropped (the lab measured 220-260 ms through a storage node's link
// loss with three, 110 ms with one).
type pathState struct {
	mac   net.HardwareAddr
	down  bool
	fails int // frames timed out since its last reply
	probe time.Time
	// heard is when the path last answered. A frame that times out on a
	// path that answered other frames since it was sent is slow, not
	// lost: the target queues it (an I/O cap, a busy disk), and dropping
	// the path would send all the traffic to the other node, which grants
	// a pair's volume half its cap (CI: a 297 IOPS cap gave 159).
	heard time.Time
}

// Path health thresholds.
const (
	DownAfter  = 1
	ProbeEvery = time.Second
)

type request struct {
	idx      int
	path     int    // where the last send went
	tag      uint32 // 0: free
	frame    []byte
	flen     int
	dst      []byte // read destination
	deadline time.Time
	sent     time.Time // the last send
	tries    int
	done     func(error)
}

const idxBits = 10 // window up to 1024

// Open finds shelf.slot (waiting up to wait for every path to answer),
// identifies it and returns a device ready for I/O.
func (in *Initiator) Open(ctx context.Context, shelf uint16, slot uint8, wait time.Duration) (*Device, error) {
	ts, err := in.Discover(ctx, shelf, slot, wait)
	if err != nil {
		return nil, err
	}
	if len(ts) == 0 {
		return nil, fmt.Errorf("aoe: e%d.%d: no target answered on %s", shelf, slot, in.c.Interface().Name)
	}
	return in.OpenTargets(ctx, ts)
}

// OpenTargets opens a device from discovered targets (all for one
// shelf.slot).
func (in *Initiator) OpenTargets(ctx context.Context, ts []Target) (*Device, error) {
	d := &Device{in: in, Shelf: ts[0].Shelf, Slot: ts[0].Slot, MaxSectors: 255, force: -1}
	for _, t := range ts {
		if t.Shelf != d.Shelf || t.Slot != d.Slot {
			return nil, fmt.Errorf("aoe: OpenTargets: %s and %s are different volumes", ts[0].Addr(), t.Addr())
		}
		d.Paths = append(d.Paths, t.MAC)
		d.paths = append(d.paths, pathState{mac: t.MAC})
		d.MaxSectors = min(d.MaxSectors, t.MaxSectors)
	}
	// The link's MTU now: it may have changed since New.
	mtu := in.mtu
	if m, err := in.c.MTU(); err == nil {
		mtu = m
	}
	d.MaxSectors = min(d.MaxSectors, wire.MaxSectors(min(mtu, in.bufMTU())))
	w := in.cfg.Window
	d.sem = make(chan int, w)
	size := max(min(mtu, in.bufMTU())+wire.EthLen, 1514)
	for i := 0; i < w; i++ {
		d.reqs = append(d.reqs, &request{idx: i, frame: make([]byte, size)})
		d.sem <- i
	}
	in.mu.Lock()
	if in.devices[key(d.Shelf, d.Slot)] != nil {
		in.mu.Unlock()
		return nil, fmt.Errorf("aoe: e%d.%d is already open on this initiator", d.Shelf, d.Slot)
	}
	in.devices[key(d.Shelf, d.Slot)] = d
	in.mu.Unlock()
	// Every path must be the same disk: two targets answering one
	// address with different IDENTIFY data are a misconfiguration, and
	// spreading I/O over them would mix two disks.
	var ids []wire.Identity
	for i := range d.paths {
		d.mu.Lock()
		d.force = i
		d.mu.Unlock()
		page := make([]byte, 512)
		err := d.do(ctx, wire.CmdIdentify, page, 0, 1)
		if err == nil {
			var id wire.Identity
			if id, err = wire.ParseIdentify(page); err == nil {
				ids = append(ids, id)
				continue
			}
		}
		d.Close()
		return nil, fmt.Errorf("aoe: identify e%d.%d through %s: %w", d.Shelf, d.Slot, d.paths[i].mac, err)
	}
	d.mu.Lock()
	d.force = -1
	d.mu.Unlock()
	for i, id := range ids[1:] {
		if id.Sectors != ids[0].Sectors || id.Serial != ids[0].Serial {
			d.Close()
			return nil, fmt.Errorf("aoe: e%d.%d: targets disagree, not two paths to one volume: %s says %d sectors, serial %q; %s says %d sectors, serial %q",
				d.Shelf, d.Slot, d.paths[0].mac, ids[0].Sectors, ids[0].Serial, d.paths[i+1].mac, id.Sectors, id.Serial)
		}
	}
	d.Identity = ids[0]
	return d, nil
}

// pickLocked chooses the path for a frame: round robin over the paths
// that are up, avoiding exclude (the one a resend timed out on) when
// another is up; with none up, round robin over all. The caller holds
// d.mu.
func (d *Device) pickLocked(exclude int) int {
	if d.force >= 0 {
		return d.force
	}
	n := len(d.paths)
	for pass := 0; pass < 2; pass++ {
		for i := 0; i < n; i++ {
			p := (d.path + i) % n
			if (pass == 1 || !d.paths[p].down) && (p != exclude || n == 1) {
				d.path = p + 1
				return p
			}
		}
	}
	return exclude
}

// alive records an answer from mac; the caller holds d.mu.
func (d *Device) aliveLocked(mac []byte) {
	for i := range d.paths {
		if string(d.paths[i].mac) == string(mac) {
			d.paths[i].fails = 0
			d.paths[i].heard = time.Now()
			if d.paths[i].down {
				d.paths[i].down = false
				d.PathChanges.Add(1)
			}
			return
		}
	}
}

// PathsUp lists the paths in use now.
func (d *Device) PathsUp() []net.HardwareAddr {
	d.mu.Lock()
	defer d.mu.Unlock()
	var up []net.HardwareAddr
	for _, p := range d.paths {
		if !p.down {
			up = append(up, p.mac)
		}
	}
	return up
}

// Close forgets the device.
func (d *Device) Close() error {
	d.in.mu.Lock()
	if d.in.devices[key(d.Shelf, d.Slot)] == d {
		delete(d.in.devices, key(d.Shelf, d.Slot))
	}
	d.in.mu.Unlock()
	d.failAll(net.ErrClosed)
	return nil
}

// Size is the capacity in bytes.
func (d *Device) Size() int64 { return int64(d.Identity.Sectors) * wire.SectorSize }

// ReadAt reads len(p) bytes at off; both must be multiples of 512.
func (d *Device) ReadAt(p []byte, off int64) (int, error) {
	if err := d.check(p, off); err != nil {
		return 0, err
	}
	if err := d.do(context.Background(), wire.CmdReadSectorsExt, p, uint64(off/wire.SectorSize), len(p)/wire.SectorSize); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteAt writes len(p) bytes at off; both must be multiples of 512.
func (d *Device) WriteAt(p []byte, off int64) (int, error) {
	if err := d.check(p, off); err != nil {
		return 0, err
	}
	if err := d.do(context.Background(), wire.CmdWriteSectorsExt, p, uint64(off/wire.SectorSize), len(p)/wire.SectorSize); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush asks the target to make written data stable: FLUSH CACHE (0xE7),
// which Linux sends and vblade knows (it refuses the EXT form).
func (d *Device) Flush() error {
	return d.do(context.Background(), wire.CmdFlushCache, nil, 0, 0)
}

func (d *Device) check(p []byte, off int64) error {
	if off%wire.SectorSize != 0 || len(p)%wire.SectorSize != 0 {
		return fmt.Errorf("aoe: I/O of %d bytes at %d is not sector aligned", len(p), off)
	}
	if off < 0 || off+int64(len(p)) > d.Size() {
		return fmt.Errorf("aoe: I/O of %d bytes at %d is beyond the end of e%d.%d (%d bytes)", len(p), off, d.Shelf, d.Slot, d.Size())
	}
	return nil
}

// do runs one ATA command over as many frames as it takes, keeping up to
// the window outstanding.
func (d *Device) do(ctx context.Context, cmd uint8, p []byte, lba uint64, sectors int) error {
	per := d.MaxSectors
	nframes := 1
	if sectors > 0 && cmd != wire.CmdIdentify {
		nframes = (sectors + per - 1) / per
	}
	results := make(chan error, nframes)
	done := func(err error) { results <- err }
	var batch [][]byte
	issued := 0
	for issued < nframes {
		var idx int
		select {
		case idx = <-d.sem:
		case <-ctx.Done():
			return ctx.Err()
		}
		batch = batch[:0]
		for {
			r := d.reqs[idx]
			s := issued * per
			n := min(per, sectors-s)
			if cmd == wire.CmdIdentify {
				n = 1
			}
			if cmd == wire.CmdFlushCache {
				n = 0
			}
			d.fill(r, cmd, p, s, n, lba+uint64(s), done)
			batch = append(batch, r.frame[:r.flen])
			issued++
			if issued == nframes {
				break
			}
			select {
			case idx = <-d.sem:
				continue
			default:
			}
			break
		}
		if err := d.in.sendFrames(batch...); err != nil {
			return err
		}
	}
	var first error
	for i := 0; i < nframes; i++ {
		if err := <-results; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// ErrWindowFull is returned by Submit when every request slot of the
// window is in flight.
var ErrWindowFull = errors.New("aoe: window full")

// Submit starts one frame's worth of I/O without waiting: it reads len(p)
// bytes at off into p, or writes p at off when write is set. off and len(p)
// must be sector aligned and len(p) at most MaxSectors sectors. done runs
// once, when the reply arrives or the request fails; it runs on the
// initiator's receive (or retransmit) goroutine, must not block, and may
// call Submit again: frames submitted while a batch of replies is being
// handled leave together in one sendmmsg after it. p must not be touched
// until done runs. Submit returns ErrWindowFull when the window has no free
// slot.
func (d *Device) Submit(write bool, p []byte, off int64, done func(error)) error {
	if err := d.check(p, off); err != nil {
		return err
	}
	n := len(p) / wire.SectorSize
	if n == 0 || n > d.MaxSectors {
		return fmt.Errorf("aoe: Submit of %d sectors: want 1 to %d", n, d.MaxSectors)
	}
	var idx int
	select {
	case idx = <-d.sem:
	default:
		return ErrWindowFull
	}
	cmd := uint8(wire.CmdReadSectorsExt)
	if write {
		cmd = wire.CmdWriteSectorsExt
	}
	r := d.reqs[idx]
	d.fill(r, cmd, p, 0, n, uint64(off/wire.SectorSize), done)
	if err := d.in.sendFrames(r.frame[:r.flen]); err != nil {
		d.mu.Lock()
		r.tag = 0
		d.mu.Unlock()
		d.sem <- idx
		return err
	}
	return nil
}

// fill builds the request frame for sectors [s, s+n) of p in slot r.
func (d *Device) fill(r *request, cmd uint8, p []byte, s, n int, lba uint64, done func(error)) {
	d.mu.Lock()
	d.gen++
	r.tag = (d.gen<<idxBits | uint32(r.idx)) & 0x7fffffff
	if r.tag == 0 {
		r.tag = 1 << idxBits
	}
	r.path = d.pickLocked(-1)
	path := d.paths[r.path].mac
	r.tries = 0
	r.sent = time.Now()
	r.deadline = r.sent.Add(d.in.cfg.Timeout)
	r.done = done
	r.dst = nil
	if cmd == wire.CmdReadSectorsExt || cmd == wire.CmdIdentify {
		r.dst = p[s*wire.SectorSize : (s+n)*wire.SectorSize]
	}
	// The frame is built under the lock too: the retransmit timer may
	// resend r as soon as its tag is set.
	defer d.mu.Unlock()

	f := r.frame
	wire.PutHeader(f, path, d.in.mac, 0, 0, d.Shelf, d.Slot, aoe.CommandIssueATACommand, r.tag)
	aflags := uint8(wire.AFlagExtended)
	r.flen = wire.ATALen
	switch cmd {
	case wire.CmdWriteSectorsExt:
		aflags |= wire.AFlagWrite
		r.flen += copy(f[wire.ATALen:], p[s*wire.SectorSize:(s+n)*wire.SectorSize])
	}
	wire.PutATA(f, aflags, 0, uint8(n), cmd, lba)
	if r.flen < wire.MinFrame {
		clear(f[r.flen:wire.MinFrame])
		r.flen = wire.MinFrame
	}
}

// complete handles an ATA reply.
func (d *Device) complete(f wire.Frame) {
	tag := f.Tag()
	idx := int(tag & (1<<idxBits - 1))
	d.mu.Lock()
	if idx >= len(d.reqs) || d.reqs[idx].tag != tag || tag == 0 {
		d.mu.Unlock()
		return // late reply to a retransmitted or failed request
	}
	r := d.reqs[idx]
	r.tag = 0
	dst, done := r.dst, r.done
	d.aliveLocked(f.Src())
	d.mu.Unlock()

	var err error
	switch {
	case f.IsError():
		err = fmt.Errorf("aoe: e%d.%d: target %s: %w", d.Shelf, d.Slot, f.Src(), f.Error())
	case f.CmdStatus()&wire.StatusERR != 0:
		err = fmt.Errorf("aoe: e%d.%d: ATA error %#02x (status %#02x) from %s", d.Shelf, d.Slot, f.ErrFeature(), f.CmdStatus(), f.Src())
	case dst != nil:
		if len(f.Data()) < len(dst) {
			err = fmt.Errorf("aoe: e%d.%d: short read reply from %s (%d bytes, want %d)", d.Shelf, d.Slot, f.Src(), len(f.Data()), len(dst))
		} else {
			copy(dst, f.Data())
		}
	}
	d.sem <- idx
	done(err)
}

// expire retransmits requests past their deadline, each time through the
// next path, and fails those out of retries.
func (d *Device) expire(now time.Time) {
	d.mu.Lock()
	var resend [][]byte
	var failed []*request
	for _, r := range d.reqs {
		if r.tag == 0 || now.Before(r.deadline) {
			continue
		}
		r.tries++
		if r.tries >= d.in.cfg.Retries {
			failed = append(failed, r)
			continue
		}
		// The path it timed out on may be down; the copy goes to another
		// one (the first send may still be reading r.frame).
		if ps := &d.paths[r.path]; d.force < 0 && ps.heard.Before(r.sent) {
			ps.fails++
			if !ps.down && ps.fails >= DownAfter && len(d.paths) > 1 {
				ps.down = true
				ps.probe = now.Add(ProbeEvery)
				d.PathChanges.Add(1)
			}
		}
		r.path = d.pickLocked(r.path)
		f := slices.Clone(r.frame[:r.flen])
		copy(f[0:6], d.paths[r.path].mac)
		r.sent = now
		r.deadline = now.Add(min(d.in.cfg.Timeout<<min(r.tries, 16), d.in.cfg.MaxTimeout))
		resend = append(resend, f)
	}
	for _, r := range failed {
		r.tag = 0
	}
	var probe []net.HardwareAddr
	for i := range d.paths {
		if ps := &d.paths[i]; ps.down && !now.Before(ps.probe) {
			ps.probe = now.Add(ProbeEvery)
			probe = append(probe, ps.mac)
		}
	}
	d.mu.Unlock()
	for _, mac := range probe {
		// The answer, if any, reaches Initiator.dispatch, which marks
		// the path alive.
		hdr := aoe.Header{Version: aoe.Version, Major: d.Shelf, Minor: d.Slot, Command: aoe.CommandQueryConfigInformation,
			Arg: &aoe.ConfigArg{Command: aoe.ConfigCommandRead}}
		tag := d.in.nextTag()
		hdr.Tag = [4]byte{byte(tag >> 24), byte(tag >> 16), byte(tag >> 8), byte(tag)}
		_ = d.in.send(mac, &hdr)
	}
	for _, r := range failed {
		d.sem <- r.idx
		r.done(fmt.Errorf("aoe: e%d.%d: %w after %d tries", d.Shelf, d.Slot, ErrTimeout, d.in.cfg.Retries))
	}
	for _, f := range resend {
		_ = d.in.c.WriteFrame(f)
	}
}

func (d *Device) failAll(err error) {
	d.mu.Lock()
	var failed []*request
	for _, r := range d.reqs {
		if r.tag != 0 {
			r.tag = 0
			failed = append(failed, r)
		}
	}
	d.mu.Unlock()
	for _, r := range failed {
		d.sem <- r.idx
		r.done(err)
	}
}
