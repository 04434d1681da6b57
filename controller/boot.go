package controller

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/controller/store"
	"github.com/fabric-project/fabric/pxe"
)

// bootBackend lets the boot services read the registry live: every DHCP
// packet and script request looks the MAC up in the store, so a
// registration takes effect at once.
type bootBackend struct {
	c *Controller

	mu      sync.Mutex
	offers  map[string]pxe.Lease  // offered leases live only in memory
	windows map[string]bootWindow // by MAC: opened when DHCP binds an address
	// reimaging: nodes whose fresh root is being cloned, with what their
	// boot script says meanwhile.
	reimaging map[string]string
}

var _ pxe.Backend = (*bootBackend)(nil)

func (b *bootBackend) Host(mac net.HardwareAddr) (pxe.Host, bool, error) {
	n, ok, err := b.c.reg.NodeByMAC(mac)
	if err != nil || !ok {
		return pxe.Host{}, false, err
	}
	ip, err := netip.ParseAddr(n.IP)
	if err != nil {
		return pxe.Host{}, false, err
	}
	hw, _ := net.ParseMAC(n.MAC)
	return pxe.Host{Name: n.Name, Role: n.Role, MAC: hw, IP: ip, RootVolume: n.RootVolume}, true, nil
}

// BootToken mints the enrollment token for a boot script, if the script
// is fetched from the address DHCP just bound for the MAC, within the boot
// window, and no token was served in this window yet.
func (b *bootBackend) BootToken(mac net.HardwareAddr, from netip.Addr) (string, error) {
	now := b.c.reg.now()
	window := b.c.cfg.BootWindow
	if window <= 0 {
		window = DefaultBootWindow
	}
	b.mu.Lock()
	w, open := b.windows[mac.String()]
	ok, why := decideBootToken(w, open, from.Unmap(), now, window)
	if ok {
		w.Served = true
		b.windows[mac.String()] = w
	}
	b.mu.Unlock()
	if !ok {
		return "", errors.New(why)
	}
	ttl := b.c.cfg.BootTokenTTL
	if ttl <= 0 {
		ttl = DefaultBootTokenTTL
	}
	var tok string
	err := b.c.reg.update(func(tx store.Tx) error {
		name, err := tx.Get(bucketMACs, mac.String())
		if err != nil {
			return err
		}
		tok, err = b.c.reg.issueToken(tx, string(name), tokenBoot, ttl)
		return err
	})
	return tok, err
}

func (b *bootBackend) Lease(mac net.HardwareAddr) (pxe.Lease, bool, error) {
	b.mu.Lock()
	l, ok := b.offers[mac.String()]
	b.mu.Unlock()
	if ok {
		return l, true, nil
	}
	return b.c.reg.lease(mac.String())
}

// SaveLease keeps offers in memory and writes bound, declined and released
// leases to the store: they are what must survive a restart, and an offer
// is cheap to make again.
func (b *bootBackend) SaveLease(l pxe.Lease) error {
	if l.State == pxe.LeaseOffered {
		b.mu.Lock()
		if len(b.offers) > 65536 {
			clear(b.offers)
		}
		b.offers[l.MAC] = l
		b.mu.Unlock()
		return nil
	}
	b.settled(l)
	return b.c.reg.saveLease(l)
}

// Renew takes a bound lease that renews the one its MAC holds (bound, same
// address) without waiting for the store (Registry.renewLease).
func (b *bootBackend) Renew(l pxe.Lease) bool {
	if l.State != pxe.LeaseBound || !b.c.reg.renewLease(l) {
		return false
	}
	b.settled(l)
	return true
}

// settled drops the MAC's offer and opens its boot window if l binds a
// network boot's address (else closes it).
func (b *bootBackend) settled(l pxe.Lease) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.offers, l.MAC)
	if l.State == pxe.LeaseBound && l.Boot {
		if len(b.windows) > 65536 {
			clear(b.windows)
		}
		b.windows[l.MAC] = bootWindow{IP: l.IP, Opened: b.c.reg.now()}
	} else {
		delete(b.windows, l.MAC)
	}
}

