// Package storagenode is the storage node: an ATA over Ethernet target
// (AoEr11, http://www.thebrantleycoilecompany.com/AoEr11.pdf) serving many
// volumes from one process, and the pool of volume files it serves from.
//
// The target answers Query Config (Section 3.2), MAC Mask List (3.3, read
// only over the wire), Reserve/Release (3.4) and the ATA commands of Section
// 3.1 a disk needs: IDENTIFY DEVICE, READ/WRITE SECTORS (28 and 48 bit),
// FLUSH CACHE (EXT) and CHECK POWER MODE. Data frames are handled in place
// (aoe/wire) with no allocation; control frames go through
// github.com/mdlayher/aoe.
//
// A read reply's data comes with pread into the frame, a write goes with
// pwrite; volumes opened sync write with O_DSYNC pwrite, stable before the
// reply. FLUSH CACHE is fdatasync. (Volumes were memory-mapped once; with
// the Linux aoe driver as the client, the page faults cost more than the
// system calls they saved: docs/benchmarks.md.)
package storagenode

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/fabric-project/fabric/aoe/wire"
	"github.com/mdlayher/aoe"
	"golang.org/x/sys/unix"
)

// FirmwareVersion is reported in Query Config replies and IDENTIFY.
const FirmwareVersion = 0x0001

// Export is one volume served at shelf.slot.
type Export struct {
	Shelf    uint16
	Slot     uint8
	Path     string // file or block device
	ReadOnly bool
	// Sync opens the volume with O_DSYNC: a write is acknowledged once it
	// is on stable storage. The Linux aoe driver never sends FLUSH CACHE,
	// so without Sync a storage node that loses power can lose writes its
	// initiators saw acknowledged (vblade -s does the same).
	Sync bool
	// MACs, when not empty, is the only set of initiators that see the
	// volume; frames from any other MAC are ignored.
	MACs []net.HardwareAddr
	// Name is used for the IDENTIFY serial number; defaults to the address.
	Name string
	// Limit caps the volume's IOPS and bandwidth (zero: none).
	Limit Limit
	// Replicated volumes belong to the target's storage pair: written in
	// the pair's order on both nodes, served only while this node is sure
	// to be current (docs/storage-pairs.md).
	Replicated bool
}

// Addr is the export's address, e1.0 style.
func (e Export) Addr() string { return wire.Addr(e.Shelf, e.Slot) }

// ConfigStore persists Query Config strings (AoEr11 3.2) across restarts.
type ConfigStore interface {
	LoadConfig(shelf uint16, slot uint8) []byte
	SaveConfig(shelf uint16, slot uint8, s []byte) error
}

// Stats are the target's counters. Read them with Target.Stats.
type Stats struct {
	RxFrames      uint64 `json:"rx_frames"`
	TxFrames      uint64 `json:"tx_frames"`
	Malformed     uint64 `json:"malformed"`     // short, wrong version, bad arguments
	Ignored       uint64 `json:"ignored"`       // responses, other shelves, masked MACs
	ATAErrors     uint64 `json:"ata_errors"`    // replies with ATA ERR set
	AoEErrors     uint64 `json:"aoe_errors"`    // replies with the AoE error flag
	ReadBytes     uint64 `json:"read_bytes"`    // data sent to initiators
	WrittenBytes  uint64 `json:"written_bytes"` // data written to volumes
	Flushes       uint64 `json:"flushes"`       // FLUSH CACHE reaching fdatasync
	MaskEditsDeny uint64 `json:"mask_edits_refused"`
}

// counters is one queue's Stats; each queue owns one, Target.Stats sums.
type counters struct {
	rx, tx, malformed, ignored, ataErr, aoeErr, rd, wr, flush, maskDeny atomic.Uint64
	_                                                                   [64]byte
}

// volume is an open export.
type volume struct {
	Export
	// f serves every read and write but the queues' raw ones; its
	// reference count makes Remove safe against a concurrent pread.
	f *os.File
	// fd is f's descriptor, for the queues' raw pread and pwrite (rawIO).
	// They use it only while holding Target.inflight, and Remove closes
	// f only after quiesce: the number is never another file's.
	fd      int
	sectors uint64
	ident   [512]byte
	allow   [][6]byte // MAC allow list; empty: everyone

	mu       sync.Mutex // config string and reservation changes
	config   []byte
	reserved atomic.Pointer[[][6]byte] // reservation list; nil or empty: none
	limit    atomic.Pointer[limiter]   // nil: no I/O limit
}

// close closes the volume; no reply may be reading from it any more.
func (v *volume) close() error {
	if lm := v.limit.Swap(nil); lm != nil {
		lm.close()
	}
	return v.f.Close()
}

