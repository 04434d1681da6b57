package storagenode

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// TestWritesReadBack: writes of every shape the wire brings (a
// sequential run of 8.5 KiB frames, 1 KiB frames, random 4 KiB writes,
// overwrites across them) read back with readAt and from the file, and a
// read past the end fails; through os.File and through raw system calls
// (a queue's Handler.raw), each checked by the other.
func TestWritesReadBack(t *testing.T) {
	for _, raw := range []bool{false, true} {
		t.Run(map[bool]string{false: "file", true: "raw"}[raw], func(t *testing.T) { testWritesReadBack(t, raw) })
	}
}

func testWritesReadBack(t *testing.T, raw bool) {
	const size = 1 << 20
	path := filepath.Join(t.TempDir(), "v.img")
	if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	v := &volume{f: f, fd: int(f.Fd())}
	want := make([]byte, size)
	r := rand.New(rand.NewPCG(1, 2))
	write := func(off, n int) {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if err := v.writeAt(b, int64(off), raw); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], b)
	}
	for off := 0; off+8704 <= 256<<10; off += 8704 {
		write(off, 8704)
	}
	for off := 300 << 10; off < 320<<10; off += 1024 {
		write(off, 1024)
	}
	for range 200 {
		write(r.IntN(size/4096)*4096, 4096)
	}
	for off := 100 << 10; off+8704 <= 600<<10; off += 8704 {
		write(off, 8704)
	}
	got := make([]byte, size)
	// Read back the other way than written.
	if err := v.readAt(got, 0, !raw); err != nil || !bytes.Equal(got, want) {
		t.Errorf("readAt differs from what was written (%v)", err)
	}
	if err := v.readAt(got, 0, raw); err != nil || !bytes.Equal(got, want) {
		t.Errorf("readAt differs from what was written (%v)", err)
	}
	if err := v.readAt(got[:512], size-256, raw); err == nil {
		t.Error("a read past the end succeeded")
	}
	disk, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(disk, want) {
		t.Errorf("the file differs from what was written (%v)", err)
	}
	v.close()
}
