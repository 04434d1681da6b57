package controller

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/controller/store"
)

// DefaultAgentTimeout is how long a hardware node may go without a
// heartbeat before the controller treats it as dead.
const DefaultAgentTimeout = 6 * time.Second

// agents is the controller's in-memory view of the hardware node agents:
// what each reported in its last heartbeat, and when.
type agents struct {
	mu      sync.Mutex
	seen    map[string]time.Time
	last    map[string]controllerapi.Heartbeat
	reports map[uint64]controllerapi.MigrationReport
	// consoles are the console log parts the agents sent, by instance.
	consoles map[string]controllerapi.ConsoleTail
	changed  chan struct{} // closed and replaced on every heartbeat
	timeout  time.Duration
}

func newAgents(timeout time.Duration) *agents {
	if timeout <= 0 {
		timeout = DefaultAgentTimeout
	}
	return &agents{seen: map[string]time.Time{}, last: map[string]controllerapi.Heartbeat{},
		reports: map[uint64]controllerapi.MigrationReport{}, consoles: map[string]controllerapi.ConsoleTail{}, changed: make(chan struct{}), timeout: timeout}
}

// record stores a heartbeat and returns the IDs of the migration reports
// it carried.
func (a *agents) record(node string, hb controllerapi.Heartbeat, now time.Time) []uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seen[node] = now
	var acked []uint64
	for _, r := range hb.Migrations {
		a.reports[r.ID] = r
		acked = append(acked, r.ID)
	}
	for _, t := range hb.Consoles {
		t.Node = node
		a.consoles[t.Instance] = t
	}
	a.last[node] = withoutConsoles(hb)
	close(a.changed)
	a.changed = make(chan struct{})
	return acked
}

// forget drops what a node's agent reported: its certificate was revoked.
func (a *agents) forget(node string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.seen, node)
	delete(a.last, node)
}

// rename moves a node's reports to its new name.
func (a *agents) rename(from, to string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if t, ok := a.seen[from]; ok {
		a.seen[to], a.last[to] = t, a.last[from]
		delete(a.seen, from)
		delete(a.last, from)
	}
}

// lastSeen is when a node's agent last called (zero: not since the
// controller started).
func (a *agents) lastSeen(node string) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seen[node]
}

func (a *agents) changedCh() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.changed
}

// get returns a node's last heartbeat and whether it is alive.
func (a *agents) get(node string, now time.Time) (hb controllerapi.Heartbeat, seen time.Time, alive bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	seen, ok := a.seen[node]
	return a.last[node], seen, ok && now.Sub(seen) < a.timeout
}

// instance returns what node last said about an instance.
func (a *agents) instance(node, name string) (controllerapi.InstanceStatus, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.last[node].Instances {
		if s.Name == name {
			return s, true
		}
	}
	return controllerapi.InstanceStatus{}, false
}

func (a *agents) report(id uint64) (controllerapi.MigrationReport, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r, ok := a.reports[id]
	return r, ok
}

// waitAgents waits until cond holds, re-checking after every heartbeat, or
// until timeout.
func (c *Controller) waitAgents(timeout time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		ch := c.agents.changedCh()
		if cond() {
			return true
		}
		select {
		case <-ch:
		case <-deadline.C:
			return cond()
		}
	}
}

