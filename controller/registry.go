package controller

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fabric-project/fabric/aoe/wire"
	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/controller/store"
	"github.com/fabric-project/fabric/pxe"
)

// Buckets of the state store.
const (
	bucketNodes  = "nodes"  // name -> Node JSON
	bucketMACs   = "macs"   // mac (aa:bb:..) -> name
	bucketIPs    = "ips"    // 4-byte address -> name (sorted for allocation)
	bucketEvents = "events" // 8-byte big-endian seq -> Event JSON
	bucketAoE    = "aoe"    // 2-byte shelf + 1-byte slot -> name (root volumes)
	bucketLeases = "leases" // mac -> pxe.Lease JSON
)

// Errors of the registry; the API maps them to HTTP status codes.
var (
	ErrInvalid   = errors.New("invalid")
	ErrConflict  = errors.New("conflict")
	ErrNotFound  = errors.New("not found")
	ErrExhausted = errors.New("address pool exhausted")
)

// regError is a registry error with a message for the sysadmin.
type regError struct {
	kind error
	msg  string
}

func (e *regError) Error() string { return e.msg }
func (e *regError) Unwrap() error { return e.kind }
func errorf(kind error, format string, a ...any) error {
	return &regError{kind: kind, msg: fmt.Sprintf(format, a...)}
}

// ParseMAC parses and normalises a unicast Ethernet MAC address.
func ParseMAC(s string) (net.HardwareAddr, error) {
	hw, err := net.ParseMAC(strings.TrimSpace(s))
	if err != nil || len(hw) != 6 {
		return nil, errorf(ErrInvalid, "%q is not an Ethernet MAC address; write it as 52:54:00:12:34:56", s)
	}
	if hw[0]&1 == 1 {
		return nil, errorf(ErrInvalid, "%s is a multicast address; a node's MAC is unicast (lowest bit of the first octet clear)", hw)
	}
	if string(hw) == "\x00\x00\x00\x00\x00\x00" {
		return nil, errorf(ErrInvalid, "00:00:00:00:00:00 is not a usable MAC address")
	}
	return hw, nil
}

// checkName reports whether name, of a kind (node, image, instance,
// token), is a DNS label (RFC 1123).
func checkName(kind, name string) error {
	if len(name) == 0 || len(name) > 63 {
		return errorf(ErrInvalid, "%s name %q must be 1 to 63 characters", kind, name)
	}
	for i, c := range name {
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' && i > 0 && i < len(name)-1
		if !ok {
			return errorf(ErrInvalid, "%s name %q is not DNS-safe: use lowercase letters, digits and inner '-'", kind, name)
		}
	}
	return nil
}

func checkRole(role string) error {
	switch role {
	case controllerapi.RoleHWNode, controllerapi.RoleStorage:
		return nil
	}
	return errorf(ErrInvalid, "role %q is not known; use %q or %q", role, controllerapi.RoleHWNode, controllerapi.RoleStorage)
}

// Registry is the node registry over the state store.
type Registry struct {
	st        store.Store
	subnet    netip.Prefix
	first     netip.Addr          // lowest address handed out automatically
	reserved  map[netip.Addr]bool // never assigned (the controller itself, gateway)
	rootShelf uint16              // first shelf for hardware nodes' root volumes
	now       func() time.Time
	notify    func()       // called after a committed change that appended events
	log       *slog.Logger // nil: slog.Default()

	// Allocation hints: no free address lies below them, so a search
	// starts there instead of at the first address (each registration
	// scanned every address taken before it). Raised to what a search
	// found, lowered by every release; a rolled-back transaction leaves
	// them valid, as lower bounds.
	hintMu  sync.Mutex
	ipHint  netip.Addr
	aoeHint string // aoeKey

	// The node list as last read, while the store's Gen is nodesGen:
	// decoding 10,000 records took a third of `fabric node list`; and
	// each MAC's node as last looked up.
	cacheMu  sync.Mutex
	nodes    []controllerapi.Node
	nodesGen uint64
	byMAC    map[string]macEntry

	// Each MAC's DHCP lease as last read or written (the DHCP server reads
	// it for every packet; a transaction and a decode each time were 7% of
	// its time at 8000 exchanges/s). leaseSeq numbers the changes, so an
	// older one never replaces a newer one in the cache. leaseWrites
	// counts cache updates, so that a lookup that raced one does not keep
	// what it read.
	leaseMu     sync.Mutex
	leases      map[string]leaseEntry
	leaseSeq    atomic.Uint64
	leaseWrites uint64
	// Lease writes wait in pending (the newest per MAC) for the lease
	// writer, the only goroutine that writes leases: saveLease waits for
	// the commit, renewLease does not (see leaseWriteBehind). flushing:
	// the writer runs; urgent: a saveLease waits; since: when pending
	// stopped being empty. leaseFlushMu orders the writer's commits with
	// Remove's.
	pending      map[string]queuedLease
	flushing     bool
	urgent       bool
	since        time.Time
	leaseKick    chan struct{}
	leaseFlushMu sync.Mutex
}

