package main

import (
	"bytes"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestProgress: the bar redraws at most every interval and once at the
// end, with percentage, MiB and rate, and stays silent off a terminal.
func TestProgress(t *testing.T) {
	const total = 8 << 20
	var out bytes.Buffer
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	clock := t0
	p := &progress{r: bytes.NewReader(make([]byte, total)), w: &out, label: "importing tiny", total: total,
		now: func() time.Time { return clock }, interval: 200 * time.Millisecond, start: t0, last: t0}
	buf := make([]byte, 1<<20)
	for i := 0; ; i++ {
		clock = t0.Add(time.Duration(i+1) * 100 * time.Millisecond) // 1 MiB each 100 ms
		if _, err := p.Read(buf); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	p.finish("")
	lines := strings.Split(out.String(), "\r")[1:]
	// Drawn at 200, 400, 600 ms and at the last byte (800 ms).
	if len(lines) != 4 {
		t.Fatalf("drew %d times, want 4: %q", len(lines), out.String())
	}
	for i, want := range []string{"[#######.......................]  25%  2 of 8 MiB  10 MB/s", "[##############################] 100%  8 of 8 MiB  10 MB/s \n"} {
		got := lines[[]int{0, 3}[i]]
		if !strings.HasPrefix(got, "importing tiny ") || !strings.Contains(got, want) {
			t.Errorf("line %q lacks %q", got, want)
		}
	}

	// Not a terminal: nothing drawn, and the bytes still all pass.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for _, to := range []io.Writer{&out, w} {
		if isTerminal(to) {
			t.Errorf("%T counted as a terminal", to)
		}
	}
	q := newProgress(bytes.NewReader(make([]byte, 3000)), w, "x", 3000)
	if n, err := io.Copy(io.Discard, q); n != 3000 || err != nil || q.drawn {
		t.Errorf("off a terminal: copied %d, %v, drawn %v", n, err, q.drawn)
	}
}

// TestWaiting: the wait line counts up while the command waits and is
// cleared when it ends; off a terminal there is none.
func TestWaiting(t *testing.T) {
	var b syncBuffer
	done := startWaiting(&b, "migrating web", 10*time.Millisecond)
	time.Sleep(80 * time.Millisecond)
	done()
	out := b.String()
	if n := strings.Count(out, "\rmigrating web ... "); n < 3 || !strings.HasSuffix(out, "\r\033[K") {
		t.Errorf("wait line drawn %d times, output %q", n, out)
	}
	var quiet bytes.Buffer
	waiting(&quiet, "x")()
	if quiet.Len() != 0 {
		t.Errorf("off a terminal: %q", quiet.String())
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