func hashCred(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// agentCall authenticates an agent's call for role (its node certificate)
// and decodes the body, at most limit bytes, into v; claimed points at the
// node name the body gives, which must be the certificate's if set. It
// answers the failure itself and reports whether to go on.
func (c *Controller) agentCall(w http.ResponseWriter, r *http.Request, role string, limit int64, v any, claimed *string) (controllerapi.Node, bool) {
	n, leaf, err := c.agentAuth(r, role)
	if err != nil {
		c.fail(w, err)
		return n, false
	}
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	if !decode(w, r, v) {
		return n, false
	}
	if *claimed != "" && *claimed != leaf.Subject.CommonName {
		c.fail(w, errorf(ErrForbidden, "the certificate is %s's; a call for %s is refused", leaf.Subject.CommonName, *claimed))
		return n, false
	}
	return n, true
}

// heartbeat answers POST /v1/agent/heartbeat?wait=D: it records the
// agent's report and answers with the node's desired state, holding the
// request up to wait while that state is unchanged from the generation the
// agent already has.
func (c *Controller) heartbeat(w http.ResponseWriter, r *http.Request) {
	var hb controllerapi.Heartbeat
	n, ok := c.agentCall(w, r, controllerapi.RoleHWNode, 1<<20, &hb, &hb.Node)
	if !ok {
		return
	}
	node := n.Name
	wait, ok := waitParam(w, r, time.Minute)
	if !ok {
		return
	}
	_, _, wasAlive := c.agents.get(node, time.Now())
	acked := c.agents.record(node, hb, time.Now())
	// Settling may wait for storage nodes to apply an allow list: never
	// inside a heartbeat (the agent would look dead), one pass at a time.
	if c.settling.CompareAndSwap(false, true) {
		go func() {
			defer c.settling.Store(false)
			c.settleOrphans()
		}()
	}
	if !wasAlive {
		c.log.Info("agent up", "node", node, "vcpus", hb.Capacity.VCPUs, "memory_mib", hb.Capacity.MemoryMiB, "disk", hb.Capacity.Disk)
	}
	c.hold(r.Context(), wait, func(final bool) bool {
		gen := c.generation()
		if gen == hb.Generation && !final {
			return false
		}
		ds, err := c.desired(node)
		if err != nil {
			c.fail(w, err)
			return true
		}
		ds.Generation, ds.Acked, ds.Node = gen, acked, node
		writeJSON(w, http.StatusOK, ds)
		return true
	})
}

// nodeStatuses returns a function giving each hardware node's live state
// (nil for other roles), made from one read of the fences, drains and
// certificates and one pass over insts. Listing 10,000 nodes read a
// fence and a drain record per node (20,000 transactions) and walked
// every instance for every node.
func (c *Controller) nodeStatuses(insts []controllerapi.Instance) (func(controllerapi.Node) *controllerapi.NodeStatus, error) {
	fences := map[string]fenceRecord{}
	drained := map[string]bool{}
	certs := map[string]certRecord{}
	err := c.st.View(func(tx store.Tx) error {
		err := tx.ForEach(bucketFences, "", func(k string, v []byte) error {
			if k == keyFenceGen {
				return nil
			}
			r, err := decodeJSON[fenceRecord](v)
			fences[k] = r
			return err
		})
		if err != nil {
			return err
		}
		if err := tx.ForEach(bucketDrained, "", func(k string, _ []byte) error {
			drained[k] = true
			return nil
		}); err != nil {
			return err
		}
		return tx.ForEach(bucketCerts, "", func(k string, v []byte) error {
			if rec, err := decodeJSON[certRecord](v); err == nil {
				certs[k] = rec
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	type use struct {
		vcpus, mib int
		instances  []string
	}
	uses := map[string]*use{}
	at := func(node string) *use {
		u := uses[node]
		if u == nil {
			u = &use{}
			uses[node] = u
		}
		return u
	}
	for _, in := range insts {
		u := at(in.Node)
		u.vcpus += in.VCPUs
		u.mib += in.MemoryMiB
		u.instances = append(u.instances, in.Name)
		if in.Migrate != nil && in.Migrate.To != in.Node {
			// Its room is held at the destination too.
			d := at(in.Migrate.To)
			d.vcpus += in.VCPUs
			d.mib += in.MemoryMiB
		}
	}
	now := time.Now()
	return func(n controllerapi.Node) *controllerapi.NodeStatus {
		if n.Role != controllerapi.RoleHWNode {
			return nil
		}
		hb, seen, alive := c.agents.get(n.Name, now)
		st := &controllerapi.NodeStatus{Alive: alive, Drained: drained[n.Name], LastSeen: seen, Capacity: hb.Capacity, Instances: []string{}}
		if f, ok := fences[n.Name]; ok {
			st.Fenced, st.FenceReason = true, f.Reason
		} else {
			st.Health, st.HealthWhy = c.verdict(n.Name)
		}
		if rec, ok := certs[n.ID]; ok {
			st.CertExpires = rec.NotAfter
		}
		if u := uses[n.Name]; u != nil {
			st.UsedVCPUs, st.UsedMiB = u.vcpus, u.mib
			st.Instances = append(st.Instances, u.instances...)
			slices.Sort(st.Instances)
		}
		return st
	}, nil
}