// queuedLease is a lease change waiting for the lease writer, with the
// saveLease calls that wait for its commit.
type queuedLease struct {
	lease   pxe.Lease
	seq     uint64
	waiters []chan error
}

// leaseEntry is a MAC's lease (ok false: none), written by the commit
// numbered seq (0: read from the store).
type leaseEntry struct {
	lease pxe.Lease
	ok    bool
	seq   uint64
}

// macEntry is a MAC's node (ok false: none) while the store's Gen of
// nodes and MACs is gen.
type macEntry struct {
	node controllerapi.Node
	ok   bool
	gen  uint64
}

// freeIP releases an automatic address in tx and lowers the hint.
func (r *Registry) freeIP(tx store.Tx, a netip.Addr) error {
	r.hintMu.Lock()
	if !r.ipHint.IsValid() || a.Less(r.ipHint) {
		r.ipHint = a
	}
	r.hintMu.Unlock()
	return tx.Delete(bucketIPs, ipKey(a))
}

// freeAoE releases a root volume address in tx and lowers the hint.
func (r *Registry) freeAoE(tx store.Tx, shelf uint16, slot uint8) error {
	k := aoeKey(shelf, slot)
	r.hintMu.Lock()
	if k < r.aoeHint {
		r.aoeHint = k
	}
	r.hintMu.Unlock()
	return tx.Delete(bucketAoE, k)
}

func ipKey(a netip.Addr) string { b := a.As4(); return string(b[:]) }

func keyIP(k string) netip.Addr {
	var b [4]byte
	copy(b[:], k)
	return netip.AddrFrom4(b)
}

func (r *Registry) checkIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, errorf(ErrInvalid, "%q is not an IPv4 address", s)
	}
	if !r.subnet.Contains(a) {
		return netip.Addr{}, errorf(ErrInvalid, "%s is outside the boot subnet %s", a, r.subnet)
	}
	if a == r.subnet.Masked().Addr() || a == lastAddr(r.subnet) {
		return netip.Addr{}, errorf(ErrInvalid, "%s is the network or broadcast address of %s", a, r.subnet)
	}
	if r.reserved[a] {
		return netip.Addr{}, errorf(ErrInvalid, "%s is reserved for the config node", a)
	}
	return a, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(b[:]) | (1<<(32-p.Bits()) - 1)
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// allocate returns the lowest free address from r.first up.
func (r *Registry) allocate(tx store.Tx) (netip.Addr, error) {
	next := r.first
	r.hintMu.Lock()
	if r.ipHint.IsValid() && next.Less(r.ipHint) {
		next = r.ipHint
	}
	r.hintMu.Unlock()
	last := lastAddr(r.subnet)
	var found bool
	err := tx.ForEach(bucketIPs, ipKey(next), func(k string, _ []byte) error {
		for r.reserved[next] {
			next = next.Next()
		}
		if keyIP(k) != next {
			found = true
			return store.ErrStop
		}
		next = next.Next()
		return nil
	})
	if err != nil {
		return netip.Addr{}, err
	}
	for !found && r.reserved[next] {
		next = next.Next()
	}
	if !next.IsValid() || !r.subnet.Contains(next) || next == last {
		return netip.Addr{}, errorf(ErrExhausted, "no free address left in the boot subnet %s; give one with --ip or widen the subnet", r.subnet)
	}
	r.hintMu.Lock()
	if !r.ipHint.IsValid() || r.ipHint.Less(next) {
		r.ipHint = next
	}
	r.hintMu.Unlock()
	return next, nil
}

// aoeKey orders AoE addresses shelf first.
func aoeKey(shelf uint16, slot uint8) string {
	return string([]byte{byte(shelf >> 8), byte(shelf), slot})
}

