package controller

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/controller/store"
)

// storageNodes is the controller's in-memory view of the storage nodes:
// what each last reported, and when. A node silent for the agent timeout
// is not alive.
type storageNodes struct {
	mu      sync.Mutex
	last    map[string]controllerapi.StorageReport
	seen    map[string]time.Time
	timeout time.Duration
}

func newStorageNodes(timeout time.Duration) *storageNodes {
	if timeout <= 0 {
		timeout = DefaultAgentTimeout
	}
	return &storageNodes{last: map[string]controllerapi.StorageReport{}, seen: map[string]time.Time{}, timeout: timeout}
}

// record stores a report; it says whether the node was alive before.
func (s *storageNodes) record(node string, r controllerapi.StorageReport, now time.Time) (wasAlive bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	wasAlive = now.Sub(s.seen[node]) < s.timeout
	s.last[node], s.seen[node] = r, now
	return wasAlive
}

func (s *storageNodes) get(node string, now time.Time) (controllerapi.StorageReport, time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.last[node]
	seen := s.seen[node]
	return r, seen, ok && now.Sub(seen) < s.timeout
}

// names lists the nodes that have reported.
func (s *storageNodes) names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Collect(maps.Keys(s.last))
}

func (s *storageNodes) forget(node string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.last, node)
	delete(s.seen, node)
}

