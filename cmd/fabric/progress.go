package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// progress reports how far a long copy has come on one terminal line,
// redrawn at most every interval: a bar, the percentage, bytes and rate.
// It reads through to r and writes nothing unless enabled.
type progress struct {
	r        io.Reader
	w        io.Writer
	label    string
	total    int64
	done     int64
	start    time.Time
	last     time.Time
	now      func() time.Time
	interval time.Duration
	drawn    bool
}

// newProgress wraps r for a copy of total bytes; it draws on w only when
// w is a terminal.
func newProgress(r io.Reader, w io.Writer, label string, total int64) *progress {
	p := &progress{r: r, label: label, total: total, now: time.Now, interval: 200 * time.Millisecond}
	if isTerminal(w) {
		p.w = w
	}
	p.start = p.now()
	return p
}

// isTerminal reports whether w is a character device (a terminal), not a
// file, pipe or buffer.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func (p *progress) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += int64(n)
	if p.w != nil && n > 0 {
		if t := p.now(); t.Sub(p.last) >= p.interval || p.done == p.total {
			p.last = t
			p.draw(t)
		}
	}
	return n, err
}

// draw writes the line: "label [#####.....]  42%  215 of 512 MiB  96 MB/s".
func (p *progress) draw(t time.Time) {
	const width = 30
	frac := 1.0
	if p.total > 0 {
		frac = min(1, float64(p.done)/float64(p.total))
	}
	bar := strings.Repeat("#", int(frac*width)) + strings.Repeat(".", width-int(frac*width))
	rate := ""
	if secs := t.Sub(p.start).Seconds(); secs > 0 {
		rate = fmt.Sprintf("  %.0f MB/s", float64(p.done)/secs/1e6)
	}
	fmt.Fprintf(p.w, "\r%s [%s] %3.0f%%  %d of %d MiB%s ", p.label, bar, frac*100, p.done>>20, (p.total+1<<20-1)>>20, rate)
	p.drawn = true
}

// finish ends the line the bar drew on, with a last word ("" for none).
func (p *progress) finish(word string) {
	if p.w == nil || !p.drawn {
		return
	}
	fmt.Fprintf(p.w, "%s\n", word)
}

// waiting shows, on the terminal only, that a command waits on the fabric
// (a migration, a drain, a node reporting an instance) and for how long:
// "migrating web ... 3.2 s", redrawn every interval until done is called,
// which clears the line.
func waiting(w io.Writer, label string) (done func()) {
	if !isTerminal(w) {
		return func() {}
	}
	return startWaiting(w, label, 200*time.Millisecond)
}

func startWaiting(w io.Writer, label string, interval time.Duration) (done func()) {
	stop, stopped := make(chan struct{}), make(chan struct{})
	t0 := time.Now()
	go func() {
		defer close(stopped)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				fmt.Fprint(w, "\r\033[K")
				return
			case <-tick.C:
				fmt.Fprintf(w, "\r%s ... %.1f s", label, time.Since(t0).Seconds())
			}
		}
	}()
	return func() {
		close(stop)
		<-stopped
	}
}
