package backoff

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestDoublesUpToTheCap(t *testing.T) {
	b := New(300*time.Millisecond, 5*time.Second, 0)
	var got []time.Duration
	for i := 0; i < 8; i++ {
		got = append(got, b.Next())
	}
	ms := time.Millisecond
	want := []time.Duration{300 * ms, 600 * ms, 1200 * ms, 2400 * ms, 4800 * ms, 5000 * ms, 5000 * ms, 5000 * ms}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("delays (-want +got):\n%s", d)
	}
	if b.Failures() != 8 {
		t.Errorf("failures %d", b.Failures())
	}
	b.Reset()
	if d := b.Next(); d != 300*ms {
		t.Errorf("after reset: %v", d)
	}
}

func TestJitterStaysWithinItsBounds(t *testing.T) {
	b := New(time.Second, time.Minute, 0.2)
	for _, r := range []struct {
		draw float64
		want time.Duration
	}{{0, 800 * time.Millisecond}, {0.5, 2 * time.Second}, {0.999999, 4800 * time.Millisecond}} {
		b.rand = func() float64 { return r.draw }
		got := b.Next()
		if diff := got - r.want; diff < -time.Millisecond || diff > time.Millisecond {
			t.Errorf("draw %v: %v; want %v", r.draw, got, r.want)
		}
	}
	// With the real source, many agents' delays spread out.
	seen := map[time.Duration]bool{}
	for i := 0; i < 50; i++ {
		c := New(time.Second, time.Minute, 0.2)
		d := c.Next()
		if d < 800*time.Millisecond || d > 1200*time.Millisecond {
			t.Fatalf("delay %v outside ±20%% of 1s", d)
		}
		seen[d] = true
	}
	if len(seen) < 40 {
		t.Errorf("only %d distinct first delays among 50 agents", len(seen))
	}
}

func TestHugeCountDoesNotOverflow(t *testing.T) {
	b := New(time.Millisecond, time.Hour, 0)
	for i := 0; i < 1000; i++ {
		if d := b.Next(); d <= 0 || d > time.Hour {
			t.Fatalf("delay %d: %v", i, d)
		}
	}
}
