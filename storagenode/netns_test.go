package storagenode

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fabric-project/fabric/aoe/initiator"
	"github.com/fabric-project/fabric/aoe/rawsock"
	"github.com/fabric-project/fabric/aoe/wire"
	"github.com/fabric-project/fabric/internal/aoeload"
	"github.com/fabric-project/fabric/internal/netns"
	"github.com/mdlayher/aoe"
)

// aoeLab is a storage namespace and an initiator namespace joined by veth.
type aoeLab struct {
	sto, ini *netns.NS
}

func newAoELab(t *testing.T, mtu int) *aoeLab {
	t.Helper()
	netns.Skip(t)
	l := &aoeLab{sto: netns.New(t, "fsto"), ini: netns.New(t, "fini")}
	netns.Veth(t, l.sto, "sto0", "", l.ini, "ini0", "")
	l.sto.Must(t, "ip", "link", "set", "sto0", "mtu", strconv.Itoa(mtu))
	l.ini.Must(t, "ip", "link", "set", "ini0", "mtu", strconv.Itoa(mtu))
	return l
}

// serve runs a target on sto0 until the returned stop is called (also at
// cleanup).
func (l *aoeLab) serve(t *testing.T, tg *Target) (stop func()) {
	t.Helper()
	var p *Port
	if err := l.sto.Do(func() (err error) { p, err = Listen("sto0", 2); return err }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tg.Serve(ctx, p) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("target: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

// serveOne serves a pool with one 4 MiB volume at e1.0 on sto0.
func (l *aoeLab) serveOne(t *testing.T) {
	t.Helper()
	pool, err := OpenPool(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Create("v", 4<<20, VolumeOptions{Addr: "1.0"}); err != nil {
		t.Fatal(err)
	}
	tg := NewTarget(TargetConfig{Configs: pool})
	t.Cleanup(func() { tg.Close() })
	if err := reconcile(tg, pool, nil, nil); err != nil {
		t.Fatal(err)
	}
	l.serve(t, tg)
}

// rawIni opens a raw AoE socket on ini0, closed at cleanup.
func (l *aoeLab) rawIni(t *testing.T) *rawsock.Conn {
	t.Helper()
	var c *rawsock.Conn
	if err := l.ini.Do(func() error {
		ifi, err := net.InterfaceByName("ini0")
		if err != nil {
			return err
		}
		c, err = rawsock.Listen(ifi, wire.EtherType, rawsock.Config{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (l *aoeLab) initiator(t *testing.T, cfg initiator.Config) *initiator.Initiator {
	t.Helper()
	var in *initiator.Initiator
	if err := l.ini.Do(func() (err error) { in, err = initiator.New("ini0", cfg); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	return in
}

// TestInitiatorOneFrame: the initiator's one-frame-per-call mode (what
// `fabric aoe bench --one-frame` uses) writes and reads back a volume
// through many frames in flight.
func TestInitiatorOneFrame(t *testing.T) {
	l := newAoELab(t, 1500)
	l.serveOne(t)
	in := l.initiator(t, initiator.Config{Window: 16, OneFrame: true})
	d, err := in.Open(context.Background(), 1, 0, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 2<<20)
	rand.Read(data)
	if _, err := d.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("read back differs")
	}
}

func TestInitiatorAgainstTarget(t *testing.T) {
	for _, mtu := range []int{1500, 9000} {
		t.Run(fmt.Sprint("mtu", mtu), func(t *testing.T) {
			l := newAoELab(t, mtu)
			pool, err := OpenPool(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := pool.Create("root1", 8<<20, VolumeOptions{Addr: "1.0"}); err != nil {
				t.Fatal(err)
			}
			if _, err := pool.Create("data", 4<<20, VolumeOptions{Addr: "1.1"}); err != nil {
				t.Fatal(err)
			}
			start := func() func() {
				tg := NewTarget(TargetConfig{Configs: pool})
				t.Cleanup(func() { tg.Close() })
				if err := reconcile(tg, pool, nil, nil); err != nil {
					t.Fatal(err)
				}
				return l.serve(t, tg)
			}
			stop := start()
			in := l.initiator(t, initiator.Config{Window: 16})
			ctx := context.Background()
			ts, err := in.Discover(ctx, wire.BroadcastShelf, wire.BroadcastSlot, 300*time.Millisecond)
			if err != nil || len(ts) != 2 || ts[0].Addr() != "e1.0" || ts[1].Addr() != "e1.1" {
				t.Fatalf("discover: %+v %v", ts, err)
			}
			if want := wire.MaxSectors(mtu); ts[0].MaxSectors != want || ts[0].BufCount != 64 {
				t.Errorf("advertised %d sectors, bufcnt %d; want %d, 64", ts[0].MaxSectors, ts[0].BufCount, want)
			}
			d, err := in.Open(ctx, 1, 0, 200*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			if d.Size() != 8<<20 {
				t.Fatalf("size %d", d.Size())
			}
			data := make([]byte, 1<<20+4096)
			rand.Read(data)
			if _, err := d.WriteAt(data, 3*512); err != nil {
				t.Fatal(err)
			}
			if err := d.Flush(); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(data))
			if _, err := d.ReadAt(got, 3*512); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("read back differs")
			}
			if _, err := d.ReadAt(got[:1024], d.Size()-512); err == nil {
				t.Error("read past the end succeeded")
			}
			// Submit, the asynchronous path: each completion starts the
			// next frame from the initiator's receive goroutine.
			frame := d.MaxSectors * wire.SectorSize
			if err := d.Submit(false, make([]byte, frame+wire.SectorSize), 0, func(error) {}); err == nil {
				t.Error("Submit of more than one frame succeeded")
			}
			chunks := len(data) / frame
			async := make([]byte, chunks*frame)
			var next atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, chunks+4)
			var issue func()
			issue = func() {
				i := int(next.Add(1) - 1)
				if i >= chunks {
					wg.Done()
					return
				}
				err := d.Submit(false, async[i*frame:(i+1)*frame], int64(3*512+i*frame), func(err error) {
					if err != nil {
						errs <- err
					}
					issue()
				})
				if err != nil {
					errs <- err
					wg.Done()
				}
			}
			for range 4 {
				wg.Add(1)
				issue()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Errorf("Submit: %v", err)
			}
			if !bytes.Equal(async, data[:len(async)]) {
				t.Error("data read with Submit differs")
			}
			// Config string set over the wire, kept across a restart.
			if _, err := in.Control(ctx, ts[0].MAC, &aoe.Header{Major: 1, Minor: 0, Command: aoe.CommandQueryConfigInformation,
				Arg: &aoe.ConfigArg{Command: aoe.ConfigCommandSet, StringLength: 3, String: []byte("hn1")}}); err != nil {
				t.Fatal(err)
			}
			d.Close()
			stop()
			start()
			d, err = in.Open(ctx, 1, 0, 200*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			clear(got)
			if _, err := d.ReadAt(got, 3*512); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("after restart: equal=%v err=%v", bytes.Equal(got, data), err)
			}
			ts, _ = in.Discover(ctx, 1, 0, 200*time.Millisecond)
			if len(ts) != 1 || ts[0].Config != "hn1" {
				t.Fatalf("config after restart: %+v", ts)
			}
		})
	}
}

// TestHostileFrames sends malformed frames over the wire: the target
// survives, counts them and keeps the data.
func TestHostileFrames(t *testing.T) {
	l := newAoELab(t, 1500)
	dir := t.TempDir()
	path := filepath.Join(dir, "d.img")
	if err := os.WriteFile(path, bytes.Repeat([]byte{0x5a}, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	tg := NewTarget(TargetConfig{})
	defer tg.Close()
	if err := tg.Add(Export{Shelf: 1, Slot: 0, Path: path}); err != nil {
		t.Fatal(err)
	}
	l.serve(t, tg)
	c := l.rawIni(t)
	src := c.Interface().HardwareAddr
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	w := make([]byte, wire.ATALen+1024)
	wire.PutHeader(w, bcast, src, 0, 0, 1, 0, aoe.CommandIssueATACommand, 7)
	wire.PutATA(w, wire.AFlagExtended|wire.AFlagWrite, 0, 2, wire.CmdWriteSectorsExt, 0)
	hostile := map[string][]byte{
		"truncated":     w[:30],
		"version 3":     append([]byte(nil), w...),
		"huge count":    append([]byte(nil), w...),
		"foreign shelf": append([]byte(nil), w...),
		"bad command":   append([]byte(nil), w...),
	}
	hostile["version 3"][14] = 0x30
	hostile["huge count"][26] = 250
	hostile["foreign shelf"][17] = 42
	hostile["bad command"][19] = 0x7f
	for i := 0; i < 100; i++ {
		for name, f := range hostile {
			if err := c.WriteFrame(f); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for tg.Stats().RxFrames < 500 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	s := tg.Stats()
	if s.RxFrames < 500 || s.Malformed < 200 || s.Ignored < 100 || s.WrittenBytes != 0 {
		t.Fatalf("stats after 500 hostile frames: %+v", s)
	}
	b, _ := os.ReadFile(path)
	if !bytes.Equal(b, bytes.Repeat([]byte{0x5a}, 1<<20)) {
		t.Fatal("hostile frames changed the volume")
	}
	t.Logf("stats: %+v", s)
}

// TestInitiatorAgainstVblade proves the initiator against a peer: Debian's
// vblade.
// TestReadFaultFallsBack truncates a volume file behind the target's back:
// a read beyond the new end comes short. The target must answer that
// frame with an ATA error, not drop it or stop serving.
func TestReadFaultFallsBack(t *testing.T) {
	l := newAoELab(t, 9000)
	path := filepath.Join(t.TempDir(), "vol.img")
	data := bytes.Repeat([]byte{0xa5}, 1<<20)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	tg := NewTarget(TargetConfig{})
	t.Cleanup(func() { tg.Close() })
	if err := tg.Add(Export{Shelf: 1, Slot: 0, Path: path}); err != nil {
		t.Fatal(err)
	}
	l.serve(t, tg)
	in := l.initiator(t, initiator.Config{Window: 4, Timeout: 100 * time.Millisecond, Retries: 3})
	d, err := in.Open(context.Background(), 1, 0, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 512<<10); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	_, err = d.ReadAt(buf, 768<<10)
	if err == nil || errors.Is(err, initiator.ErrTimeout) || !strings.Contains(err.Error(), "ATA error") {
		t.Fatalf("read past the truncated end: %v; want an ATA error", err)
	}
	if s := tg.Stats(); s.ATAErrors == 0 {
		t.Errorf("ATA error not counted: %+v", s)
	}
	if _, err := d.ReadAt(buf, 4096); err != nil || !bytes.Equal(buf, data[:4096]) {
		t.Fatalf("read inside the file after the fault: %v", err)
	}
}

func TestInitiatorAgainstVblade(t *testing.T) {
	vblade, err := exec.LookPath("vblade")
	if err != nil {
		t.Skip("vblade not installed (scripts/deps.sh installs it)")
	}
	l := newAoELab(t, 9000)
	path := filepath.Join(t.TempDir(), "v.img")
	if err := os.WriteFile(path, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := l.sto.Cmd(vblade, "3", "2", "sto0", path)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	in := l.initiator(t, initiator.Config{Window: 16})
	var d *initiator.Device
	for i := 0; i < 20 && d == nil; i++ {
		d, err = in.Open(context.Background(), 3, 2, 200*time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if d.Size() != 4<<20 || d.MaxSectors != 17 {
		t.Fatalf("vblade volume: size %d, %d sectors per frame", d.Size(), d.MaxSectors)
	}
	data := make([]byte, 512<<10)
	rand.Read(data)
	if _, err := d.WriteAt(data, 1<<20); err != nil {
		t.Fatal("write:", err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal("flush:", err)
	}
	got := make([]byte, len(data))
	if _, err := d.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back from vblade: equal=%v err=%v", bytes.Equal(got, data), err)
	}
	onDisk, _ := os.ReadFile(path)
	if !bytes.Equal(onDisk[1<<20:1<<20+len(data)], data) {
		t.Fatal("vblade's file does not hold what we wrote")
	}
}

// twoTargets is one initiator namespace with a bridge and two storage
// namespaces on it, each able to run its own target: two paths.
type twoTargets struct {
	ini  *netns.NS
	stos [2]*netns.NS
}

func newTwoTargets(t *testing.T) *twoTargets {
	t.Helper()
	netns.Skip(t)
	l := &twoTargets{ini: netns.New(t, "fini")}
	l.ini.Must(t, "ip", "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
	l.ini.Must(t, "ip", "link", "set", "br0", "up")
	for i := range l.stos {
		l.stos[i] = netns.New(t, "fsto")
		port := fmt.Sprintf("s%d", i)
		netns.Veth(t, l.stos[i], "sto0", "", l.ini, port, "")
		l.ini.Must(t, "ip", "link", "set", port, "master", "br0")
	}
	return l
}

// serve runs tg on storage namespace i until stop is called.
func (l *twoTargets) serve(t *testing.T, i int, tg *Target) (stop func()) {
	t.Helper()
	var p *Port
	if err := l.stos[i].Do(func() (err error) { p, err = Listen("sto0", 1); return err }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = tg.Serve(ctx, p) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func volumeFile(t *testing.T, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vol.img")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestTwoTargetsDisagree: two targets answering one address with different
// IDENTIFY data are refused, naming both MACs, instead of being used as
// two paths (which would mix two disks).
func TestTwoTargetsDisagree(t *testing.T) {
	l := newTwoTargets(t)
	for i, size := range []int64{8 << 20, 4 << 20} {
		tg := NewTarget(TargetConfig{})
		if err := tg.Add(Export{Shelf: 5, Slot: 0, Path: volumeFile(t, size), Name: "disk"}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tg.Close() })
		l.serve(t, i, tg)
	}
	var in *initiator.Initiator
	if err := l.ini.Do(func() (err error) { in, err = initiator.New("br0", initiator.Config{}); return err }); err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	_, err := in.Open(context.Background(), 5, 0, 500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "targets disagree") || !strings.Contains(err.Error(), "16384 sectors") || !strings.Contains(err.Error(), "8192 sectors") {
		t.Fatalf("two different disks at e5.0: %v", err)
	}
	t.Logf("refused: %v", err)
}

// TestPathDownAndBack: one of two paths to a volume (two targets serving
// one file) stops answering; the initiator stops using it within 2 s and
// I/O goes on through the other; when it answers again it is used again.
func TestPathDownAndBack(t *testing.T) {
	l := newTwoTargets(t)
	file := volumeFile(t, 16<<20)
	var tgs [2]*Target
	var stops [2]func()
	for i := range tgs {
		tgs[i] = NewTarget(TargetConfig{})
		if err := tgs[i].Add(Export{Shelf: 5, Slot: 1, Path: file, Name: "shared"}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tgs[i].Close() })
		stops[i] = l.serve(t, i, tgs[i])
	}
	var in *initiator.Initiator
	if err := l.ini.Do(func() (err error) {
		in, err = initiator.New("br0", initiator.Config{Timeout: 100 * time.Millisecond, MaxTimeout: 200 * time.Millisecond, Retries: 40})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	d, err := in.Open(context.Background(), 5, 1, 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if len(d.Paths) != 2 {
		t.Fatalf("%d paths, want 2", len(d.Paths))
	}
	buf := make([]byte, 4096)
	// io runs 4 KiB reads until stop and returns the slowest.
	io := func(stop <-chan struct{}) (slowest time.Duration, n int, err error) {
		for {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			if _, err = d.ReadAt(buf, int64(n%4096)*4096); err != nil {
				return
			}
			slowest = max(slowest, time.Since(start))
			n++
		}
	}
	run := func(during time.Duration) (time.Duration, int) {
		stop := make(chan struct{})
		time.AfterFunc(during, func() { close(stop) })
		slow, n, err := io(stop)
		if err != nil {
			t.Fatal(err)
		}
		return slow, n
	}
	slow, n := run(500 * time.Millisecond)
	t.Logf("both paths: %d reads in 0.5 s, slowest %v", n, slow)

	dead, err := net.ParseMAC(strings.TrimSpace(l.stos[1].Must(t, "cat", "/sys/class/net/sto0/address")))
	if err != nil {
		t.Fatal(err)
	}
	stops[1]()
	start := time.Now()
	var down atomic.Int64
	go func() {
		for time.Since(start) < 3*time.Second {
			if len(d.PathsUp()) == 1 {
				down.Store(int64(time.Since(start)))
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	slow, n = run(2500 * time.Millisecond)
	downAt := time.Duration(down.Load())
	if up := d.PathsUp(); len(up) != 1 || up[0].String() == dead.String() {
		t.Fatalf("2.5 s after %s stopped answering, paths in use: %v", dead, up)
	}
	// After the path is down, I/O runs at full speed on the other.
	slow2, n2 := run(time.Second)
	t.Logf("path %s stopped: marked down after %v; %d reads in 2.5 s (slowest %v), then %d in 1 s (slowest %v)", dead, downAt.Round(time.Millisecond), n, slow, n2, slow2)
	if downAt == 0 || downAt > 2*time.Second {
		t.Errorf("the dead path was dropped after %v (bar: 2 s)", downAt)
	}
	if slow2 > 50*time.Millisecond {
		t.Errorf("with the dead path dropped, a read still took %v", slow2)
	}

	stops[1] = l.serve(t, 1, tgs[1])
	if err := waitUntil(3*time.Second, func() bool { run(100 * time.Millisecond); return len(d.PathsUp()) == 2 }); err != nil {
		t.Fatalf("the path did not come back: paths in use %v", d.PathsUp())
	}
	t.Logf("%s answers again: both paths in use (%d path changes)", dead, d.PathChanges.Load())
}

func waitUntil(d time.Duration, cond func() bool) error {
	for end := time.Now().Add(d); time.Now().Before(end); {
		if cond() {
			return nil
		}
	}
	return fmt.Errorf("timed out after %v", d)
}

// TestVolumeLimits: a volume's IOPS and bandwidth limits hold at the
// target, change live, and keep a flat-out neighbour from starving
// another volume.
func TestVolumeLimits(t *testing.T) {
	l := newAoELab(t, 9000)
	tg := NewTarget(TargetConfig{})
	t.Cleanup(func() { tg.Close() })
	for slot := uint8(0); slot < 2; slot++ {
		e := Export{Shelf: 6, Slot: slot, Path: volumeFile(t, 64<<20)}
		if slot == 0 {
			e.Limit = Limit{IOPS: 300}
		}
		if err := tg.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	l.serve(t, tg)
	in := l.initiator(t, initiator.Config{Window: 64, Timeout: 300 * time.Millisecond})
	var devs [2]*initiator.Device
	for slot := range devs {
		d, err := in.Open(context.Background(), 6, uint8(slot), 300*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		devs[slot] = d
	}
	// rate reads flat out with workers reading bs each (aoeload.Rate); it
	// returns ops/s and bytes/s.
	rate := func(d *initiator.Device, workers, bs int, dur time.Duration) (float64, float64) {
		t.Helper()
		ops, err := aoeload.Rate(d, workers, bs, 1000, dur)
		if err != nil {
			t.Error(err)
		}
		return ops, ops * float64(bs)
	}
	median := func(d *initiator.Device, n int) time.Duration {
		m, err := aoeload.MedianLatency(d, n, 4096)
		if err != nil {
			t.Error(err)
		}
		return m
	}
	within := func(what string, got, want float64) {
		t.Helper()
		if got < want*0.8 || got > want*1.2 {
			t.Errorf("%s: %.0f, want %.0f ± 20%%", what, got, want)
		} else {
			t.Logf("%s: %.0f (limit %.0f)", what, got, want)
		}
	}

	idle := median(devs[1], 300)
	var busy time.Duration
	done := make(chan struct{})
	go func() { defer close(done); time.Sleep(300 * time.Millisecond); busy = median(devs[1], 300) }()
	iops, _ := rate(devs[0], 8, 4096, 2*time.Second)
	<-done
	within("e6.0 limited to 300 IOPS, read flat out by 8 workers: IOPS", iops, 300)
	t.Logf("e6.1 (no limit) median read latency: idle %v, while e6.0 runs flat out %v", idle, busy)
	if busy > 2*idle+100*time.Microsecond {
		t.Errorf("the neighbour's latency went from %v to %v (bar: within 2x)", idle, busy)
	}
	unl, _ := rate(devs[1], 8, 4096, time.Second)
	t.Logf("e6.1 with no limit: %.0f IOPS", unl)

	// Live changes take effect at once.
	tg.SetLimit(6, 0, Limit{IOPS: 1000})
	iops, _ = rate(devs[0], 8, 4096, time.Second)
	within("after raising the limit to 1000 IOPS, live: IOPS", iops, 1000)
	tg.SetLimit(6, 0, Limit{BytesPerSecond: 4 << 20})
	_, bps := rate(devs[0], 4, 64<<10, 2*time.Second)
	within("limited to 4 MiB/s instead, 64 KiB reads: bytes/s", bps, 4<<20)
	tg.SetLimit(6, 0, Limit{})
	iops, _ = rate(devs[0], 8, 4096, time.Second)
	if iops < 2000 {
		t.Errorf("with the limit removed e6.0 runs at %.0f IOPS", iops)
	}
	t.Logf("limit removed: %.0f IOPS", iops)
}

// TestMTUChangeFollowed: a target started at MTU 1500 follows the link to
// 9000 without a restart: it announces every volume again with the new
// sector count (the Linux aoe driver sizes its requests from that count),
// advertises it on Query Config, and serves jumbo frames.
func TestMTUChangeFollowed(t *testing.T) {
	// Restored by the first cleanup, which runs last: after the target's
	// goroutines that read it have ended (a defer would run before them).
	old := mtuPoll
	t.Cleanup(func() { mtuPoll = old })
	mtuPoll = 50 * time.Millisecond
	l := newAoELab(t, 1500)
	l.serveOne(t)
	in := l.initiator(t, initiator.Config{Window: 16})
	ctx := context.Background()
	ts, err := in.Discover(ctx, 1, 0, 300*time.Millisecond)
	if err != nil || len(ts) != 1 || ts[0].MaxSectors != wire.MaxSectors(1500) {
		t.Fatalf("discover at 1500: %+v %v", ts, err)
	}

	// Watch ini0 for the target's unsolicited announcement.
	raw := l.rawIni(t)
	announced := make(chan int, 16)
	go func() {
		b := rawsock.NewBatch(8, 9100)
		for {
			n, err := raw.ReadBatch(b)
			if err != nil {
				close(announced)
				return
			}
			for i := 0; i < n; i++ {
				var h aoe.Header
				if h.UnmarshalBinary(b.Bufs[i][wire.EthLen:b.Lens[i]]) != nil || !h.FlagResponse {
					continue
				}
				if a, ok := h.Arg.(*aoe.ConfigArg); ok {
					announced <- int(a.SectorCount)
				}
			}
		}
	}()

	l.sto.Must(t, "ip", "link", "set", "sto0", "mtu", "9000")
	l.ini.Must(t, "ip", "link", "set", "ini0", "mtu", "9000")
	want := wire.MaxSectors(9000)
	deadline := time.After(5 * time.Second)
	for got := 0; got != want; {
		select {
		case got = <-announced:
		case <-deadline:
			t.Fatalf("no announcement of %d sectors within 5 s of the MTU change", want)
		}
	}
	ts, err = in.Discover(ctx, 1, 0, 300*time.Millisecond)
	if err != nil || len(ts) != 1 || ts[0].MaxSectors != want {
		t.Fatalf("discover at 9000: %+v %v", ts, err)
	}
	d, err := in.Open(ctx, 1, 0, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.MaxSectors != want {
		t.Fatalf("opened with %d sectors per frame, want %d", d.MaxSectors, want)
	}
	data := make([]byte, 1<<20)
	rand.Read(data)
	if _, err := d.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := d.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("jumbo frames after the change: equal=%v err=%v", bytes.Equal(got, data), err)
	}
}

// TestQueuesKeepInitiatorOrder: with two queues, every frame from one
// initiator is handled by one queue, so in the order sent. Spread frame
// by frame, a write's retransmitted copy could wait on one queue while
// the write after it ran on the other, then put back the older data.
func TestQueuesKeepInitiatorOrder(t *testing.T) {
	l := newAoELab(t, 1500)
	path := filepath.Join(t.TempDir(), "d.img")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	tg := NewTarget(TargetConfig{})
	t.Cleanup(func() { tg.Close() })
	if err := tg.Add(Export{Shelf: 1, Slot: 0, Path: path}); err != nil {
		t.Fatal(err)
	}
	l.serve(t, tg) // two queues
	c := l.rawIni(t)
	rx := func() []uint64 {
		tg.qmu.Lock()
		defer tg.qmu.Unlock()
		var n []uint64
		for _, q := range tg.queues {
			n = append(n, q.rx.Load())
		}
		return n
	}
	for start := time.Now(); len(rx()) < 2; time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("%d queues serving after 5 s, want 2", len(rx()))
		}
	}
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	const frames = 60
	var total uint64
	// Initiators whose addresses differ in every byte, or in the last.
	for _, src := range []string{"02:00:00:00:00:10", "02:00:00:00:00:11", "0e:1f:2a:3b:4c:5d", c.Interface().HardwareAddr.String()} {
		mac, _ := net.ParseMAC(src)
		before := rx()
		for i := 0; i < frames; i++ {
			f := make([]byte, wire.ATALen)
			wire.PutHeader(f, bcast, mac, 0, 0, 1, 0, aoe.CommandIssueATACommand, uint32(i+1))
			wire.PutATA(f, wire.AFlagExtended, 0, 1, wire.CmdReadSectorsExt, uint64(i))
			if err := c.WriteFrame(f); err != nil {
				t.Fatal(err)
			}
		}
		total += frames
		deadline := time.Now().Add(5 * time.Second)
		var now []uint64
		for {
			now = rx()
			if now[0]+now[1] >= total || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		d0, d1 := now[0]-before[0], now[1]-before[1]
		if d0+d1 != frames || (d0 != 0 && d1 != 0) {
			t.Errorf("%s: %d frames to queue 0, %d to queue 1; want all %d to one queue", src, d0, d1, frames)
		}
	}
	// Senders still spread over the queues: the first two addresses
	// differ in the lowest bit, which rawsock's program keeps.
	if n := rx(); n[0] == 0 || n[1] == 0 {
		t.Errorf("frames per queue %v: every sender on one queue", n)
	}
}