// storageReport answers POST /v1/storage/report from a storage node's
// agent (its node certificate, role storage).
func (c *Controller) storageReport(w http.ResponseWriter, r *http.Request) {
	var rep controllerapi.StorageReport
	n, ok := c.agentCall(w, r, controllerapi.RoleStorage, 4<<20, &rep, &rep.Node)
	if !ok {
		return
	}
	rep.Node = n.Name
	wait, ok := waitParam(w, r, time.Minute)
	if !ok {
		return
	}
	if !c.storage.record(n.Name, rep, time.Now()) {
		attrs := []any{"node", n.Name, "volumes", len(rep.Volumes), "free_bytes", rep.Capacity.FreeBytes}
		if rep.Pair != nil {
			attrs = append(attrs, "pair", rep.Pair.Pair, "role", rep.Pair.Role, "state", rep.Pair.State)
		}
		c.log.Info("storage node up", attrs...)
	}
	// Held up to wait while the node has applied what it must.
	var d controllerapi.StorageDesired
	var err error
	c.hold(r.Context(), wait, func(final bool) bool {
		d, err = c.storageDesired(n.Name)
		return err != nil || d.Generation != rep.Generation || final
	})
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// StorageNodes lists the registered storage nodes with what they last
// reported.
func (c *Controller) StorageNodes() ([]controllerapi.StorageNode, error) {
	ns, err := c.reg.Nodes()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	out := []controllerapi.StorageNode{}
	for _, n := range ns {
		if n.Role != controllerapi.RoleStorage {
			continue
		}
		out = append(out, c.storageNode(n, now))
	}
	slices.SortFunc(out, func(a, b controllerapi.StorageNode) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func (c *Controller) storageNode(n controllerapi.Node, now time.Time) controllerapi.StorageNode {
	sn := controllerapi.StorageNode{Name: n.Name, MAC: n.MAC, IP: n.IP}
	if rep, seen, alive := c.storage.get(n.Name, now); !seen.IsZero() {
		sn.Alive, sn.LastSeen, sn.Report = alive, seen, &rep
	}
	return sn
}

func (c *Controller) listStorage(w http.ResponseWriter, r *http.Request) {
	out, err := c.StorageNodes()
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (c *Controller) showStorage(w http.ResponseWriter, r *http.Request) {
	n, err := c.reg.Node(r.PathValue("name"))
	if err == nil && n.Role != controllerapi.RoleStorage {
		err = errorf(ErrInvalid, "%s is a %s node, not a storage node; see `fabric node show %s`", n.Name, n.Role, n.Name)
	}
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, c.storageNode(n, time.Now()))
}

// bucketStorageDrained holds the storage nodes drained on an admin's word.
const bucketStorageDrained = "storage-drained"

func (c *Controller) storageDrained(tx store.Tx, node string) bool {
	_, err := tx.Get(bucketStorageDrained, node)
	return err == nil
}

// DrainStorage takes a pair node out of service without a stall: it hands
// write ownership to its peer and stops serving (its desired state says
// Drain), and DrainStorage returns once the node reports it has left and
// the peer serves. Refused when the peer is not in sync: the node's
// volumes would go offline.
func (c *Controller) DrainStorage(name, actor string) (controllerapi.StorageNode, error) {
	return c.drainStorage(name, actor, false)
}

// ShutdownStorage drains a pair node (DrainStorage) and then has its
// daemon exit: a planned shutdown without a stall. Started again, the node
// stays out of its pair until undrained.
func (c *Controller) ShutdownStorage(name, actor string) (controllerapi.StorageNode, error) {
	return c.drainStorage(name, actor, true)
}

// shutdownMark prefixes a drained record that also asks the node to exit.
const shutdownMark = "shutdown "

// storageShutdown is the shutdown a drained node is asked for ("": none):
// an identifier the node obeys once.
func (c *Controller) storageShutdown(tx store.Tx, node string) string {
	b, err := tx.Get(bucketStorageDrained, node)
	if err != nil {
		return ""
	}
	id, ok := strings.CutPrefix(string(b), shutdownMark)
	if !ok {
		return ""
	}
	return id
}

func (c *Controller) drainStorage(name, actor string, shutdown bool) (controllerapi.StorageNode, error) {
	n, err := c.reg.Node(name)
	if err != nil {
		return controllerapi.StorageNode{}, err
	}
	if n.Role != controllerapi.RoleStorage {
		return controllerapi.StorageNode{}, errorf(ErrInvalid, "%s is a %s node, not a storage node", n.Name, n.Role)
	}
	sn := c.storageNode(n, time.Now())
	switch {
	case !sn.Alive || sn.Report == nil:
		return sn, errorf(ErrConflict, "storage node %s does not report to the controller; stop it where it runs", n.Name)
	case sn.Report.Pair == nil:
		return sn, errorf(ErrConflict, "storage node %s is not in a pair: draining it would take its volumes offline", n.Name)
	case !sn.Report.Drained && (sn.Report.Pair.State != "in sync" || !sn.Report.Pair.PeerConnected):
		return sn, errorf(ErrConflict, "%s's peer %s is not in sync with it (%s): draining %s now would take its volumes offline; wait for the resync (`fabric storage show %s`)",
			n.Name, sn.Report.Pair.Peer, sn.Report.Pair.State, n.Name, n.Name)
	}
	peer := sn.Report.Pair.Peer
	record, what := time.Now().UTC().Format(time.RFC3339Nano), "drained"
	if shutdown {
		record, what = shutdownMark+record, "shut down"
	}
	if err := c.reg.update(func(tx store.Tx) error {
		if err := tx.Put(bucketStorageDrained, n.Name, []byte(record)); err != nil {
			return err
		}
		if _, err := bumpFenceGen(tx); err != nil {
			return err
		}
		return appendEvent(tx, controllerapi.Event{Time: time.Now().UTC(), Type: controllerapi.EventNodeUpdated, Node: n.Name, MAC: n.MAC, Actor: actor,
			Message: fmt.Sprintf("storage node %s %s: it hands its volumes to %s and stops serving", n.Name, what, peer)})
	}); err != nil {
		return sn, err
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		sn = c.storageNode(n, time.Now())
		var peerServes bool
		if pn, err := c.reg.Node(peer); err == nil {
			ps := c.storageNode(pn, time.Now())
			peerServes = ps.Alive && ps.Report != nil && ps.Report.Pair != nil && ps.Report.Pair.Serving && ps.Report.Pair.Role == "owner"
		}
		if sn.Report != nil && sn.Report.Drained && sn.Report.Pair != nil && !sn.Report.Pair.Serving && peerServes {
			return sn, nil
		}
		if time.Now().After(deadline) {
			return sn, errorf(ErrNodeFailed, "storage node %s was told to drain, but within 15 s it has not reported leaving the pair with %s serving alone (see `fabric storage show %s`)", n.Name, peer, n.Name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// UndrainStorage brings a drained node back into its pair (through a
// resync); with wait > 0 it returns once the pair is in sync again.
func (c *Controller) UndrainStorage(name, actor string, wait time.Duration) (controllerapi.StorageNode, error) {
	n, err := c.reg.Node(name)
	if err != nil {
		return controllerapi.StorageNode{}, err
	}
	var was bool
	if err := c.reg.update(func(tx store.Tx) error {
		if was = c.storageDrained(tx, n.Name); !was {
			return nil
		}
		if err := tx.Delete(bucketStorageDrained, n.Name); err != nil {
			return err
		}
		if _, err := bumpFenceGen(tx); err != nil {
			return err
		}
		return appendEvent(tx, controllerapi.Event{Time: time.Now().UTC(), Type: controllerapi.EventNodeUpdated, Node: n.Name, MAC: n.MAC, Actor: actor,
			Message: fmt.Sprintf("storage node %s undrained: it rejoins its pair through a resync", n.Name)})
	}); err != nil {
		return controllerapi.StorageNode{}, err
	}
	if !was {
		return c.storageNode(n, time.Now()), errorf(ErrInvalid, "storage node %s is not drained", n.Name)
	}
	deadline := time.Now().Add(wait)
	for {
		sn := c.storageNode(n, time.Now())
		if sn.Report != nil && !sn.Report.Drained && sn.Report.Pair != nil && sn.Report.Pair.State == "in sync" && sn.Report.Pair.Serving {
			return sn, nil
		}
		if wait <= 0 {
			return sn, nil
		}
		if time.Now().After(deadline) {
			state := "not reporting"
			if sn.Report != nil && sn.Report.Pair != nil {
				state = sn.Report.Pair.State
			}
			return sn, errorf(ErrNodeFailed, "storage node %s rejoins its pair but is not in sync within %v (%s); `fabric storage show %s` follows the resync", n.Name, wait, state, n.Name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// storageAction answers POST /v1/storage/{name}/ACTION with do's result
// (drain, shutdown).
func (c *Controller) storageAction(do func(name, actor string) (controllerapi.StorageNode, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sn, err := do(r.PathValue("name"), actorOf(r))
		if err != nil {
			c.fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, sn)
	}
}

func (c *Controller) undrainStorage(w http.ResponseWriter, r *http.Request) {
	wait, ok := waitParam(w, r, time.Hour)
	if !ok {
		return
	}
	sn, err := c.UndrainStorage(r.PathValue("name"), actorOf(r), wait)
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, sn)
}