func (b *bootBackend) Report(ev pxe.Event) {
	var typ string
	switch ev.Kind {
	case pxe.EventUnknownMAC:
		b.c.UnknownMAC(ev.MAC, b.c.cfg.Boot.Iface)
		return
	case pxe.EventBooting:
		typ = controllerapi.EventNodeBooting
	case pxe.EventScript:
		typ = controllerapi.EventBootScript
	case pxe.EventConflict:
		typ = controllerapi.EventAddrConflict
	default:
		typ = "boot." + ev.Kind
	}
	mac := ""
	if ev.MAC != nil {
		mac = ev.MAC.String()
	}
	if err := b.c.reg.Record(controllerapi.Event{Type: typ, Node: ev.Host, MAC: mac, Message: ev.Message}); err != nil {
		b.c.log.Error("recording boot event", "err", err)
	}
}

// lease is mac's lease, from the cache (Registry.leases) or the store.
func (r *Registry) lease(mac string) (pxe.Lease, bool, error) {
	r.leaseMu.Lock()
	e, hit, _ := r.latestLeaseLocked(mac)
	writes := r.leaseWrites
	r.leaseMu.Unlock()
	if hit {
		return e.lease, e.ok, nil
	}
	l, ok, err := r.storedLease(mac)
	if err != nil {
		return pxe.Lease{}, false, err
	}
	r.leaseMu.Lock()
	if r.leaseWrites == writes { // no lease changed meanwhile: what was read is current
		r.putLeaseLocked(mac, leaseEntry{lease: l, ok: ok})
	}
	r.leaseMu.Unlock()
	return l, ok, nil
}

// latestLeaseLocked is mac's lease as cached, or the newer change queued
// for the lease writer; committing: that change is one a saveLease waits
// for. The caller holds leaseMu.
func (r *Registry) latestLeaseLocked(mac string) (e leaseEntry, hit, committing bool) {
	e, hit = r.leases[mac]
	if q, queued := r.pending[mac]; queued && (!hit || q.seq > e.seq) {
		return leaseEntry{lease: q.lease, ok: true, seq: q.seq}, true, len(q.waiters) > 0
	}
	return e, hit, false
}

// storedLease is mac's lease as the store holds it.
func (r *Registry) storedLease(mac string) (pxe.Lease, bool, error) {
	var l pxe.Lease
	var ok bool
	err := r.st.View(func(tx store.Tx) error {
		v, err := tx.Get(bucketLeases, mac)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		ok = true
		return json.Unmarshal(v, &l)
	})
	return l, ok, err
}

// cacheLease records a committed change of mac's lease, unless a newer
// commit is already recorded.
func (r *Registry) cacheLease(mac string, e leaseEntry) {
	r.leaseMu.Lock()
	defer r.leaseMu.Unlock()
	r.leaseWrites++
	if old, hit := r.leases[mac]; hit && old.seq > e.seq {
		return
	}
	r.putLeaseLocked(mac, e)
}

func (r *Registry) putLeaseLocked(mac string, e leaseEntry) {
	if r.leases == nil || len(r.leases) > 65536 {
		r.leases = map[string]leaseEntry{} // bounded; refilled from the store
	}
	r.leases[mac] = e
}

// leaseWriteBehind is how long a renewal waits in memory for the lease
// writer, gathering others into the same commit. A renewal only moves the
// expiry of a lease the store already holds as bound to the same address,
// and that address is the MAC's reservation: a crash that loses the write
// loses the later expiry, not the address, which no other MAC can be
// given. Waiting for the commit before each ACK (two fdatasync per commit
// of about 8 leases, and a worker goroutine per request) took a third of
// the DHCP server's CPU at 8000 exchanges/s (docs/benchmarks.md).
var leaseWriteBehind = 500 * time.Millisecond

// saveLease writes l and returns once it is committed (or was not kept:
// its MAC is not registered).
func (r *Registry) saveLease(l pxe.Lease) error {
	ch := make(chan error, 1)
	r.leaseMu.Lock()
	r.queueLeaseLocked(l, ch)
	r.leaseMu.Unlock()
	return <-ch
}