// writeAt writes b at byte offset off with pwrite. Writes went through
// the volume's shared mapping before (except sequential ones of a page or
// more): cheap while a page stays dirty, but a write to a clean page takes
// a write fault, and the filesystem's page_mkwrite on top. With the Linux
// aoe driver as the client (scripts/bench-aoe-linux.sh, 3 interleaved
// rounds, at cb6b8cf), pwrite took 0.53x the mapping's CPU per GiB for
// random 4 KiB writes at MTU 9000, 0.60x at 1500, and 0.54x for the 1 KiB
// sequential frames of MTU 1500.
//
// raw (a queue's Handler.raw) makes the pwrite a system call that Go's
// scheduler does not see; a volume opened with O_DSYNC, whose every write
// waits for the disk, always writes the scheduler's way.
func (v *volume) writeAt(b []byte, off int64, raw bool) error {
	var n int
	var err error
	if raw && !v.Sync {
		n, err = rawIO(unix.SYS_PWRITE64, v.fd, b, off)
	} else {
		n, err = v.f.WriteAt(b, off)
	}
	if err == nil && n != len(b) {
		err = fmt.Errorf("short write: %d of %d bytes", n, len(b))
	}
	return err
}

// readAt reads len(b) bytes at off; raw as for writeAt.
func (v *volume) readAt(b []byte, off int64, raw bool) error {
	var n int
	var err error
	if raw {
		n, err = rawIO(unix.SYS_PREAD64, v.fd, b, off)
	} else {
		n, err = v.f.ReadAt(b, off)
	}
	if err == nil && n != len(b) {
		err = fmt.Errorf("short read: %d of %d bytes", n, len(b))
	}
	return err
}

// rawIO is pread(2) or pwrite(2) (trap) as a raw system call: Go's
// scheduler does not see it, so it does not wake the runtime's monitor
// thread (see Handler.raw). The goroutine keeps its P until it returns,
// and a garbage collector's stop-the-world waits for it: for the disk, or
// for the kernel's writeback throttle (a pause of at most 200 ms).
func rawIO(trap uintptr, fd int, b []byte, off int64) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for {
		r, _, e := unix.RawSyscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(off), 0, 0)
		switch e {
		case 0:
			return int(r), nil
		case unix.EINTR:
			continue
		}
		name := "pread"
		if trap == unix.SYS_PWRITE64 {
			name = "pwrite"
		}
		return 0, os.NewSyscallError(name, e)
	}
}

// sync makes written data stable: fdatasync(2).
func (v *volume) sync() error {
	rc, err := v.f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fdatasync(int(fd)) }); err != nil {
		return err
	}
	return serr
}

func (v *volume) visibleTo(src []byte) bool {
	if len(v.allow) == 0 {
		return true
	}
	for _, m := range v.allow {
		if bytes.Equal(m[:], src) {
			return true
		}
	}
	return false
}

func (v *volume) reservedAgainst(src []byte) bool {
	r := v.reserved.Load()
	if r == nil || len(*r) == 0 {
		return false
	}
	for _, m := range *r {
		if bytes.Equal(m[:], src) {
			return false
		}
	}
	return true
}

type table struct {
	byAddr map[uint32]*volume
	list   []*volume // sorted by address
}

func key(shelf uint16, slot uint8) uint32 { return uint32(shelf)<<8 | uint32(slot) }

// Target serves volumes over AoE. Create with NewTarget, add volumes with
// Add, attach interfaces with Listen and Serve.
type Target struct {
	log     *slog.Logger
	configs ConfigStore
	bufcnt  uint16

	mu  sync.Mutex // serialises Add/Remove
	tab atomic.Pointer[table]
	// pair replicates the Replicated volumes; nil: none may be added.
	// Set once, at start or when the controller pairs the node.
	pair atomic.Pointer[Pair]
	// limitHalf: the pair peer serves every volume too, so each node
	// grants half of a volume's I/O limit (initiators spread their frames
	// over both paths); alone, a node grants all of it.
	limitHalf atomic.Bool
	// also holds the MACs this target answers for besides its ports' own:
	// the pair peer's, while it is away. Frames to them arrive on the
	// same sockets as the rest (ports in promiscuous mode), so one
	// queue keeps them in arrival order.
	also atomic.Pointer[[][6]byte]
	// fence holds initiator MACs whose frames are ignored on every
	// volume: hardware nodes the controller declared failed. Nothing they
	// still send reaches a disk.
	fence atomic.Pointer[map[[6]byte]bool]
	// seen is when each initiator MAC last sent any request and an ATA
	// command: which hardware nodes reach this storage node, and the
	// storage plane's witness that a node is alive.
	seenMu sync.Mutex
	seen   map[[6]byte]seenAt
	// inflight is read-held by each queue from handling a batch of frames
	// until its replies are sent, since a reply reads from its volume.
	// Remove takes it for writing to wait them out before closing.
	inflight sync.RWMutex
	// nqueues counts the queues serving now, on every port (Handler.raw).
	nqueues atomic.Int32
	qmu     sync.Mutex
	queues  []*counters
	ports   []*Port
}