func parseAoEKey(k string) (uint16, uint8) { return uint16(k[0])<<8 | uint16(k[1]), k[2] }

// ParseAoE parses "e<shelf>.<slot>".
// The controller stores the canonical form, so the "e" is required here.
func ParseAoE(s string) (shelf uint16, slot uint8, err error) {
	shelf, slot, err = wire.ParseAddr(s)
	if err != nil || !strings.HasPrefix(s, "e") {
		return 0, 0, errorf(ErrInvalid, "%q is not an AoE address e<shelf>.<slot> (shelf < 65535, slot < 255)", s)
	}
	return shelf, slot, nil
}

// allocateRoot returns the lowest free AoE address from rootShelf up.
// Slot 255 and shelf 65535 are the broadcast addresses and never used.
func (r *Registry) allocateRoot(tx store.Tx) (string, error) {
	shelf, slot := r.rootShelf, uint8(0)
	r.hintMu.Lock()
	if h := r.aoeHint; h > aoeKey(shelf, slot) {
		shelf, slot = parseAoEKey(h)
	}
	r.hintMu.Unlock()
	err := tx.ForEach(bucketAoE, aoeKey(shelf, slot), func(k string, _ []byte) error {
		if k != aoeKey(shelf, slot) {
			return store.ErrStop
		}
		if slot == 254 {
			shelf, slot = shelf+1, 0
		} else {
			slot++
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	if shelf == 0xffff {
		return "", errorf(ErrExhausted, "no free AoE address left for root volumes")
	}
	r.hintMu.Lock()
	if k := aoeKey(shelf, slot); k > r.aoeHint {
		r.aoeHint = k
	}
	r.hintMu.Unlock()
	return wire.Addr(shelf, slot), nil
}

func getNode(tx store.Tx, name string) (controllerapi.Node, error) {
	return getJSON[controllerapi.Node](tx, bucketNodes, name, func() error {
		return errorf(ErrNotFound, "no node named %q; see `fabric node list`", name)
	})
}

func putNode(tx store.Tx, n controllerapi.Node) error { return putJSON(tx, bucketNodes, n.Name, n) }

// getJSON decodes the record under key, or returns missing() when there
// is none.
func getJSON[T any](tx store.Tx, bucket, key string, missing func() error) (T, error) {
	var v T
	b, err := tx.Get(bucket, key)
	if errors.Is(err, store.ErrNotFound) {
		return v, missing()
	}
	if err != nil {
		return v, err
	}
	return v, json.Unmarshal(b, &v)
}

func decodeJSON[T any](b []byte) (T, error) {
	var v T
	err := json.Unmarshal(b, &v)
	return v, err
}

func putJSON(tx store.Tx, bucket, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Put(bucket, key, b)
}

// listJSON decodes every record of a bucket, in key order.
func listJSON[T any](st store.Store, bucket string) ([]T, error) {
	out := []T{}
	err := st.View(func(tx store.Tx) error {
		return tx.ForEach(bucket, "", func(_ string, v []byte) error {
			var x T
			if err := json.Unmarshal(v, &x); err != nil {
				return err
			}
			out = append(out, x)
			return nil
		})
	})
	return out, err
}

func appendEvent(tx store.Tx, ev controllerapi.Event) error {
	seq, err := tx.NextSeq(bucketEvents)
	if err != nil {
		return err
	}
	ev.Seq = seq
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	return tx.Put(bucketEvents, seqKey(seq), b)
}

func seqKey(seq uint64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seq)
	return string(b[:])
}

func (r *Registry) update(fn func(tx store.Tx) error) error {
	err := r.st.Update(fn)
	if err == nil && r.notify != nil {
		r.notify()
	}
	return err
}

// Register adds a node. The returned node carries its assigned address.
func (r *Registry) Register(req controllerapi.RegisterRequest) (controllerapi.Node, error) {
	return r.RegisterAs(req, "", "")
}

// RegisterAs is Register with the event naming who asked and from where.
func (r *Registry) RegisterAs(req controllerapi.RegisterRequest, actor, source string) (controllerapi.Node, error) {
	var n controllerapi.Node
	hw, err := ParseMAC(req.MAC)
	if err != nil {
		return n, err
	}
	if err := checkName("node", req.Name); err != nil {
		return n, err
	}
	if err := checkRole(req.Role); err != nil {
		return n, err
	}
	var want netip.Addr
	if req.IP != "" {
		if want, err = r.checkIP(req.IP); err != nil {
			return n, err
		}
	}
	mac := hw.String()
	err = r.update(func(tx store.Tx) error {
		if _, err := tx.Get(bucketNodes, req.Name); err == nil {
			return errorf(ErrConflict, "a node named %q is already registered; choose another name or see `fabric node show %s`", req.Name, req.Name)
		}
		if holder, err := tx.Get(bucketMACs, mac); err == nil {
			return errorf(ErrConflict, "%s is already registered as %s; see `fabric node show %s`", mac, holder, holder)
		}
		addr := want
		if addr.IsValid() {
			if holder, err := tx.Get(bucketIPs, ipKey(addr)); err == nil {
				return errorf(ErrConflict, "%s is already assigned to %s; leave --ip out to get a free address", addr, holder)
			}
		} else {
			var err error
			if addr, err = r.allocate(tx); err != nil {
				return err
			}
		}
		now := r.now().UTC()
		n = controllerapi.Node{Name: req.Name, ID: newNodeID(), MAC: mac, Role: req.Role, IP: addr.String(), Created: now, Updated: now}
		if n.Role == controllerapi.RoleHWNode {
			root, err := r.allocateRoot(tx)
			if err != nil {
				return err
			}
			n.RootVolume = root
			sh, sl, _ := ParseAoE(root)
			if err := tx.Put(bucketAoE, aoeKey(sh, sl), []byte(n.Name)); err != nil {
				return err
			}
		}
		if err := putNode(tx, n); err != nil {
			return err
		}
		if err := tx.Put(bucketMACs, mac, []byte(n.Name)); err != nil {
			return err
		}
		if err := tx.Put(bucketIPs, ipKey(addr), []byte(n.Name)); err != nil {
			return err
		}
		return appendEvent(tx, controllerapi.Event{Time: now, Type: controllerapi.EventNodeRegistered, Node: n.Name, MAC: mac, Actor: actor, Source: source,
			Message: fmt.Sprintf("registered %s %s (%s) at %s", n.Role, n.Name, mac, n.IP)})
	})
	return n, err
}

// resolve finds a node by name or MAC.
func resolve(tx store.Tx, nameOrMAC string) (controllerapi.Node, error) {
	if hw, err := net.ParseMAC(nameOrMAC); err == nil {
		if name, err := tx.Get(bucketMACs, hw.String()); err == nil {
			return getNode(tx, string(name))
		}
		return controllerapi.Node{}, errorf(ErrNotFound, "no node has MAC %s; see `fabric node list`", hw)
	}
	return getNode(tx, nameOrMAC)
}

// Node returns a node by name or MAC, with its lease as the boot services
// see it (a renewal still queued for the lease writer included).
func (r *Registry) Node(nameOrMAC string) (controllerapi.Node, error) {
	var n controllerapi.Node
	err := r.st.View(func(tx store.Tx) error {
		var err error
		n, err = resolve(tx, nameOrMAC)
		return err
	})
	if err != nil {
		return n, err
	}
	l, ok, err := r.lease(n.MAC)
	if err != nil {
		return n, err
	}
	if ok {
		// Kept by the boot services as a pxe.Lease; converted explicitly
		// so the wire type does not depend on its encoding.
		n.Lease = &controllerapi.Lease{State: l.State, Expires: l.Expires, Updated: l.Updated}
	}
	return n, nil
}

// NodeByMAC returns the node with the given MAC.
func (r *Registry) NodeByMAC(hw net.HardwareAddr) (controllerapi.Node, bool, error) {
	// The DHCP server asks this for every packet: the answer is kept
	// until a node or MAC changes (a transaction and a decode per packet
	// were a quarter of the server's time at 8000 exchanges/s).
	mac := hw.String()
	gen := r.st.Gen(bucketNodes, bucketMACs)
	r.cacheMu.Lock()
	e, hit := r.byMAC[mac]
	r.cacheMu.Unlock()
	if hit && e.gen == gen {
		return e.node, e.ok, nil
	}
	return r.nodeByMACStore(mac, gen)
}

// nodeByMACStore is NodeByMAC's lookup in the store, kept apart so that a
// cache hit allocates nothing; it caches what it found as current at gen.
func (r *Registry) nodeByMACStore(mac string, gen uint64) (controllerapi.Node, bool, error) {
	var n controllerapi.Node
	var ok bool
	err := r.st.View(func(tx store.Tx) error {
		name, err := tx.Get(bucketMACs, mac)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if n, err = getNode(tx, string(name)); err != nil {
			return err
		}
		ok = true
		return nil
	})
	if err != nil {
		return controllerapi.Node{}, false, err
	}
	r.cacheMu.Lock()
	if r.byMAC == nil || len(r.byMAC) > 65536 {
		r.byMAC = map[string]macEntry{} // unknown MACs are kept too: bounded
	}
	r.byMAC[mac] = macEntry{node: n, ok: ok, gen: gen}
	r.cacheMu.Unlock()
	return n, ok, nil
}

// Nodes lists every node ordered by name.
func (r *Registry) Nodes() ([]controllerapi.Node, error) {
	ns, err := r.sharedNodes()
	return slices.Clone(ns), err
}

// sharedNodes is Nodes without the copy: the caller must not change the
// slice or what its nodes point to.
func (r *Registry) sharedNodes() ([]controllerapi.Node, error) {
	gen := r.st.Gen(bucketNodes)
	r.cacheMu.Lock()
	if r.nodes != nil && r.nodesGen == gen {
		ns := r.nodes
		r.cacheMu.Unlock()
		return ns, nil
	}
	r.cacheMu.Unlock()
	ns, err := listJSON[controllerapi.Node](r.st, bucketNodes)
	if err != nil {
		return nil, err
	}
	r.cacheMu.Lock()
	r.nodes, r.nodesGen = ns, gen
	r.cacheMu.Unlock()
	return ns, nil
}

// Update changes a node's name, role or address.
func (r *Registry) Update(nameOrMAC string, req controllerapi.UpdateRequest) (controllerapi.Node, error) {
	var n controllerapi.Node
	if req.Name != nil {
		if err := checkName("node", *req.Name); err != nil {
			return n, err
		}
	}
	if req.Role != nil {
		if err := checkRole(*req.Role); err != nil {
			return n, err
		}
	}
	var want netip.Addr
	if req.IP != nil {
		var err error
		if want, err = r.checkIP(*req.IP); err != nil {
			return n, err
		}
	}
	err := r.update(func(tx store.Tx) error {
		old, err := resolve(tx, nameOrMAC)
		if err != nil {
			return err
		}
		n = old
		var changes []string
		if req.Name != nil && *req.Name != old.Name {
			if _, err := tx.Get(bucketNodes, *req.Name); err == nil {
				return errorf(ErrConflict, "a node named %q is already registered", *req.Name)
			}
			for _, op := range []func() error{
				func() error { return tx.Delete(bucketNodes, old.Name) },
				func() error { return tx.Put(bucketMACs, old.MAC, []byte(*req.Name)) },
				func() error { return moveKey(tx, bucketTokens, old.Name, *req.Name) },
				func() error { return moveKey(tx, bucketDrained, old.Name, *req.Name) },
				func() error { return renameCertHolder(tx, old.ID, *req.Name) },
				func() error { return renameInstanceNode(tx, old.Name, *req.Name) },
				func() error {
					if old.RootVolume == "" {
						return nil
					}
					sh, sl, err := ParseAoE(old.RootVolume)
					if err != nil {
						return err
					}
					return tx.Put(bucketAoE, aoeKey(sh, sl), []byte(*req.Name))
				},
			} {
				if err := op(); err != nil {
					return err
				}
			}
			n.Name = *req.Name
			changes = append(changes, "name "+old.Name+" -> "+n.Name)
		}
		if req.Role != nil && *req.Role != old.Role {
			n.Role = *req.Role
			changes = append(changes, "role "+old.Role+" -> "+n.Role)
			// Only hardware nodes boot from a root volume.
			if err := r.deleteRoot(tx, n.RootVolume); err != nil {
				return err
			}
			n.RootVolume = ""
			if n.Role == controllerapi.RoleHWNode {
				root, err := r.allocateRoot(tx)
				if err != nil {
					return err
				}
				sh, sl, _ := ParseAoE(root)
				if err := tx.Put(bucketAoE, aoeKey(sh, sl), []byte(n.Name)); err != nil {
					return err
				}
				n.RootVolume = root
			}
		}
		if want.IsValid() && want.String() != old.IP {
			if holder, err := tx.Get(bucketIPs, ipKey(want)); err == nil {
				return errorf(ErrConflict, "%s is already assigned to %s", want, holder)
			}
			if err := r.freeIP(tx, netip.MustParseAddr(old.IP)); err != nil {
				return err
			}
			n.IP = want.String()
			changes = append(changes, "ip "+old.IP+" -> "+n.IP)
		}
		// Rewrite the address index in every case: a rename changes the holder.
		if err := tx.Put(bucketIPs, ipKey(netip.MustParseAddr(n.IP)), []byte(n.Name)); err != nil {
			return err
		}
		if len(changes) == 0 {
			return nil
		}
		n.Updated = r.now().UTC()
		if err := putNode(tx, n); err != nil {
			return err
		}
		return appendEvent(tx, controllerapi.Event{Time: n.Updated, Type: controllerapi.EventNodeUpdated, Node: n.Name, MAC: n.MAC,
			Message: "updated " + n.Name + ": " + strings.Join(changes, ", ")})
	})
	return n, err
}

// moveKey moves a record to another key, if there is one.
func moveKey(tx store.Tx, bucket, from, to string) error {
	v, err := tx.Get(bucket, from)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := tx.Delete(bucket, from); err != nil {
		return err
	}
	return tx.Put(bucket, to, v)
}

// renameCertHolder makes a node's certificate record follow its rename, so
// that its agent keeps working under the new name.
func renameCertHolder(tx store.Tx, id, to string) error {
	if id == "" {
		return nil
	}
	rec, err := getJSON[certRecord](tx, bucketCerts, id, func() error { return store.ErrNotFound })
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	rec.Node = to
	return putJSON(tx, bucketCerts, id, rec)
}

// renameInstanceNode keeps a renamed node's instances (and the migrations
// coming to it) on it.
func renameInstanceNode(tx store.Tx, from, to string) error {
	var changed []controllerapi.Instance
	if err := tx.ForEach(bucketInstances, "", func(_ string, v []byte) error {
		in, err := decodeJSON[controllerapi.Instance](v)
		if err != nil {
			return err
		}
		if in.Node == from || in.Migrate != nil && in.Migrate.To == from {
			if in.Node == from {
				in.Node = to
			}
			if in.Migrate != nil && in.Migrate.To == from {
				in.Migrate.To = to
			}
			changed = append(changed, in)
		}
		return nil
	}); err != nil {
		return err
	}
	for _, in := range changed {
		if err := putJSON(tx, bucketInstances, in.Name, in); err != nil {
			return err
		}
	}
	return nil
}

// Remove deletes a node and revokes its certificate.
func (r *Registry) Remove(nameOrMAC string) (controllerapi.Node, error) {
	var n controllerapi.Node
	// The lease writer does not commit meanwhile: a lease it wrote after
	// this commit would outlive the node.
	r.leaseFlushMu.Lock()
	defer r.leaseFlushMu.Unlock()
	err := r.update(func(tx store.Tx) error {
		var err error
		if n, err = resolve(tx, nameOrMAC); err != nil {
			return err
		}
		for _, op := range []func() error{
			func() error { return tx.Delete(bucketNodes, n.Name) },
			func() error { return tx.Delete(bucketMACs, n.MAC) },
			func() error { return r.freeIP(tx, netip.MustParseAddr(n.IP)) },
			func() error { return tx.Delete(bucketTokens, n.Name) },
			func() error { return tx.Delete(bucketDrained, n.Name) },
			func() error {
				if n.ID == "" {
					return nil
				}
				return tx.Delete(bucketCerts, n.ID)
			},
			func() error { return tx.Delete(bucketLeases, n.MAC) },
			func() error { return r.deleteRoot(tx, n.RootVolume) },
		} {
			if err := op(); err != nil {
				return err
			}
		}
		return appendEvent(tx, controllerapi.Event{Time: r.now().UTC(), Type: controllerapi.EventNodeRemoved, Node: n.Name, MAC: n.MAC,
			Message: fmt.Sprintf("removed %s %s (%s), %s released", n.Role, n.Name, n.MAC, n.IP)})
	})
	if err == nil {
		// The lease goes from the cache and from the writer's queue at
		// once, so that no renewal slips in between.
		r.leaseMu.Lock()
		q, had := r.pending[n.MAC]
		delete(r.pending, n.MAC)
		r.leaseWrites++
		r.putLeaseLocked(n.MAC, leaseEntry{seq: r.leaseSeq.Add(1)})
		r.leaseMu.Unlock()
		if had {
			for _, w := range q.waiters {
				w <- nil // as for a lease saved for a MAC no longer registered
			}
		}
	}
	return n, err
}

func (r *Registry) deleteRoot(tx store.Tx, root string) error {
	if root == "" {
		return nil
	}
	sh, sl, err := ParseAoE(root)
	if err != nil {
		return err
	}
	return r.freeAoE(tx, sh, sl)
}

// Record appends an event that is not tied to a registry change.
func (r *Registry) Record(ev controllerapi.Event) error {
	if ev.Time.IsZero() {
		ev.Time = r.now().UTC()
	}
	return r.update(func(tx store.Tx) error { return appendEvent(tx, ev) })
}

// Events returns up to limit events with Seq >= since.
func (r *Registry) Events(since uint64, limit int) ([]controllerapi.Event, error) {
	evs := []controllerapi.Event{}
	err := r.st.View(func(tx store.Tx) error {
		return tx.ForEach(bucketEvents, seqKey(since), func(_ string, v []byte) error {
			var ev controllerapi.Event
			if err := json.Unmarshal(v, &ev); err != nil {
				return err
			}
			evs = append(evs, ev)
			if len(evs) >= limit {
				return store.ErrStop
			}
			return nil
		})
	})
	return evs, err
}

// CheckInvariants verifies the store's indexes agree with the node records:
// every node has its MAC and address indexed to it, and no index entry
// points at a missing node or disagrees with it.
func (r *Registry) CheckInvariants() error {
	return r.st.View(func(tx store.Tx) error {
		nodes := map[string]controllerapi.Node{}
		if err := tx.ForEach(bucketNodes, "", func(k string, v []byte) error {
			var n controllerapi.Node
			if err := json.Unmarshal(v, &n); err != nil {
				return fmt.Errorf("node %q: undecodable record: %w", k, err)
			}
			if n.Name != k {
				return fmt.Errorf("node record under %q is named %q", k, n.Name)
			}
			nodes[k] = n
			return nil
		}); err != nil {
			return err
		}
		macs, ips, instIPs, instVols := 0, 0, 0, 0
		if err := tx.ForEach(bucketMACs, "", func(k string, v []byte) error {
			macs++
			if n, ok := nodes[string(v)]; !ok || n.MAC != k {
				return fmt.Errorf("MAC index %s -> %q does not match a node", k, v)
			}
			return nil
		}); err != nil {
			return err
		}
		if err := tx.ForEach(bucketIPs, "", func(k string, v []byte) error {
			if strings.HasPrefix(string(v), "instance/") {
				instIPs++
				return nil
			}
			ips++
			if n, ok := nodes[string(v)]; !ok || n.IP != keyIP(k).String() {
				return fmt.Errorf("address index %s -> %q does not match a node", keyIP(k), v)
			}
			return nil
		}); err != nil {
			return err
		}
		if macs != len(nodes) || ips != len(nodes) {
			return fmt.Errorf("%d nodes but %d MAC and %d address index entries", len(nodes), macs, ips)
		}
		roots := 0
		if err := tx.ForEach(bucketAoE, "", func(k string, v []byte) error {
			if strings.HasPrefix(string(v), "instance/") {
				instVols++
				return nil
			}
			sh, sl := parseAoEKey(k)
			if n, ok := nodes[string(v)]; !ok || n.RootVolume != wire.Addr(sh, sl) {
				return fmt.Errorf("root volume index e%d.%d -> %q does not match a node", sh, sl, v)
			}
			roots++
			return nil
		}); err != nil {
			return err
		}
		for _, n := range nodes {
			if n.RootVolume != "" {
				roots--
			}
		}
		if roots != 0 {
			return fmt.Errorf("root volume index and node records disagree by %d", roots)
		}
		insts := 0
		if err := tx.ForEach(bucketInstances, "", func(k string, v []byte) error {
			insts++
			return nil
		}); err != nil {
			return err
		}
		if instIPs != insts || instVols != insts {
			return fmt.Errorf("%d instances but %d instance address and %d instance volume index entries", insts, instIPs, instVols)
		}
		var prev uint64
		return tx.ForEach(bucketEvents, "", func(k string, v []byte) error {
			seq := binary.BigEndian.Uint64([]byte(k))
			if seq <= prev {
				return fmt.Errorf("event sequence not increasing at %d", seq)
			}
			prev = seq
			return nil
		})
	})
}
