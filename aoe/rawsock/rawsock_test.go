package rawsock

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/fabric-project/fabric/internal/netns"
)

const testEtherType = 0x88b5 // IEEE local experimental

// pair opens a socket on each end of a veth pair in two new namespaces;
// nb is b's namespace.
func pair(t *testing.T) (a, b *Conn, nb *netns.NS) {
	t.Helper()
	netns.Skip(t)
	na := netns.New(t, "frsa")
	nb = netns.New(t, "frsb")
	netns.Veth(t, na, "a0", "", nb, "b0", "")
	open := func(ns *netns.NS, name string, cfg Config) *Conn {
		var c *Conn
		if err := ns.Do(func() error {
			ifi, err := net.InterfaceByName(name)
			if err != nil {
				return err
			}
			c, err = Listen(ifi, testEtherType, cfg)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	return open(na, "a0", Config{}), open(nb, "b0", Config{}), nb
}

func frame(dst, src net.HardwareAddr, payload string) []byte {
	f := make([]byte, 0, 64)
	f = append(f, dst...)
	f = append(f, src...)
	f = append(f, testEtherType>>8, testEtherType&0xff)
	f = append(f, payload...)
	for len(f) < 60 {
		f = append(f, 0)
	}
	return f
}

// TestSocket: a socket receives frames in batches, answers through
// WriteBatch and WriteFrame, reports its interface's MTU as it is now, and
// a read blocked when Close comes returns net.ErrClosed, as do reads and
// sends after it.
func TestSocket(t *testing.T) {
	a, b, nb := pair(t)
	am, bm := a.Interface().HardwareAddr, b.Interface().HardwareAddr
	if mtu, err := b.MTU(); err != nil || mtu != b.Interface().MTU {
		t.Fatalf("MTU: %d, %v; want %d", mtu, err, b.Interface().MTU)
	}
	nb.Must(t, "ip", "link", "set", "b0", "mtu", "9000")
	if mtu, err := b.MTU(); err != nil || mtu != 9000 {
		t.Fatalf("MTU after the link went to 9000: %d, %v", mtu, err)
	}
	for i := 0; i < 3; i++ {
		if err := a.WriteFrame(frame(bm, am, "ping")); err != nil {
			t.Fatal(err)
		}
	}
	rx := NewBatch(8, 1514)
	got := 0
	deadline := time.Now().Add(5 * time.Second)
	for got < 3 && time.Now().Before(deadline) {
		n, err := b.ReadBatch(rx)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < n; i++ {
			if !bytes.Contains(rx.Bufs[i][:rx.Lens[i]], []byte("ping")) {
				t.Fatalf("frame %d: % x", i, rx.Bufs[i][:rx.Lens[i]])
			}
		}
		got += n
	}
	if got != 3 {
		t.Fatalf("received %d of 3 frames", got)
	}

	// Replies: a batch, then a single frame.
	tx := NewBatch(2, 1514)
	for i := range 2 {
		tx.Lens[i] = copy(tx.Bufs[i], frame(am, bm, "pong"))
	}
	if err := b.WriteBatch(tx, 2); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteFrame(frame(am, bm, "pong")); err != nil {
		t.Fatal(err)
	}
	got = 0
	for got < 3 {
		n, err := a.ReadBatch(rx)
		if err != nil {
			t.Fatal(err)
		}
		got += n
	}

	// Close while a read waits with nothing to read.
	done := make(chan error, 1)
	go func() {
		_, err := b.ReadBatch(rx)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !IsClosed(err) {
			t.Fatalf("read after Close: %v, want net.ErrClosed", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("the blocked read took %v to see Close", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a read blocked at Close never returned")
	}
	if _, err := b.ReadBatch(rx); !IsClosed(err) {
		t.Errorf("read on a closed socket: %v", err)
	}
	if err := b.WriteFrame(frame(am, bm, "late")); !IsClosed(err) {
		t.Errorf("send on a closed socket: %v", err)
	}
}