// TargetConfig configures a Target.
type TargetConfig struct {
	Logger  *slog.Logger
	Configs ConfigStore // nil: config strings live in memory only
	// BufferCount is the number of outstanding requests advertised to
	// initiators (Query Config "buffer count"); default 64.
	BufferCount uint16
}

// NewTarget returns a target with no volumes.
func NewTarget(cfg TargetConfig) *Target {
	t := &Target{log: cfg.Logger, configs: cfg.Configs, bufcnt: cfg.BufferCount}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	if t.bufcnt == 0 {
		t.bufcnt = 64
	}
	t.tab.Store(&table{byAddr: map[uint32]*volume{}})
	t.seen = map[[6]byte]seenAt{}
	return t
}

// SetFence replaces the set of fenced initiator MACs.
func (t *Target) SetFence(macs []net.HardwareAddr) {
	m := map[[6]byte]bool{}
	for _, mac := range macs {
		if len(mac) == 6 {
			m[[6]byte(mac)] = true
		}
	}
	t.fence.Store(&m)
}

// Fenced lists the fenced MACs.
func (t *Target) Fenced() []net.HardwareAddr {
	var out []net.HardwareAddr
	if m := t.fence.Load(); m != nil {
		for k := range *m {
			out = append(out, net.HardwareAddr(slices.Clone(k[:])))
		}
	}
	slices.SortFunc(out, func(a, b net.HardwareAddr) int { return bytes.Compare(a, b) })
	return out
}

// seenAt is when an initiator last sent a request of any kind and an ATA
// command (unix nanoseconds; 0: never).
type seenAt struct{ any, ata int64 }

// InitiatorsSeen returns each initiator MAC that sent an ATA command
// since, with the time of its last one.
func (t *Target) InitiatorsSeen(since time.Time) map[string]time.Time {
	return t.initiators(since, func(s seenAt) int64 { return s.ata })
}

// InitiatorsHeard returns each initiator MAC that sent any request
// (discovery included) since, with the time of its last one: the hardware
// nodes that reach this storage node.
func (t *Target) InitiatorsHeard(since time.Time) map[string]time.Time {
	return t.initiators(since, func(s seenAt) int64 { return s.any })
}

func (t *Target) initiators(since time.Time, when func(seenAt) int64) map[string]time.Time {
	t.seenMu.Lock()
	defer t.seenMu.Unlock()
	out := map[string]time.Time{}
	for k, s := range t.seen {
		if ns := when(s); ns != 0 && time.Unix(0, ns).After(since) {
			out[net.HardwareAddr(k[:]).String()] = time.Unix(0, ns)
		} else if time.Since(time.Unix(0, s.any)) > time.Hour {
			delete(t.seen, k)
		}
	}
	return out
}

// noteSource records that src sent a request (ata: an ATA command) now, at
// most every 100 ms per MAC, kind and handler (a per-goroutine map spares
// the shared lock).
func (h *Handler) noteSource(src []byte, ata bool) {
	now := time.Now().UnixNano()
	k := [6]byte(src)
	last, ok := h.touched[k]
	i := 0
	if ata {
		i = 1
	}
	if ok && now-last[i] < int64(100*time.Millisecond) {
		return
	}
	if len(h.touched) > 4096 {
		clear(h.touched) // a flood of made-up source addresses
	}
	last[i] = now
	h.touched[k] = last
	h.t.seenMu.Lock()
	s := h.t.seen[k]
	s.any = now
	if ata {
		s.ata = now
	}
	h.t.seen[k] = s
	h.t.seenMu.Unlock()
}

// servesFor says whether dst is an address this target answers for
// besides its own.
func (t *Target) servesFor(dst []byte) bool {
	if a := t.also.Load(); a != nil {
		for _, m := range *a {
			if bytes.Equal(m[:], dst) {
				return true
			}
		}
	}
	return false
}

// ErrExists is returned when adding an address that is already exported.
var ErrExists = errors.New("storagenode: address already exported")

