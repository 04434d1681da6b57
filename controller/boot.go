package controller

import (
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"sync"

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
	b.mu.Lock()
	if l.State == pxe.LeaseOffered {
		if len(b.offers) > 65536 {
			clear(b.offers)
		}
		b.offers[l.MAC] = l
		b.mu.Unlock()
		return nil
	}
	delete(b.offers, l.MAC)
	if l.State == pxe.LeaseBound && l.Boot {
		if len(b.windows) > 65536 {
			clear(b.windows)
		}
		b.windows[l.MAC] = bootWindow{IP: l.IP, Opened: b.c.reg.now()}
	} else {
		delete(b.windows, l.MAC)
	}
	b.mu.Unlock()
	return b.c.reg.saveLease(l)
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
	e, hit := r.leases[mac]
	writes := r.leaseWrites
	r.leaseMu.Unlock()
	if hit {
		return e.lease, e.ok, nil
	}
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

func (r *Registry) saveLease(l pxe.Lease) error {
	v, err := json.Marshal(l)
	if err != nil {
		return err
	}
	var seq uint64
	var kept bool
	err = r.st.Update(func(tx store.Tx) error {
		// The store may run this more than once; the last run is what
		// commits.
		seq, kept = r.leaseSeq.Add(1), false
		// A lease for a MAC removed meanwhile is not kept.
		if _, err := tx.Get(bucketMACs, l.MAC); err != nil {
			return nil
		}
		kept = true
		return tx.Put(bucketLeases, l.MAC, v)
	})
	if err == nil && kept {
		r.cacheLease(l.MAC, leaseEntry{lease: l, ok: true, seq: seq})
	}
	return err
}
