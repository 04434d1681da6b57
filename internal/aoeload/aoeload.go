// Package aoeload loads an AoE volume through our initiator for tests
// that measure I/O caps and latency: reads flat out, and the median
// latency of reads one at a time.
package aoeload

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fabric-project/fabric/aoe/initiator"
)

// Rate reads bs bytes at a time from d with workers goroutines for dur,
// spread over the volume's first blocks blocks of bs, and returns the
// reads per second; the first error stops it.
func Rate(d *initiator.Device, workers, bs, blocks int, dur time.Duration) (float64, error) {
	var n atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	end := time.Now().Add(dur)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, bs)
			for i := w; time.Now().Before(end); i += workers {
				if _, err := d.ReadAt(buf, int64(i%blocks)*int64(bs)); err != nil {
					once.Do(func() { first = err })
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / dur.Seconds(), first
}

// MedianLatency reads bs bytes n times in a row, one at a time, and
// returns the median time a read took.
func MedianLatency(d *initiator.Device, n, bs int) (time.Duration, error) {
	lat := make([]time.Duration, 0, n)
	buf := make([]byte, bs)
	for i := 0; i < n; i++ {
		t0 := time.Now()
		if _, err := d.ReadAt(buf, int64(i)*int64(bs)); err != nil {
			return 0, err
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	return lat[len(lat)/2], nil
}
