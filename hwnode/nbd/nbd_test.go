package nbd

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// memBackend is an in-memory block device.
type memBackend struct {
	mu      sync.Mutex
	b       []byte
	flushes int
}

func (m *memBackend) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(p, m.b[off:]), nil
}

func (m *memBackend) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(m.b[off:], p), nil
}

func (m *memBackend) Flush() error {
	m.mu.Lock()
	m.flushes++
	m.mu.Unlock()
	return nil
}

func (m *memBackend) Size() int64 { return int64(len(m.b)) }

// data returns a copy of the device's bytes.
func (m *memBackend) data() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return bytes.Clone(m.b)
}

func startServer(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// TestQEMUClient drives the server with qemu-io and qemu-img, QEMU's own
// NBD client: the one that talks to it in production.
func TestQEMUClient(t *testing.T) {
	qemuIO, err := exec.LookPath("qemu-io")
	if err != nil {
		t.Skip("qemu-io not installed (scripts/deps.sh installs qemu-utils)")
	}
	be := &memBackend{b: make([]byte, 8<<20)}
	s := NewServer(nil)
	s.Add(&Export{Name: "e1.7", Backend: be})
	s.Add(&Export{Name: "ro", Backend: &memBackend{b: make([]byte, 1<<20)}, ReadOnly: true})
	addr := startServer(t, s)
	url := "nbd://" + addr + "/e1.7"
	run := func(args ...string) (string, error) {
		out, err := exec.Command(qemuIO, append([]string{"-f", "raw"}, args...)...).CombinedOutput()
		return string(out), err
	}
	out, err := run(url, "-c", "write -P 0xab 4096 1M", "-c", "write -P 0xcd 3M 65536", "-c", "flush",
		"-c", "read -P 0xab 4096 1M", "-c", "read -P 0xcd 3M 65536", "-c", "read -P 0 0 4096")
	if err != nil || strings.Contains(out, "fail") || strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	if !bytes.Equal(be.data()[4096:4096+1<<20], bytes.Repeat([]byte{0xab}, 1<<20)) {
		t.Fatal("backend does not hold the written pattern")
	}
	be.mu.Lock()
	flushes := be.flushes
	be.mu.Unlock()
	if flushes == 0 {
		t.Error("qemu-io flush did not reach the backend")
	}
	// A write past the end is refused and changes nothing.
	before := be.data()
	out, err = run(url, "-c", "write -P 0xee 8M 4096")
	if err == nil && !strings.Contains(out, "error") && !strings.Contains(out, "Input/output") && !strings.Contains(out, "out of") {
		t.Errorf("write past the end accepted:\n%s", out)
	}
	// An unaligned write is done by QEMU as read-modify-write of whole
	// blocks: the server only ever sees aligned requests.
	if out, err = run(url, "-c", "write -P 0x11 100 10"); err != nil {
		t.Fatalf("unaligned write: %v\n%s", err, out)
	}
	before[100] = 0x11
	for i := 100; i < 110; i++ {
		before[i] = 0x11
	}
	if !bytes.Equal(before, be.data()) {
		t.Error("unaligned write changed more than its 10 bytes")
	}
	// Read-only export: writes refused.
	out, _ = run("nbd://"+addr+"/ro", "-c", "write -P 0x1 0 4096")
	if !strings.Contains(out, "ermission") && !strings.Contains(out, "read-only") && !strings.Contains(out, "Read-only") {
		t.Errorf("write to read-only export:\n%s", out)
	}
	// Unknown export: a clear error from the client.
	out, err = run("nbd://" + addr + "/nope")
	if err == nil {
		t.Errorf("unknown export opened:\n%s", out)
	}
	// qemu-img sees the size.
	info, err := exec.Command("qemu-img", "info", "--output=json", url).CombinedOutput()
	if err != nil || !strings.Contains(string(info), `"virtual-size": 8388608`) {
		t.Errorf("qemu-img info: %v\n%s", err, info)
	}
}

// TestRemoveClosesClients: removing an export drops its connections.
func TestRemoveClosesClients(t *testing.T) {
	s := NewServer(nil)
	s.Add(&Export{Name: "a", Backend: &memBackend{b: make([]byte, 4096)}})
	c := dialExport(t, s, "a")
	deadline := time.Now().Add(2 * time.Second)
	for s.Clients("a") != 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	s.Remove("a")
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection still open after Remove")
	}
}

// dialExport serves s on loopback and returns a connection in the
// transmission phase on export name.
func dialExport(t *testing.T, s *Server, name string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", startServer(t, s))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	goHandshake(t, c, name)
	return c
}

// goHandshake negotiates export name with NBD_OPT_GO.
func goHandshake(t *testing.T, c net.Conn, name string) {
	t.Helper()
	hello := make([]byte, 18)
	if _, err := io.ReadFull(c, hello); err != nil {
		t.Fatal(err)
	}
	b := binary.BigEndian.AppendUint32(nil, flagFixed|flagNoZeroes)
	data := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	data = append(data, name...)
	data = binary.BigEndian.AppendUint16(data, 0)
	b = binary.BigEndian.AppendUint64(b, magicOpt)
	b = binary.BigEndian.AppendUint32(b, optGo)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	if _, err := c.Write(append(b, data...)); err != nil {
		t.Fatal(err)
	}
	for {
		h := make([]byte, 20)
		if _, err := io.ReadFull(c, h); err != nil {
			t.Fatal(err)
		}
		n := binary.BigEndian.Uint32(h[16:])
		if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
			t.Fatal(err)
		}
		if typ := binary.BigEndian.Uint32(h[12:]); typ == repAck {
			return
		} else if typ&(1<<31) != 0 {
			t.Fatalf("GO refused: %#x", typ)
		}
	}
}

