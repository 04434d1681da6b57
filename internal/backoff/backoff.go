// Package backoff spaces out retries: capped exponential delays with
// jitter, so that many agents retrying one controller do not retry in
// step, and a failure that repeats costs little.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Backoff hands out the delays before successive retries. The zero value
// is not useful; use New.
type Backoff struct {
	min, max time.Duration
	jitter   float64        // the delay varies by up to this fraction either way
	rand     func() float64 // [0, 1); replaceable in tests
	n        int
}

// New returns a Backoff whose delays start at min and double up to max,
// each varied by up to jitter (0 to 1) of itself either way.
func New(shortest, longest time.Duration, jitter float64) *Backoff {
	return &Backoff{min: shortest, max: longest, jitter: max(0, min(jitter, 1)), rand: rand.Float64}
}

// Next returns the delay before the next retry.
func (b *Backoff) Next() time.Duration {
	d := b.min
	for i := 0; i < b.n && d < b.max; i++ {
		d *= 2
	}
	d = min(d, b.max)
	if b.n < 62 {
		b.n++
	}
	if b.jitter > 0 {
		d = time.Duration(float64(d) * (1 + b.jitter*(2*b.rand()-1)))
	}
	return d
}

// Reset starts again from the shortest delay, after a success.
func (b *Backoff) Reset() { b.n = 0 }

// Failures is how many delays were handed out since the last Reset.
func (b *Backoff) Failures() int { return b.n }
