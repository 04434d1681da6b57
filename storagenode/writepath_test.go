package storagenode

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// TestWritePathsAgree: writes of every shape the wire brings (a
// sequential run of 8.5 KiB frames, 1 KiB frames, random 4 KiB writes,
// overwrites across them) read back with readAt and from the file, for a
// volume written with raw pwrite and for one without a RawConn (f's own
// WriteAt, as for O_DSYNC volumes).
func TestWritePathsAgree(t *testing.T) {
	for _, raw := range []bool{true, false} {
		const size = 1 << 20
		path := filepath.Join(t.TempDir(), "v.img")
		if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		v := &volume{f: f}
		if raw {
			v.rc, _ = f.SyscallConn()
		}
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
		if err := v.readAt(got, 0); err != nil || !bytes.Equal(got, want) {
			t.Errorf("raw=%v: readAt differs from what was written (%v)", raw, err)
		}
		if err := v.readAt(got[:512], size-256); err == nil {
			t.Errorf("raw=%v: a read past the end succeeded", raw)
		}
		disk, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(disk, want) {
			t.Errorf("raw=%v: the file differs from what was written (%v)", raw, err)
		}
		v.close()
	}
}