// TestBadRequests: unaligned, out of range and unknown commands get NBD
// errors and leave the data alone; a broken header closes the connection.
func TestBadRequests(t *testing.T) {
	be := &memBackend{b: make([]byte, 64<<10)}
	_, _ = rand.Read(be.b)
	orig := bytes.Clone(be.b)
	s := NewServer(nil)
	s.Add(&Export{Name: "a", Backend: be})
	c := dialExport(t, s, "a")
	req := func(typ uint16, off uint64, n uint32, payload []byte) uint32 {
		b := binary.BigEndian.AppendUint32(nil, magicRequest)
		b = binary.BigEndian.AppendUint16(b, 0)
		b = binary.BigEndian.AppendUint16(b, typ)
		b = binary.BigEndian.AppendUint64(b, 42)
		b = binary.BigEndian.AppendUint64(b, off)
		b = binary.BigEndian.AppendUint32(b, n)
		if _, err := c.Write(append(b, payload...)); err != nil {
			t.Fatal(err)
		}
		h := make([]byte, 16)
		if _, err := io.ReadFull(c, h); err != nil {
			t.Fatal(err)
		}
		if binary.BigEndian.Uint64(h[8:]) != 42 {
			t.Fatal("reply handle mismatch")
		}
		return binary.BigEndian.Uint32(h[4:])
	}
	for _, tc := range []struct {
		name      string
		typ       uint16
		off       uint64
		n         uint32
		wantErrno uint32
	}{
		{"unaligned write", cmdWrite, 100, 512, errInval},
		{"write past end", cmdWrite, 64 << 10, 512, errNoSpc},
		{"write wrapping", cmdWrite, ^uint64(0) - 511, 512, errNoSpc},
		{"read past end", cmdRead, 63 << 10, 4096, errInval},
		{"unknown command", 77, 0, 0, errNotSup},
	} {
		var payload []byte
		if tc.typ == cmdWrite {
			payload = bytes.Repeat([]byte{0xff}, int(tc.n))
		}
		if got := req(tc.typ, tc.off, tc.n, payload); got != tc.wantErrno {
			t.Errorf("%s: errno %d, want %d", tc.name, got, tc.wantErrno)
		}
	}
	if !bytes.Equal(be.data(), orig) {
		t.Fatal("a refused request changed the data")
	}
	// A valid write still works on the same connection.
	if got := req(cmdWrite, 512, 512, bytes.Repeat([]byte{7}, 512)); got != 0 {
		t.Fatalf("valid write: errno %d", got)
	}
	if be.data()[512] != 7 {
		t.Fatal("valid write not applied")
	}
	// Garbage instead of a header ends the connection.
	_, _ = c.Write(bytes.Repeat([]byte{0xde}, RequestSize))
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection survived a garbage header")
	}
}

func FuzzParseRequest(f *testing.F) {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	f.Add(append(b, make([]byte, 24)...))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := ParseRequest(b)
		if err != nil {
			return
		}
		// Re-encode and compare: the decoder reads exactly the header.
		e := binary.BigEndian.AppendUint32(nil, magicRequest)
		e = binary.BigEndian.AppendUint16(e, q.Flags)
		e = binary.BigEndian.AppendUint16(e, q.Type)
		e = binary.BigEndian.AppendUint64(e, q.Handle)
		e = binary.BigEndian.AppendUint64(e, q.Offset)
		e = binary.BigEndian.AppendUint32(e, q.Length)
		if !bytes.Equal(e, b[:RequestSize]) {
			t.Fatalf("round trip %x != %x", e, b[:RequestSize])
		}
		check(q, &Export{Backend: &memBackend{b: make([]byte, 4096)}})
	})
}

func FuzzParseInfoRequest(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 'a', 0, 1, 0, 3})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		name, infos, err := ParseInfoRequest(b)
		if err != nil {
			return
		}
		if 4+len(name)+2+2*len(infos) != len(b) {
			t.Fatalf("parsed %q %v from %d bytes", name, infos, len(b))
		}
	})
}

// FuzzHandshake feeds arbitrary client bytes to a server: it must end the
// session without panicking or hanging, and never write to the export.
func FuzzHandshake(f *testing.F) {
	ok := binary.BigEndian.AppendUint32(nil, flagFixed)
	ok = binary.BigEndian.AppendUint64(ok, magicOpt)
	ok = binary.BigEndian.AppendUint32(ok, optList)
	ok = binary.BigEndian.AppendUint32(ok, 0)
	f.Add(ok)
	f.Add([]byte{0, 0, 0, 3, 0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		be := &memBackend{b: make([]byte, 4096)}
		s := NewServer(nil)
		s.Add(&Export{Name: "a", Backend: be, ReadOnly: true})
		srv, cli := net.Pipe()
		done := make(chan struct{})
		go func() { _ = s.ServeConn(srv); close(done) }()
		go func() { _, _ = io.Copy(io.Discard, cli) }()
		_, _ = cli.Write(in)
		cli.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("server hung")
		}
		if !bytes.Equal(be.data(), make([]byte, 4096)) {
			t.Fatal("read-only export written")
		}
	})
}
