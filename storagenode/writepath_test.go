package storagenode

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestWritePathsAgree: writes that go with pwrite (sequential, a page or
// more) and through the mapping (the rest) land in one file: what each
// wrote reads back through the other and from the file, in any order.
func TestWritePathsAgree(t *testing.T) {
	const size = 1 << 20
	path := filepath.Join(t.TempDir(), "v.img")
	if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	v := &volume{f: f, mem: mem, writable: true}
	defer v.close()
	want := make([]byte, size)
	r := rand.New(rand.NewPCG(1, 2))
	write := func(off, n int) {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if err := v.writeAt(b, int64(off)); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], b)
	}
	// A sequential run of 8.5 KiB frames (pwrite after the first), small
	// sequential frames, random 4 KiB writes, and overwrites across them.
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
	if !bytes.Equal(mem, want) {
		t.Error("the mapping differs from what was written")
	}
	got := make([]byte, size)
	if err := v.readAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Errorf("pread differs from what was written (%v)", err)
	}
	if err := unix.Msync(mem, unix.MS_SYNC); err != nil {
		t.Fatal(err)
	}
	disk, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(disk, want) {
		t.Errorf("the file differs from what was written (%v)", err)
	}
}