// Add opens e.Path and starts serving it. Exporting one address twice is
// refused: two targets answering for one shelf.slot with different data is
// how initiators corrupt disks.
func (t *Target) Add(e Export) error {
	if e.Replicated && t.pair.Load() == nil {
		return fmt.Errorf("storagenode: %s: replicated, but this node is not in a pair", e.Addr())
	}
	if e.Shelf == wire.BroadcastShelf || e.Slot == wire.BroadcastSlot {
		return fmt.Errorf("storagenode: %s: shelf 65535 and slot 255 are the broadcast address", e.Addr())
	}
	flag := os.O_RDWR
	if e.ReadOnly {
		flag = os.O_RDONLY
	}
	if e.Sync {
		flag |= syscall.O_DSYNC
	}
	f, err := os.OpenFile(e.Path, flag, 0)
	if err != nil {
		return fmt.Errorf("storagenode: export %s: %w", e.Addr(), err)
	}
	size, err := f.Seek(0, 2)
	if err != nil {
		f.Close()
		return fmt.Errorf("storagenode: export %s: size of %s: %w", e.Addr(), e.Path, err)
	}
	if size < wire.SectorSize {
		f.Close()
		return fmt.Errorf("storagenode: export %s: %s is %d bytes, smaller than one sector", e.Addr(), e.Path, size)
	}
	v := &volume{Export: e, f: f, fd: int(f.Fd()), sectors: uint64(size) / wire.SectorSize}
	for _, m := range e.MACs {
		if len(m) != 6 {
			v.close()
			return fmt.Errorf("storagenode: export %s: bad MAC %q", e.Addr(), m)
		}
		v.allow = append(v.allow, [6]byte(m))
	}
	name := e.Name
	if name == "" {
		name = e.Addr()
	}
	wire.PutIdentify(v.ident[:], wire.Identity{
		Model:    "Fabric AoE volume",
		Serial:   name,
		Firmware: fmt.Sprintf("fab%04x", FirmwareVersion),
		Sectors:  v.sectors,
	})
	if t.configs != nil {
		v.config = t.configs.LoadConfig(e.Shelf, e.Slot)
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.tab.Load()
	k := key(e.Shelf, e.Slot)
	if _, dup := old.byAddr[k]; dup {
		v.close()
		return fmt.Errorf("%w: %s", ErrExists, e.Addr())
	}
	nt := &table{byAddr: make(map[uint32]*volume, len(old.byAddr)+1)}
	for k, v := range old.byAddr {
		nt.byAddr[k] = v
	}
	nt.byAddr[k] = v
	nt.list = append(slices.Clone(old.list), v)
	if !e.Limit.IsZero() {
		v.Limit = Limit{}
		v.setLimit(t, e.Limit)
	}
	slices.SortFunc(nt.list, func(a, b *volume) int {
		return int(key(a.Shelf, a.Slot)) - int(key(b.Shelf, b.Slot))
	})
	t.tab.Store(nt)
	t.log.Info("exporting volume", "shelf", e.Shelf, "slot", e.Slot, "path", e.Path,
		"read_only", e.ReadOnly, "sectors", v.sectors, "allowed_macs", len(v.allow))
	for _, p := range t.ports {
		p.announce(t, v)
	}
	return nil
}

// Remove stops serving shelf.slot. A request already past the table lookup
// may see its pread fail with EBADF; the initiator gets an ATA error for
// that one frame.
func (t *Target) Remove(shelf uint16, slot uint8) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.tab.Load()
	k := key(shelf, slot)
	v, ok := old.byAddr[k]
	if !ok {
		return fmt.Errorf("storagenode: e%d.%d is not exported", shelf, slot)
	}
	nt := &table{byAddr: make(map[uint32]*volume, len(old.byAddr))}
	for kk, vv := range old.byAddr {
		if kk != k {
			nt.byAddr[kk] = vv
		}
	}
	nt.list = slices.DeleteFunc(slices.Clone(old.list), func(x *volume) bool { return x == v })
	t.tab.Store(nt)
	t.log.Info("volume withdrawn", "shelf", shelf, "slot", slot)
	t.quiesce()
	return v.close()
}

// quiesce waits until every queue that may still hold a volume from the
// previous table has sent its replies.
func (t *Target) quiesce() {
	t.inflight.Lock()
	t.inflight.Unlock() //nolint:staticcheck // an empty critical section is the point
}

// Close closes every volume.
func (t *Target) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.tab.Load()
	t.tab.Store(&table{byAddr: map[uint32]*volume{}})
	t.quiesce()
	var errs []error
	for _, v := range old.list {
		errs = append(errs, v.close())
	}
	return errors.Join(errs...)
}

