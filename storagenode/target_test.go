package storagenode

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fabric-project/fabric/aoe/wire"
	"github.com/mdlayher/aoe"
)

var (
	initA  = net.HardwareAddr{0x52, 0x54, 0, 0xaa, 0, 1}
	initB  = net.HardwareAddr{0x52, 0x54, 0, 0xbb, 0, 2}
	tgtMAC = net.HardwareAddr{0x52, 0x54, 0, 0xcc, 0, 3}
)

// replies collects what the handler sends.
type replies struct {
	buf    []byte
	frames [][]byte
}

func (r *replies) Buf() []byte {
	if r.buf == nil {
		r.buf = make([]byte, 9014)
	}
	return r.buf
}
func (r *replies) Commit(n int) { r.frames = append(r.frames, bytes.Clone(r.buf[:n])) }
func (r *replies) CommitRead(n int, v *volume, off int64, size int) {
	b := append(bytes.Clone(r.buf[:n]), make([]byte, size)...)
	if err := v.readAt(b[n:], off, false); err != nil {
		wire.SetATAStatus(b, wire.ErrABRT, wire.StatusDRDY|wire.StatusERR)
		b = b[:n]
	}
	r.frames = append(r.frames, b)
}

// frame encodes a request with the mdlayher/aoe codec (not our fast path).
func frame(t testing.TB, src net.HardwareAddr, h *aoe.Header) []byte {
	t.Helper()
	h.Version = aoe.Version
	b, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	f := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, src...)
	f = append(f, 0x88, 0xa2)
	f = append(f, b...)
	for len(f) < 60 {
		f = append(f, 0)
	}
	return f
}

func ata(shelf uint16, slot uint8, cmd uint8, lba uint64, count uint8, data []byte) *aoe.Header {
	a := &aoe.ATAArg{FlagLBA48Extended: true, SectorCount: count, CmdStatus: aoe.ATACmdStatus(cmd), Data: data}
	for i := range a.LBA {
		a.LBA[i] = byte(lba >> (8 * i))
	}
	if cmd == wire.CmdWriteSectorsExt {
		a.FlagWrite = true
	}
	return &aoe.Header{Major: shelf, Minor: slot, Command: aoe.CommandIssueATACommand, Tag: [4]byte{1, 2, 3, 4}, Arg: a}
}

func parse(t testing.TB, f []byte) *aoe.Header {
	t.Helper()
	var h aoe.Header
	if err := h.UnmarshalBinary(wire.Frame(f).Control()); err != nil {
		t.Fatalf("reply does not parse: %v", err)
	}
	return &h
}

type fixture struct {
	t    *Target
	h    *Handler
	dir  string
	path string
	pool *Pool
}