// renewLease takes l, a bound lease, without waiting for the store if it
// renews the lease the MAC holds (bound, same address): lookups see it at
// once and the lease writer commits it within leaseWriteBehind. False: l is
// not a renewal; save it with saveLease.
func (r *Registry) renewLease(l pxe.Lease) bool {
	r.leaseMu.Lock()
	defer r.leaseMu.Unlock()
	e, hit, committing := r.latestLeaseLocked(l.MAC)
	if committing {
		return false // a bind not committed yet: the answer waits for it
	}
	if l.State != pxe.LeaseBound || !hit || !e.ok || e.lease.State != pxe.LeaseBound || e.lease.IP != l.IP {
		return false
	}
	seq := r.queueLeaseLocked(l, nil)
	r.leaseWrites++
	r.putLeaseLocked(l.MAC, leaseEntry{lease: l, ok: true, seq: seq})
	return true
}

// queueLeaseLocked queues l for the lease writer, which sends the commit's
// result to done (nil: nobody waits), and starts the writer if it is not
// running. It returns the change's sequence number.
func (r *Registry) queueLeaseLocked(l pxe.Lease, done chan error) uint64 {
	if r.pending == nil {
		r.pending = map[string]queuedLease{}
		r.leaseKick = make(chan struct{}, 1)
	}
	if len(r.pending) == 0 {
		r.since = time.Now()
	}
	q := r.pending[l.MAC]
	q.lease, q.seq = l, r.leaseSeq.Add(1)
	if done != nil {
		q.waiters = append(q.waiters, done)
		r.urgent = true
		select {
		case r.leaseKick <- struct{}{}:
		default:
		}
	}
	r.pending[l.MAC] = q
	if !r.flushing {
		r.flushing = true
		go r.leaseWriter(r.leaseKick)
	}
	return q.seq
}

// leaseWriter commits queued leases until none is left: at once when a
// saveLease waits (those that queue during a commit share the next one),
// else leaseWriteBehind after the first renewal queued.
func (r *Registry) leaseWriter(kick chan struct{}) {
	for {
		r.leaseMu.Lock()
		if len(r.pending) == 0 {
			r.flushing = false
			r.leaseMu.Unlock()
			return
		}
		wait := time.Until(r.since.Add(leaseWriteBehind))
		urgent := r.urgent
		r.leaseMu.Unlock()
		if !urgent && wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-kick:
			case <-t.C:
			}
			t.Stop()
			continue
		}
		r.flushLeases()
	}
}

// flushLeases commits every queued lease in one transaction; a lease for a
// MAC no longer registered is not kept.
func (r *Registry) flushLeases() {
	r.leaseFlushMu.Lock()
	defer r.leaseFlushMu.Unlock()
	r.leaseMu.Lock()
	batch := r.pending
	r.pending = map[string]queuedLease{}
	r.urgent = false
	r.leaseMu.Unlock()
	if len(batch) == 0 {
		return
	}
	vals := make(map[string][]byte, len(batch))
	var err error
	for mac, q := range batch {
		if vals[mac], err = json.Marshal(q.lease); err != nil {
			break
		}
	}
	kept := make(map[string]bool, len(batch))
	if err == nil {
		err = r.st.Update(func(tx store.Tx) error {
			// The store may run this more than once; the last run is
			// what commits.
			clear(kept)
			for mac, v := range vals {
				if _, err := tx.Get(bucketMACs, mac); err != nil {
					continue
				}
				if err := tx.Put(bucketLeases, mac, v); err != nil {
					return err
				}
				kept[mac] = true
			}
			return nil
		})
	}
	if err != nil {
		lg := r.log
		if lg == nil {
			lg = slog.Default()
		}
		lg.Error("writing DHCP leases", "leases", len(batch), "err", err)
	}
	r.leaseMu.Lock()
	for mac, q := range batch {
		if err == nil && kept[mac] {
			r.leaseWrites++
			if old, hit := r.leases[mac]; !hit || old.seq <= q.seq {
				r.putLeaseLocked(mac, leaseEntry{lease: q.lease, ok: true, seq: q.seq})
			}
		}
	}
	r.leaseMu.Unlock()
	for _, q := range batch {
		for _, w := range q.waiters {
			w <- err
		}
	}
}