// Stats sums the counters of every queue.
func (t *Target) Stats() Stats {
	t.qmu.Lock()
	defer t.qmu.Unlock()
	var s Stats
	for _, c := range t.queues {
		s.RxFrames += c.rx.Load()
		s.TxFrames += c.tx.Load()
		s.Malformed += c.malformed.Load()
		s.Ignored += c.ignored.Load()
		s.ATAErrors += c.ataErr.Load()
		s.AoEErrors += c.aoeErr.Load()
		s.ReadBytes += c.rd.Load()
		s.WrittenBytes += c.wr.Load()
		s.Flushes += c.flush.Load()
		s.MaskEditsDeny += c.maskDeny.Load()
	}
	return s
}

func (t *Target) newCounters() *counters {
	c := new(counters)
	t.qmu.Lock()
	t.queues = append(t.queues, c)
	t.qmu.Unlock()
	return c
}

// Replier hands out reply buffers. Buf returns a buffer of at least the
// port's frame size; Commit(n) sends its first n bytes. CommitRead(n, v,
// off, size) sends them followed by size bytes of v at byte offset off,
// read from v.f (or an ATA error if the read fails).
type Replier interface {
	Buf() []byte
	Commit(n int)
	CommitRead(n int, v *volume, off int64, size int)
}

// Handler processes frames for one port (interface): its MAC address and
// the largest frame it carries.
type Handler struct {
	t          *Target
	mac        [6]byte
	src        [6]byte       // the address this frame's reply leaves from: mac, or a taken-over one
	mtu        *atomic.Int32 // the interface's MTU now (Port.mtu)
	bufSectors int           // what the frame buffers hold, the ceiling of maxSectors
	c          *counters
	// send sends one frame at once, outside the batch: the reply to a
	// replicated write, which leaves when the pair has it on both nodes.
	send    func([]byte) error
	touched map[[6]byte][2]int64 // noteSource's throttle: any request, ATA
	// raw: the volume's pread and pwrite are raw system calls (rawIO).
	// Serve sets it for its queues when GOMAXPROCS exceeds the number of
	// queues, so a P stays for everything else while a queue waits on a
	// disk. A system call the scheduler sees wakes the runtime's monitor
	// thread (sysmon) when every P was idle, which between two frames they
	// are: with the Linux aoe driver sending a frame at a time, that wake-up
	// and the monitor's sleeps after it cost more than the I/O
	// (docs/benchmarks.md).
	raw bool
}

// NewHandler returns a handler for frames arriving on an interface with
// the given MAC and MTU. Each goroutine needs its own handler.
func (t *Target) NewHandler(mac net.HardwareAddr, mtu int) *Handler {
	m := new(atomic.Int32)
	m.Store(int32(mtu))
	return t.newHandler(mac, m, mtu)
}

// newHandler returns a handler whose MTU follows mtu, for buffers that hold
// frames of bufMTU.
func (t *Target) newHandler(mac net.HardwareAddr, mtu *atomic.Int32, bufMTU int) *Handler {
	return &Handler{t: t, mac: [6]byte(mac), mtu: mtu, bufSectors: wire.MaxSectors(bufMTU), c: t.newCounters(), touched: map[[6]byte][2]int64{}}
}

// maxSectors is the most sectors one frame carries on the interface now:
// what Query Config advertises, and the largest request served.
func (h *Handler) maxSectors() int {
	return min(wire.MaxSectors(int(h.mtu.Load())), h.bufSectors)
}