func newFixture(t *testing.T, exports ...Export) *fixture {
	t.Helper()
	dir := t.TempDir()
	pool, err := OpenPool(dir)
	if err != nil {
		t.Fatal(err)
	}
	fx := &fixture{dir: dir, pool: pool, path: filepath.Join(dir, "disk.img")}
	if err := os.WriteFile(fx.path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	fx.t = NewTarget(TargetConfig{Configs: pool})
	t.Cleanup(func() { fx.t.Close() })
	if len(exports) == 0 {
		exports = []Export{{Shelf: 1, Slot: 0}}
	}
	for _, e := range exports {
		if e.Path == "" {
			e.Path = fx.path
		}
		if err := fx.t.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	fx.h = fx.t.NewHandler(tgtMAC, 9000)
	return fx
}

func (fx *fixture) do(t testing.TB, src net.HardwareAddr, h *aoe.Header) []*aoe.Header {
	t.Helper()
	r := &replies{}
	fx.h.Handle(frame(t, src, h), r)
	var out []*aoe.Header
	for _, f := range r.frames {
		if !bytes.Equal(f[0:6], src) || !bytes.Equal(f[6:12], tgtMAC) {
			t.Fatalf("reply addressed %x from %x", f[0:6], f[6:12])
		}
		out = append(out, parse(t, f))
	}
	return out
}

func (fx *fixture) one(t testing.TB, src net.HardwareAddr, h *aoe.Header) (*aoe.Header, *aoe.ATAArg) {
	t.Helper()
	rs := fx.do(t, src, h)
	if len(rs) != 1 {
		t.Fatalf("%d replies, want 1", len(rs))
	}
	a, _ := rs[0].Arg.(*aoe.ATAArg)
	return rs[0], a
}

func TestATA(t *testing.T) {
	fx := newFixture(t, Export{Shelf: 1, Slot: 0}, Export{Shelf: 1, Slot: 1, ReadOnly: true, Path: ""})
	pattern := bytes.Repeat([]byte("fabric!!"), 17*64)

	_, a := fx.one(t, initA, ata(1, 0, wire.CmdIdentify, 0, 1, nil))
	id, err := wire.ParseIdentify(a.Data)
	if err != nil || id.Sectors != 2048 {
		t.Fatalf("identify: %+v %v", id, err)
	}

	h, a := fx.one(t, initA, ata(1, 0, wire.CmdWriteSectorsExt, 100, 17, pattern))
	if h.FlagError || a.CmdStatus != wire.StatusDRDY {
		t.Fatalf("write: %+v %+v", h, a)
	}
	_, a = fx.one(t, initA, ata(1, 0, wire.CmdReadSectorsExt, 100, 17, nil))
	if !bytes.Equal(a.Data, pattern) || a.CmdStatus != wire.StatusDRDY {
		t.Fatalf("read back differs (status %#x)", a.CmdStatus)
	}
	// LBA28 read of the same sectors.
	h28 := ata(1, 0, wire.CmdReadSectors, 100, 1, nil)
	h28.Arg.(*aoe.ATAArg).FlagLBA48Extended = false
	h28.Arg.(*aoe.ATAArg).LBA[3] = 0xe0
	_, a = fx.one(t, initA, h28)
	if !bytes.Equal(a.Data, pattern[:512]) {
		t.Fatal("LBA28 read differs")
	}

	before := sum(t, fx.path)
	for _, tc := range []struct {
		name    string
		req     *aoe.Header
		aoeErr  aoe.Error
		ataErr  uint8
		noReply bool
	}{
		{name: "read past end", req: ata(1, 0, wire.CmdReadSectorsExt, 2047, 2, nil), ataErr: wire.ErrIDNF},
		{name: "write past end", req: ata(1, 0, wire.CmdWriteSectorsExt, 2048, 1, pattern[:512]), ataErr: wire.ErrIDNF},
		{name: "huge LBA", req: ata(1, 0, wire.CmdWriteSectorsExt, 1<<47, 1, pattern[:512]), ataErr: wire.ErrIDNF},
		{name: "write to read-only", req: ata(1, 1, wire.CmdWriteSectorsExt, 0, 1, pattern[:512]), ataErr: wire.ErrABRT},
		{name: "unknown ATA command", req: ata(1, 0, 0x99, 0, 0, nil), ataErr: wire.ErrABRT},
		{name: "count over frame", req: ata(1, 0, wire.CmdReadSectorsExt, 0, 200, nil), aoeErr: aoe.ErrorBadArgumentParameter},
		{name: "zero count", req: ata(1, 0, wire.CmdReadSectorsExt, 0, 0, nil), aoeErr: aoe.ErrorBadArgumentParameter},
		{name: "write data short", req: ata(1, 0, wire.CmdWriteSectorsExt, 0, 4, pattern[:1024]), aoeErr: aoe.ErrorBadArgumentParameter},
		{name: "other shelf", req: ata(9, 0, wire.CmdReadSectorsExt, 0, 1, nil), noReply: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := fx.do(t, initA, tc.req)
			if tc.noReply {
				if len(rs) != 0 {
					t.Fatalf("got %d replies, want none", len(rs))
				}
				return
			}
			if len(rs) != 1 {
				t.Fatalf("%d replies", len(rs))
			}
			if tc.aoeErr != 0 {
				if !rs[0].FlagError || rs[0].Error != tc.aoeErr {
					t.Fatalf("AoE error %v (flag %v), want %v", rs[0].Error, rs[0].FlagError, tc.aoeErr)
				}
				return
			}
			a := rs[0].Arg.(*aoe.ATAArg)
			if a.CmdStatus&wire.StatusERR == 0 || a.ErrFeature != tc.ataErr {
				t.Fatalf("status %#x error %#x, want ERR and %#x", a.CmdStatus, a.ErrFeature, tc.ataErr)
			}
		})
	}
	if sum(t, fx.path) != before {
		t.Error("a refused request changed the volume")
	}

	_, a = fx.one(t, initA, ata(1, 0, wire.CmdFlushCacheExt, 0, 0, nil))
	if a.CmdStatus != wire.StatusDRDY {
		t.Errorf("flush status %#x", a.CmdStatus)
	}
	_, a = fx.one(t, initA, ata(1, 0, wire.CmdCheckPowerMode, 0, 0, nil))
	if a.SectorCount != 0xff {
		t.Errorf("check power mode count %#x", a.SectorCount)
	}
	s := fx.t.Stats()
	if s.Flushes != 1 || s.WrittenBytes != uint64(len(pattern)) || s.ATAErrors < 5 || s.AoEErrors != 3 || s.Ignored != 1 {
		t.Errorf("stats %+v", s)
	}
}

func sum(t testing.TB, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func cfgReq(shelf uint16, slot uint8, cmd aoe.ConfigCommand, s string) *aoe.Header {
	return &aoe.Header{Major: shelf, Minor: slot, Command: aoe.CommandQueryConfigInformation,
		Arg: &aoe.ConfigArg{Command: cmd, StringLength: uint16(len(s)), String: []byte(s)}}
}

func TestQueryConfig(t *testing.T) {
	fx := newFixture(t)
	h, _ := fx.one(t, initA, cfgReq(1, 0, aoe.ConfigCommandRead, ""))
	c := h.Arg.(*aoe.ConfigArg)
	if c.BufferCount != 64 || c.SectorCount != 17 || c.Version != 1 || len(c.String) != 0 || !h.FlagResponse {
		t.Fatalf("config %+v", c)
	}
	h, _ = fx.one(t, initA, cfgReq(1, 0, aoe.ConfigCommandSet, "owner=hn1"))
	if h.FlagError || string(h.Arg.(*aoe.ConfigArg).String) != "owner=hn1" {
		t.Fatalf("set: %+v", h)
	}
	h, _ = fx.one(t, initA, cfgReq(1, 0, aoe.ConfigCommandSet, "owner=hn2"))
	if !h.FlagError || h.Error != aoe.ErrorConfigStringPresent {
		t.Fatalf("second set: want error 4, got %+v", h)
	}
	if rs := fx.do(t, initA, cfgReq(1, 0, aoe.ConfigCommandTest, "owner=hn")); len(rs) != 0 {
		t.Error("test exact answered a mismatch")
	}
	if rs := fx.do(t, initA, cfgReq(1, 0, aoe.ConfigCommandTest, "owner=hn1")); len(rs) != 1 {
		t.Error("test exact did not answer a match")
	}
	if rs := fx.do(t, initA, cfgReq(1, 0, aoe.ConfigCommandTestPrefix, "owner=")); len(rs) != 1 {
		t.Error("test prefix did not answer a prefix")
	}
	if rs := fx.do(t, initA, cfgReq(1, 0, aoe.ConfigCommandTestPrefix, "x")); len(rs) != 0 {
		t.Error("test prefix answered a non-prefix")
	}
	h, _ = fx.one(t, initA, cfgReq(1, 0, aoe.ConfigCommandForceSet, "owner=hn2"))
	if h.FlagError || string(h.Arg.(*aoe.ConfigArg).String) != "owner=hn2" {
		t.Fatalf("force set: %+v", h)
	}
	// The string survives a restart (a new target on the same pool).
	t2 := NewTarget(TargetConfig{Configs: fx.pool})
	defer t2.Close()
	if err := t2.Add(Export{Shelf: 1, Slot: 0, Path: fx.path}); err != nil {
		t.Fatal(err)
	}
	fx2 := &fixture{t: t2, h: t2.NewHandler(tgtMAC, 1500)}
	h, _ = fx2.one(t, initA, cfgReq(1, 0, aoe.ConfigCommandRead, ""))
	if c := h.Arg.(*aoe.ConfigArg); string(c.String) != "owner=hn2" || c.SectorCount != 2 {
		t.Fatalf("after restart: %q, %d sectors per frame", c.String, c.SectorCount)
	}
}

func TestBroadcastAndMasks(t *testing.T) {
	fx := newFixture(t,
		Export{Shelf: 1, Slot: 0},
		Export{Shelf: 1, Slot: 1, MACs: []net.HardwareAddr{initA}},
		Export{Shelf: 2, Slot: 0})
	count := func(src net.HardwareAddr, shelf uint16, slot uint8) int {
		return len(fx.do(t, src, cfgReq(shelf, slot, aoe.ConfigCommandRead, "")))
	}
	if n := count(initA, wire.BroadcastShelf, wire.BroadcastSlot); n != 3 {
		t.Errorf("A sees %d volumes, want 3", n)
	}
	if n := count(initB, wire.BroadcastShelf, wire.BroadcastSlot); n != 2 {
		t.Errorf("B sees %d volumes, want 2 (e1.1 is masked)", n)
	}
	if n := count(initA, 1, wire.BroadcastSlot); n != 2 {
		t.Errorf("shelf 1 wildcard: %d", n)
	}
	if rs := fx.do(t, initB, ata(1, 1, wire.CmdReadSectorsExt, 0, 1, nil)); len(rs) != 0 {
		t.Error("masked volume answered ATA")
	}

	// MAC mask list: readable, not editable over the wire.
	h, _ := fx.one(t, initA, &aoe.Header{Major: 1, Minor: 1, Command: aoe.CommandMACMaskList, Arg: &aoe.MACMaskArg{Command: aoe.MACMaskCommandRead}})
	m := h.Arg.(*aoe.MACMaskArg)
	if m.DirCount != 1 || m.Directives[0].MAC.String() != initA.String() {
		t.Fatalf("mask read: %+v", m)
	}
	edit := &aoe.MACMaskArg{Command: aoe.MACMaskCommandEdit, DirCount: 1,
		Directives: []*aoe.Directive{{Command: aoe.DirectiveCommandAdd, MAC: initB}}}
	h, _ = fx.one(t, initA, &aoe.Header{Major: 1, Minor: 1, Command: aoe.CommandMACMaskList, Arg: edit})
	if m := h.Arg.(*aoe.MACMaskArg); m.Error == 0 || m.DirCount != 1 {
		t.Fatalf("mask edit was not refused: %+v", m)
	}
	if n := count(initB, 1, 1); n != 0 {
		t.Error("refused edit still let B see the volume")
	}
	if fx.t.Stats().MaskEditsDeny != 1 {
		t.Error("refused edit not counted")
	}
}

// TestInitiatorsHeard: every request counts as heard (a node that only
// discovers reaches the storage node, masked or not); only ATA commands
// count as seen I/O; a fenced node is neither.
func TestInitiatorsHeard(t *testing.T) {
	fx := newFixture(t, Export{Shelf: 1, Slot: 0, MACs: []net.HardwareAddr{initA}})
	fx.do(t, initB, cfgReq(wire.BroadcastShelf, wire.BroadcastSlot, aoe.ConfigCommandRead, "")) // masked: no answer
	fx.one(t, initA, ata(1, 0, wire.CmdReadSectorsExt, 0, 1, nil))
	since := time.Now().Add(-time.Minute)
	heard, seen := fx.t.InitiatorsHeard(since), fx.t.InitiatorsSeen(since)
	if _, ok := heard[initB.String()]; !ok || len(heard) != 2 {
		t.Errorf("heard %v, want %s (discovery) and %s (I/O)", heard, initB, initA)
	}
	if _, ok := seen[initA.String()]; !ok || len(seen) != 1 {
		t.Errorf("seen I/O from %v, want %s only", seen, initA)
	}
	fenced := net.HardwareAddr{2, 0, 0, 0, 0, 0xfe}
	fx.t.SetFence([]net.HardwareAddr{fenced})
	fx.do(t, fenced, cfgReq(wire.BroadcastShelf, wire.BroadcastSlot, aoe.ConfigCommandRead, ""))
	if _, ok := fx.t.InitiatorsHeard(since)[fenced.String()]; ok {
		t.Error("a fenced MAC counts as reaching the storage node")
	}
}

func rr(cmd aoe.ReserveReleaseCommand, macs ...net.HardwareAddr) *aoe.Header {
	return &aoe.Header{Major: 1, Minor: 0, Command: aoe.CommandReserveRelease,
		Arg: &aoe.ReserveReleaseArg{Command: cmd, NMACs: uint8(len(macs)), MACs: macs}}
}

func TestReserveRelease(t *testing.T) {
	fx := newFixture(t)
	h, _ := fx.one(t, initA, rr(aoe.ReserveReleaseCommandSet, initA))
	if h.FlagError || h.Arg.(*aoe.ReserveReleaseArg).NMACs != 1 {
		t.Fatalf("reserve: %+v", h)
	}
	if h, _ := fx.one(t, initB, ata(1, 0, wire.CmdReadSectorsExt, 0, 1, nil)); !h.FlagError || h.Error != aoe.ErrorTargetIsReserved {
		t.Fatalf("B's read on A's reservation: %+v", h)
	}
	if h, _ := fx.one(t, initB, rr(aoe.ReserveReleaseCommandSet, initB)); !h.FlagError || h.Error != aoe.ErrorTargetIsReserved {
		t.Fatalf("B's set on A's reservation: %+v", h)
	}
	if h, a := fx.one(t, initA, ata(1, 0, wire.CmdReadSectorsExt, 0, 1, nil)); h.FlagError || a.CmdStatus != wire.StatusDRDY {
		t.Fatalf("A's read: %+v", h)
	}
	h, _ = fx.one(t, initB, rr(aoe.ReserveReleaseCommandRead))
	if r := h.Arg.(*aoe.ReserveReleaseArg); r.NMACs != 1 || r.MACs[0].String() != initA.String() {
		t.Fatalf("read reservation: %+v", r)
	}
	fx.one(t, initB, rr(aoe.ReserveReleaseCommandForceSet)) // break it: release
	if h, _ := fx.one(t, initB, ata(1, 0, wire.CmdReadSectorsExt, 0, 1, nil)); h.FlagError {
		t.Fatalf("after release: %+v", h)
	}
}

func TestMalformed(t *testing.T) {
	fx := newFixture(t)
	good := frame(t, initA, ata(1, 0, wire.CmdWriteSectorsExt, 0, 1, bytes.Repeat([]byte{1}, 512)))
	before := sum(t, fx.path)
	mut := func(fn func([]byte) []byte) []byte { return fn(bytes.Clone(good)) }
	for name, f := range map[string][]byte{
		"empty":         {},
		"ethernet only": good[:14],
		"half header":   good[:20],
		"ata truncated": good[:30],
		"version 2":     mut(func(b []byte) []byte { b[14] = 0x20; return b }),
		"response":      mut(func(b []byte) []byte { b[14] |= wire.FlagResponse; return b }),
		"multicast src": mut(func(b []byte) []byte { b[6] = 1; return b }),
		"huge count":    mut(func(b []byte) []byte { b[26] = 255; return b }),
		"data cut":      good[:wire.ATALen+100],
		"wrong type":    mut(func(b []byte) []byte { b[12] = 0x08; return b }),
	} {
		r := &replies{}
		fx.h.Handle(f, r)
		for _, rep := range r.frames {
			if rep[14]&wire.FlagError == 0 {
				t.Errorf("%s: got a success reply", name)
			}
		}
	}
	if sum(t, fx.path) != before {
		t.Fatal("malformed frames changed the volume")
	}
	if s := fx.t.Stats(); s.Malformed < 6 || s.WrittenBytes != 0 {
		t.Errorf("stats %+v", s)
	}
	// Unknown AoE command to our volume: error 1.
	f := bytes.Clone(good)
	f[19] = 9
	r := &replies{}
	fx.h.Handle(f, r)
	if len(r.frames) != 1 || r.frames[0][15] != byte(aoe.ErrorUnrecognizedCommandCode) {
		t.Errorf("unknown command: %d replies", len(r.frames))
	}
}

func TestAddRefusesDuplicateAndBroadcast(t *testing.T) {
	fx := newFixture(t)
	if err := fx.t.Add(Export{Shelf: 1, Slot: 0, Path: fx.path}); err == nil {
		t.Error("exported e1.0 twice")
	}
	if err := fx.t.Add(Export{Shelf: 0xffff, Slot: 0, Path: fx.path}); err == nil {
		t.Error("exported the broadcast shelf")
	}
	if err := fx.t.Add(Export{Shelf: 3, Slot: 0, Path: filepath.Join(fx.dir, "missing")}); err == nil {
		t.Error("exported a missing file")
	}
}

// FuzzHandle feeds arbitrary frames to a target: no panic, every reply is
// a well-formed AoE response, and the volume changes only for a valid
// WRITE.
func FuzzHandle(f *testing.F) {
	f.Add(frame(f, initA, ata(1, 0, wire.CmdWriteSectorsExt, 3, 1, bytes.Repeat([]byte{7}, 512))))
	f.Add(frame(f, initA, ata(1, 0, wire.CmdReadSectorsExt, 0, 2, nil)))
	f.Add(frame(f, initA, cfgReq(0xffff, 0xff, aoe.ConfigCommandSet, "x")))
	f.Add(frame(f, initA, rr(aoe.ReserveReleaseCommandSet, initA)))
	dir := f.TempDir()
	path := filepath.Join(dir, "d.img")
	if err := os.WriteFile(path, make([]byte, 64<<10), 0o600); err != nil {
		f.Fatal(err)
	}
	tg := NewTarget(TargetConfig{})
	if err := tg.Add(Export{Shelf: 1, Slot: 0, Path: path}); err != nil {
		f.Fatal(err)
	}
	h := tg.NewHandler(tgtMAC, 1500)
	f.Fuzz(func(t *testing.T, b []byte) {
		before := sum(t, path)
		r := &replies{}
		h.Handle(b, r)
		for _, rep := range r.frames {
			if len(rep) < 60 || rep[14]>>4 != 1 || rep[14]&wire.FlagResponse == 0 || !bytes.Equal(rep[12:14], []byte{0x88, 0xa2}) {
				t.Fatalf("bad reply %x", rep)
			}
		}
		if sum(t, path) == before {
			return
		}
		fr := wire.Frame(b)
		okWrite := fr.Check() == nil && fr.Command() == aoe.CommandIssueATACommand && !fr.Response() &&
			(fr.CmdStatus() == wire.CmdWriteSectors || fr.CmdStatus() == wire.CmdWriteSectorsExt ||
				fr.CmdStatus() == wire.CmdWriteDMA || fr.CmdStatus() == wire.CmdWriteDMAExt) &&
			fr.Count() > 0 && int(fr.Count()) <= 2 && len(fr.Data()) >= int(fr.Count())*512 && fr.Shelf() == 1 && fr.Slot() == 0
		if !okWrite {
			t.Fatalf("volume changed by a frame that is not a valid write: %x", b)
		}
	})
}

// TestSyncExport: a sync volume's file is open with O_DSYNC (as the kernel
// reports it in fdinfo), a plain one without; and the pool carries the
// option to the export.
func TestSyncExport(t *testing.T) {
	dir := t.TempDir()
	pool, err := OpenPool(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Create("durable", 1<<20, VolumeOptions{Addr: "e3.0", Sync: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Create("fast", 1<<20, VolumeOptions{Addr: "e3.1"}); err != nil {
		t.Fatal(err)
	}
	exports, err := pool.Exports()
	if err != nil {
		t.Fatal(err)
	}
	tg := NewTarget(TargetConfig{})
	defer tg.Close()
	for _, e := range exports {
		if err := tg.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range tg.tab.Load().list {
		b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", v.f.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		var flags int64
		for _, line := range strings.Split(string(b), "\n") {
			if f, ok := strings.CutPrefix(line, "flags:"); ok {
				flags, _ = strconv.ParseInt(strings.TrimSpace(f), 8, 64)
			}
		}
		dsync := flags&syscall.O_DSYNC != 0
		if dsync != (v.Slot == 0) {
			t.Errorf("%s: O_DSYNC %v (fdinfo flags %o)", v.Addr(), dsync, flags)
		}
	}
}

// TestWriteFaultNoSpace fills a sparse volume on a 64 KiB tmpfs: writes
// fail (ENOSPC) once tmpfs has no page left. Each such write must get an
// ATA error, not crash the target, and what was written before must read
// back.
func TestWriteFaultNoSpace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	path := filepath.Join(dir, "vol.img")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 1<<20); err != nil {
		t.Fatal(err)
	}
	tg := NewTarget(TargetConfig{})
	t.Cleanup(func() { tg.Close() })
	if err := tg.Add(Export{Shelf: 1, Slot: 0, Path: path}); err != nil {
		t.Fatal(err)
	}
	fx := &fixture{t: tg, h: tg.NewHandler(tgtMAC, 9000)}
	pattern := bytes.Repeat([]byte{0x5a}, 16*512)
	ok, failed := 0, 0
	for lba := uint64(0); lba < 2048; lba += 16 {
		_, a := fx.one(t, initA, ata(1, 0, wire.CmdWriteSectorsExt, lba, 16, pattern))
		switch {
		case a.CmdStatus == wire.StatusDRDY:
			if failed > 0 {
				t.Fatalf("write at LBA %d succeeded after the filesystem was full", lba)
			}
			ok++
		case a.CmdStatus&wire.StatusERR != 0 && a.ErrFeature == wire.ErrABRT:
			failed++
		default:
			t.Fatalf("write at LBA %d: status %#x error %#x", lba, a.CmdStatus, a.ErrFeature)
		}
	}
	t.Logf("%d writes succeeded, %d failed with ABRT", ok, failed)
	if ok == 0 || failed == 0 {
		t.Fatalf("%d writes succeeded and %d failed; want both", ok, failed)
	}
	if s := tg.Stats(); s.ATAErrors != uint64(failed) {
		t.Errorf("ATA errors counted %d, want %d", s.ATAErrors, failed)
	}
	_, a := fx.one(t, initA, ata(1, 0, wire.CmdReadSectorsExt, 0, 16, nil))
	if !bytes.Equal(a.Data, pattern) {
		t.Error("data written before the filesystem filled up does not read back")
	}
}
