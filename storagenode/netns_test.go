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

func (l *aoeLab) initiator(t *testing.T, cfg initiator.Config) *initiator.Initiator {
	t.Helper()
	var in *initiator.Initiator
	if err := l.ini.Do(func() (err error) { in, err = initiator.New("ini0", cfg); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	return in
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
	defer c.Close()
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
// a read beyond the new end faults inside sendmmsg (EFAULT on the
// mapping). The target must answer that frame with an ATA error through
// its pread fallback, not drop it or stop serving.
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