// Handle processes one received frame, replying through r. It never panics
// on malformed input and never writes to a volume unless the whole request
// is valid.
func (h *Handler) Handle(req []byte, r Replier) {
	c := h.c
	c.rx.Add(1)
	f := wire.Frame(req)
	if len(f) < wire.HeaderLen || f.EtherType() != wire.EtherType {
		c.malformed.Add(1)
		return
	}
	if f.Response() {
		c.ignored.Add(1) // another target's reply, or our own echo
		return
	}
	if f.Version() != wire.Version {
		// AoEr11 2.4: error 5 for an unsupported version would need a
		// version-1 header; answering a frame we cannot parse invites
		// loops, so count it and stay quiet like vblade.
		c.malformed.Add(1)
		return
	}
	if f.Src()[0]&1 != 0 {
		c.malformed.Add(1) // multicast source
		return
	}
	if fs := h.t.fence.Load(); fs != nil && len(*fs) > 0 && (*fs)[[6]byte(f.Src())] {
		c.ignored.Add(1) // a fenced node: nothing it sends reaches a disk
		return
	}
	h.src = h.mac
	if dst := f.Dst(); dst[0]&1 == 0 && !bytes.Equal(dst, h.mac[:]) {
		// Unicast to another address: one this node serves for its
		// absent pair peer, or a frame a promiscuous port sees in
		// passing.
		if !h.t.servesFor(dst) {
			c.ignored.Add(1)
			return
		}
		h.src = [6]byte(dst)
	}
	shelf, slot := f.Shelf(), f.Slot()
	tab := h.t.tab.Load()
	if f.Command() == aoe.CommandIssueATACommand {
		if len(f) < wire.ATALen {
			c.malformed.Add(1)
			return
		}
		h.noteSource(f.Src(), true)
		v := tab.byAddr[key(shelf, slot)]
		if v == nil || !v.visibleTo(f.Src()) || (v.Replicated && !h.t.pair.Load().serving()) {
			c.ignored.Add(1)
			return
		}
		if lm := v.limit.Load(); lm != nil && !lm.admit(h, f, frameBytes(f)) {
			return // queued until the volume's limit allows it
		}
		h.ata(v, f, r)
		return
	}
	// Control commands: possibly broadcast.
	h.noteSource(f.Src(), false)
	var hdr aoe.Header
	if err := hdr.UnmarshalBinary(f.Control()); err != nil {
		var code aoe.Error
		if errors.As(err, &code) && code == aoe.ErrorUnrecognizedCommandCode {
			// AoEr11 2.4: an unknown command gets error 1.
			if v := tab.byAddr[key(shelf, slot)]; v != nil && v.visibleTo(f.Src()) {
				h.errorReply(f, r, aoe.ErrorUnrecognizedCommandCode)
				return
			}
			c.ignored.Add(1)
			return
		}
		c.malformed.Add(1)
		return
	}
	matched := false
	for _, v := range tab.list {
		if (shelf != wire.BroadcastShelf && shelf != v.Shelf) || (slot != wire.BroadcastSlot && slot != v.Slot) {
			continue
		}
		if !v.visibleTo(f.Src()) || (v.Replicated && !h.t.pair.Load().serving()) {
			continue
		}
		matched = true
		switch a := hdr.Arg.(type) {
		case *aoe.ConfigArg:
			h.config(v, f, &hdr, a, r)
		case *aoe.MACMaskArg:
			h.macMask(v, f, &hdr, a, r)
		case *aoe.ReserveReleaseArg:
			h.reserve(v, f, &hdr, a, r)
		}
	}
	if !matched {
		c.ignored.Add(1)
	}
}

// ata handles an ATA command for v. Data moves between the volume and the
// frame buffers directly.
func (h *Handler) ata(v *volume, f wire.Frame, r Replier) {
	c := h.c
	if v.reservedAgainst(f.Src()) {
		h.errorReply(f, r, aoe.ErrorTargetIsReserved)
		return
	}
	out := r.Buf()
	wire.PutHeader(out, f.Src(), h.src[:], wire.FlagResponse, 0, v.Shelf, v.Slot, aoe.CommandIssueATACommand, f.Tag())
	copy(out[wire.HeaderLen:wire.ATALen], f[wire.HeaderLen:wire.ATALen])
	n := wire.ATALen
	count := uint64(f.Count())
	lba := f.LBA()
	ok := func() { wire.SetATAStatus(out, 0, wire.StatusDRDY) }
	fail := func(e uint8) {
		wire.SetATAStatus(out, e, wire.StatusDRDY|wire.StatusERR)
		c.ataErr.Add(1)
		h.t.log.Debug("ATA error", "shelf", v.Shelf, "slot", v.Slot, "src", f.Src().String(),
			"command", f.CmdStatus(), "lba", lba, "count", count, "error", e)
	}
	inRange := func() bool { return lba < v.sectors && count <= v.sectors-lba }

	switch cmd := f.CmdStatus(); cmd {
	case wire.CmdReadSectors, wire.CmdReadSectorsExt, wire.CmdReadDMA, wire.CmdReadDMAExt:
		if count == 0 || int(count) > h.maxSectors() || len(out) < wire.ATALen+int(count)*wire.SectorSize {
			h.errorReply(f, r, aoe.ErrorBadArgumentParameter)
			return
		}
		if !inRange() {
			fail(wire.ErrIDNF)
			break
		}
		want := int(count) * wire.SectorSize
		if v.Replicated && !h.t.pair.Load().serving() {
			c.ignored.Add(1) // not sure to be current: silence, the initiator resends
			return
		}
		// The replier reads the data into its frame (an ATA error there
		// if the read fails).
		ok()
		c.rd.Add(uint64(want))
		c.tx.Add(1)
		r.CommitRead(n, v, int64(lba*wire.SectorSize), want)
		return
	case wire.CmdWriteSectors, wire.CmdWriteSectorsExt, wire.CmdWriteDMA, wire.CmdWriteDMAExt:
		want := int(count) * wire.SectorSize
		if count == 0 || int(count) > h.maxSectors() || len(f.Data()) < want {
			h.errorReply(f, r, aoe.ErrorBadArgumentParameter)
			return
		}
		if v.ReadOnly {
			fail(wire.ErrABRT)
			break
		}
		if !inRange() {
			fail(wire.ErrIDNF)
			break
		}
		off := int64(lba * wire.SectorSize)
		if v.Replicated {
			// Applied by the pair, in its order, and answered once on
			// both nodes (or dropped: the initiator resends).
			h.t.pair.Load().aoeWrite(h, v, f, off, want)
			return
		}
		if err := v.writeAt(f.Data()[:want], off, h.raw); err != nil {
			h.t.log.Warn("write failed", "shelf", v.Shelf, "slot", v.Slot, "offset", off, "err", err)
			fail(wire.ErrABRT)
			break
		}
		ok()
		c.wr.Add(uint64(want))
	case wire.CmdIdentify:
		if len(out) < n+512 {
			h.errorReply(f, r, aoe.ErrorBadArgumentParameter)
			return
		}
		copy(out[n:], v.ident[:])
		n += 512
		ok()
	case wire.CmdFlushCache, wire.CmdFlushCacheExt:
		if !v.ReadOnly {
			if err := v.sync(); err != nil {
				fail(wire.ErrABRT)
				break
			}
		}
		c.flush.Add(1)
		ok()
	case wire.CmdCheckPowerMode:
		ok()
		out[wire.HeaderLen+2] = 0xff // sector count: active or idle
	default:
		fail(wire.ErrABRT)
	}
	h.commit(out, n, r)
}

