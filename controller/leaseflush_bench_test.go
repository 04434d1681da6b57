package controller

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/pxe"
)

// BenchmarkLeaseFlush: 1000 renewals taken, then one lease writer commit
// of them all (scripts/bench-boot.sh's 1000 clients each renew about every
// 150 ms at 8000/s asked, so a commit every 500 ms holds about all of
// them). 7-9 ms per commit here, 2026-11-30; A/B at 8000/s asked, 16 runs
// each: committing nothing during the run lost offers in 5 runs, every
// 500 ms in 1, so these commits are not what fills perfdhcp's socket.
func BenchmarkLeaseFlush(b *testing.B) {
	// Restored by the first cleanup, which runs last: after the lease
	// writer that reads it has ended (a defer would run before that).
	old := leaseWriteBehind
	b.Cleanup(func() { leaseWriteBehind = old })
	leaseWriteBehind = time.Hour // flushed by the loop only
	c := newTestController(b, "10.10.0.0/16")
	r := c.Registry()
	var ls []pxe.Lease
	for i := range 1000 {
		mac := fmt.Sprintf("52:54:00:00:%02x:%02x", i>>8, i&0xff)
		n, err := r.Register(controllerapi.RegisterRequest{Name: fmt.Sprintf("n%d", i), MAC: mac, Role: "hwnode"})
		if err != nil {
			b.Fatal(err)
		}
		l := pxe.Lease{MAC: mac, IP: netip.MustParseAddr(n.IP), State: pxe.LeaseBound, Updated: time.Now(), Expires: time.Now().Add(time.Hour)}
		if err := r.saveLease(l); err != nil {
			b.Fatal(err)
		}
		ls = append(ls, l)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, l := range ls {
			l.Updated = l.Updated.Add(time.Second)
			if !r.renewLease(l) {
				b.Fatal("renewal refused")
			}
		}
		r.flushLeases()
	}
}
