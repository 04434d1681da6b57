package storagenode

import "testing"

// TestEarlyFlush pins when a queue answers part of a received batch early:
// only a batch that drained the socket and holds at least 4 frames, after
// its first quarter (rounded up).
func TestEarlyFlush(t *testing.T) {
	for _, c := range []struct{ n, want int }{
		{0, 0}, {1, 0}, {3, 0}, // too few to split
		{4, 1}, {5, 2}, {16, 4}, {17, 5}, {63, 16},
		{batchSize, 0}, // more frames may be queued: one send
	} {
		if got := earlyFlush(c.n); got != c.want {
			t.Errorf("earlyFlush(%d) = %d, want %d", c.n, got, c.want)
		}
	}
}