// commit pads short frames with zeros (buffers are reused: stale bytes
// must not leak) and sends.
func (h *Handler) commit(out []byte, n int, r Replier) {
	if n < wire.MinFrame {
		clear(out[n:wire.MinFrame])
		n = wire.MinFrame
	}
	h.c.tx.Add(1)
	r.Commit(n)
}

// errorReply answers with the AoE error flag and the request's arguments.
func (h *Handler) errorReply(f wire.Frame, r Replier, code aoe.Error) {
	out := r.Buf()
	n := min(len(f), wire.ATALen)
	if f.Command() != aoe.CommandIssueATACommand {
		n = min(len(f), len(out), 1024)
	}
	copy(out, f[:n])
	wire.PutHeader(out, f.Src(), h.src[:], wire.FlagResponse|wire.FlagError, code, f.Shelf(), f.Slot(), f.Command(), f.Tag())
	h.c.aoeErr.Add(1)
	h.commit(out, n, r)
}

// reply marshals a control reply from v.
func (h *Handler) reply(v *volume, f wire.Frame, hdr *aoe.Header, r Replier) {
	hdr.FlagResponse = true
	hdr.Major, hdr.Minor = v.Shelf, v.Slot
	b, err := hdr.MarshalBinary()
	if err != nil {
		h.c.malformed.Add(1)
		return
	}
	out := r.Buf()
	if len(b)+wire.EthLen > len(out) {
		h.errorReply(f, r, aoe.ErrorBadArgumentParameter)
		return
	}
	copy(out[0:6], f.Src())
	copy(out[6:12], h.src[:])
	out[12], out[13] = 0x88, 0xa2
	n := wire.EthLen + copy(out[wire.EthLen:], b)
	h.commit(out, n, r)
}

func (h *Handler) configArg(v *volume, cmd aoe.ConfigCommand, s []byte) *aoe.ConfigArg {
	return &aoe.ConfigArg{
		BufferCount:     h.t.bufcnt,
		FirmwareVersion: FirmwareVersion,
		SectorCount:     uint8(h.maxSectors()),
		Version:         aoe.Version,
		Command:         cmd,
		StringLength:    uint16(len(s)),
		String:          s,
	}
}

