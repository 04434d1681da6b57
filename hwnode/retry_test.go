package hwnode

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

// A failing step backs off while it keeps failing with the same spec, is
// tried at once when the spec changes, and is forgotten when it succeeds.
func TestStepRetryBacksOff(t *testing.T) {
	a := &Agent{log: slog.New(slog.DiscardHandler), retry: map[string]*stepRetry{}, diskErr: map[string]string{}, kick: make(chan struct{}, 1)}
	s := controllerapi.InstanceSpec{Name: "web", Running: true}
	bad := errors.New("bridge br9 does not exist")
	var prev time.Duration
	for i := 0; i < 5; i++ {
		a.setStepErr(s, bad)
		d := time.Until(a.retry["web"].at)
		// 300 ms doubling, ±20% jitter: each delay is longer than the
		// one before.
		if d <= prev || d < 200*time.Millisecond {
			t.Fatalf("failure %d: retry in %v after %v; want a growing delay", i+1, d, prev)
		}
		prev = d
		if !a.waiting(s) {
			t.Fatalf("failure %d: the same spec is retried before its delay", i+1)
		}
	}
	if prev < 3*time.Second {
		t.Errorf("after 5 failures the delay is %v; want about 4.8 s", prev)
	}
	if a.diskErr["web"] != bad.Error() {
		t.Errorf("reported error %q", a.diskErr["web"])
	}
	stop := s
	stop.Running = false
	if a.waiting(stop) {
		t.Error("a changed spec (stop asked) waits for the old spec's delay")
	}
	a.setStepErr(stop, bad)
	if d := time.Until(a.retry["web"].at); d > 400*time.Millisecond {
		t.Errorf("the changed spec's first retry is in %v; want the shortest delay", d)
	}
	a.setStepErr(stop, nil)
	if a.waiting(stop) || a.retry["web"] != nil || a.diskErr["web"] != "" {
		t.Error("success did not clear the retry and the error")
	}
}
