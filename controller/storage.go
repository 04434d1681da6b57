package controller

import (
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
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
	var wait time.Duration
	if s := r.URL.Query().Get("wait"); s != "" {
		var err error
		if wait, err = time.ParseDuration(s); err != nil || wait < 0 || wait > time.Minute {
			writeError(w, http.StatusBadRequest, controllerapi.CodeInvalid, "wait must be a duration up to 1m")
			return
		}
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