// config answers Query Config, AoEr11 3.2.
func (h *Handler) config(v *volume, f wire.Frame, hdr *aoe.Header, a *aoe.ConfigArg, r Replier) {
	v.mu.Lock()
	cur := slices.Clone(v.config)
	switch a.Command {
	case aoe.ConfigCommandRead:
	case aoe.ConfigCommandTest:
		if !bytes.Equal(cur, a.String) {
			v.mu.Unlock()
			return
		}
	case aoe.ConfigCommandTestPrefix:
		if !bytes.HasPrefix(cur, a.String) {
			v.mu.Unlock()
			return
		}
	case aoe.ConfigCommandSet, aoe.ConfigCommandForceSet:
		if a.Command == aoe.ConfigCommandSet && len(cur) > 0 {
			v.mu.Unlock()
			h.errorReply(f, r, aoe.ErrorConfigStringPresent)
			return
		}
		if h.t.configs != nil {
			if err := h.t.configs.SaveConfig(v.Shelf, v.Slot, a.String); err != nil {
				v.mu.Unlock()
				h.t.log.Error("saving config string", "shelf", v.Shelf, "slot", v.Slot, "err", err)
				h.errorReply(f, r, aoe.ErrorDeviceUnavailable)
				return
			}
		}
		v.config = slices.Clone(a.String)
		cur = v.config
	default:
		v.mu.Unlock()
		h.c.malformed.Add(1)
		h.errorReply(f, r, aoe.ErrorBadArgumentParameter)
		return
	}
	v.mu.Unlock()
	hdr.Arg = h.configArg(v, a.Command, cur)
	h.reply(v, f, hdr, r)
}

// macMask answers MAC Mask List, AoEr11 3.3. The list is the volume's
// allow list from the storage node's own configuration; edits over the wire
// are refused (merror 1) and change nothing.
func (h *Handler) macMask(v *volume, f wire.Frame, hdr *aoe.Header, a *aoe.MACMaskArg, r Replier) {
	out := &aoe.MACMaskArg{Command: a.Command}
	if a.Command != aoe.MACMaskCommandRead {
		out.Error = aoe.MACMaskErrorUnspecified
		if a.Command != aoe.MACMaskCommandEdit {
			out.Error = aoe.MACMaskErrorBadCommand
		}
		h.c.maskDeny.Add(1)
		h.t.log.Debug("MAC mask edit over AoE refused", "src", f.Src().String(), "shelf", v.Shelf, "slot", v.Slot)
	}
	for _, m := range v.allow {
		out.Directives = append(out.Directives, &aoe.Directive{Command: aoe.DirectiveCommandAdd, MAC: net.HardwareAddr(m[:])})
	}
	out.DirCount = uint8(len(out.Directives))
	hdr.Arg = out
	h.reply(v, f, hdr, r)
}

// reserve answers Reserve/Release, AoEr11 3.4.
func (h *Handler) reserve(v *volume, f wire.Frame, hdr *aoe.Header, a *aoe.ReserveReleaseArg, r Replier) {
	v.mu.Lock()
	switch a.Command {
	case aoe.ReserveReleaseCommandRead:
	case aoe.ReserveReleaseCommandSet, aoe.ReserveReleaseCommandForceSet:
		if a.Command == aoe.ReserveReleaseCommandSet && v.reservedAgainst(f.Src()) {
			v.mu.Unlock()
			h.errorReply(f, r, aoe.ErrorTargetIsReserved)
			return
		}
		list := make([][6]byte, 0, len(a.MACs))
		for _, m := range a.MACs {
			list = append(list, [6]byte(m))
		}
		v.reserved.Store(&list)
	default:
		v.mu.Unlock()
		h.errorReply(f, r, aoe.ErrorBadArgumentParameter)
		return
	}
	out := &aoe.ReserveReleaseArg{Command: a.Command}
	if p := v.reserved.Load(); p != nil {
		for _, m := range *p {
			out.MACs = append(out.MACs, net.HardwareAddr(slices.Clone(m[:])))
		}
	}
	v.mu.Unlock()
	out.NMACs = uint8(len(out.MACs))
	hdr.Arg = out
	h.reply(v, f, hdr, r)
}

// Announcement builds the unsolicited Query Config reply a target sends to
// the broadcast address when a volume comes up (like vblade at start), so
// initiators that already run see it without rescanning.
func (h *Handler) announcement(v *volume, r Replier) {
	if v.Replicated && !h.t.pair.Load().serving() {
		return
	}
	v.mu.Lock()
	s := slices.Clone(v.config)
	v.mu.Unlock()
	hdr := aoe.Header{Version: aoe.Version, FlagResponse: true, Major: v.Shelf, Minor: v.Slot,
		Command: aoe.CommandQueryConfigInformation, Arg: h.configArg(v, aoe.ConfigCommandRead, s)}
	b, err := hdr.MarshalBinary()
	if err != nil {
		return
	}
	out := r.Buf()
	copy(out[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(out[6:12], h.src[:])
	out[12], out[13] = 0x88, 0xa2
	h.commit(out, wire.EthLen+copy(out[wire.EthLen:], b), r)
}
