package controller

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/controller/store"
	"github.com/fabric-project/fabric/storagenode/witness"
)

// Storage pairs made by the controller (docs/storage-pairs.md): two
// storage nodes that report to it hold the same volumes, and the
// controller is the pair's witness (it grants write ownership and records
// which node holds the newest data). Volumes placed on a pair are in both
// nodes' desired state.

// bucketPairs holds the pairs: name -> pairRecord; bucketPairAddrs each
// paired node's replication address as it was when the pair was made.
const (
	bucketPairs     = "pairs"
	bucketPairAddrs = "pair-addrs"
)

// WitnessFile is the witness's state in the state directory.
const WitnessFile = "witness.json"

// witnessLease is the write-ownership lease the controller grants.
const witnessLease = 1500 * time.Millisecond

type pairRecord struct {
	Name    string    `json:"name"`
	Nodes   [2]string `json:"nodes"`
	Created time.Time `json:"created"`
}

func (p pairRecord) peer(node string) string {
	if p.Nodes[0] == node {
		return p.Nodes[1]
	}
	return p.Nodes[0]
}

func (c *Controller) pairList(tx store.Tx) ([]pairRecord, error) {
	var out []pairRecord
	err := tx.ForEach(bucketPairs, "", func(_ string, v []byte) error {
		var p pairRecord
		if err := json.Unmarshal(v, &p); err != nil {
			return err
		}
		out = append(out, p)
		return nil
	})
	return out, err
}

// pairOf finds node's pair.
func (c *Controller) pairOf(tx store.Tx, node string) (pairRecord, bool, error) {
	ps, err := c.pairList(tx)
	for _, p := range ps {
		if slices.Contains(p.Nodes[:], node) {
			return p, true, err
		}
	}
	return pairRecord{}, false, err
}

// storagePairSpec is node's pair in its desired state: the peer's
// replication address as the peer last reported it.
func (c *Controller) storagePairSpec(tx store.Tx, node string) (*controllerapi.StoragePairSpec, error) {
	p, ok, err := c.pairOf(tx, node)
	if err != nil || !ok {
		return nil, err
	}
	peer := p.peer(node)
	addr, err := tx.Get(bucketPairAddrs, peer)
	if err != nil {
		return nil, nil // not known yet: the pair forms once the peer has reported
	}
	return &controllerapi.StoragePairSpec{Name: p.Name, Peer: peer, PeerAddr: string(addr)}, nil
}

// CreatePair makes storage nodes a and b a pair and returns once it has
// formed: one node owns writes, the other follows in sync.
func (c *Controller) CreatePair(req controllerapi.PairRequest, actor string) (controllerapi.StoragePairInfo, error) {
	var none controllerapi.StoragePairInfo
	if len(req.Nodes) != 2 {
		return none, errorf(ErrInvalid, "a pair is two storage nodes, not %d", len(req.Nodes))
	}
	a, b := req.Nodes[0], req.Nodes[1]
	if a == b {
		return none, errorf(ErrInvalid, "%s cannot pair with itself: a pair is two storage nodes on different machines", a)
	}
	if req.Name == "" {
		req.Name = a + "-" + b
	}
	if err := checkName("pair", req.Name); err != nil {
		return none, err
	}
	now := time.Now()
	addrs := map[string]string{}
	for _, name := range req.Nodes {
		n, err := c.reg.Node(name)
		if err != nil {
			return none, err
		}
		if n.Role != controllerapi.RoleStorage {
			return none, errorf(ErrInvalid, "%s is a %s node, not a storage node", n.Name, n.Role)
		}
		sn := c.storageNode(n, now)
		switch {
		case !sn.Alive || sn.Report == nil:
			return none, errorf(ErrConflict, "storage node %s does not report to the controller; a pair forms between two live nodes (start it with `fabricd storage --controller ... --replication-listen HOST:PORT`)", n.Name)
		case sn.Report.Pair != nil:
			return none, errorf(ErrConflict, "storage node %s is already in pair %s (set by its own --pair flags)", n.Name, sn.Report.Pair.Pair)
		case sn.Report.Replication == "":
			return none, errorf(ErrConflict, "storage node %s runs without --replication-listen: it has no address for its peer's replication connection", n.Name)
		}
		var exported []string
		for _, v := range sn.Report.Volumes {
			if v.Addr != "" {
				exported = append(exported, v.Name+" at "+v.Addr)
			}
		}
		if len(exported) > 0 {
			return none, errorf(ErrConflict, "storage node %s exports %s: a node joins a pair empty (every volume it exports becomes one of the pair's); delete or move them first",
				n.Name, strings.Join(exported, ", "))
		}
		addrs[name] = sn.Report.Replication
	}
	rec := pairRecord{Name: req.Name, Nodes: [2]string{a, b}, Created: now.UTC()}
	if err := c.reg.update(func(tx store.Tx) error {
		if _, err := tx.Get(bucketPairs, req.Name); err == nil {
			return errorf(ErrConflict, "pair %s exists", req.Name)
		}
		for _, name := range req.Nodes {
			if p, ok, err := c.pairOf(tx, name); err != nil {
				return err
			} else if ok {
				return errorf(ErrConflict, "storage node %s is already in pair %s", name, p.Name)
			}
			vols, err := c.storageVolumes(tx, name)
			if err != nil {
				return err
			}
			for _, v := range vols {
				if v.Addr != "" {
					return errorf(ErrConflict, "storage node %s holds volume %s for the controller: a node joins a pair empty", name, v.Name)
				}
			}
		}
		if err := putJSON(tx, bucketPairs, req.Name, rec); err != nil {
			return err
		}
		for name, addr := range addrs {
			if err := tx.Put(bucketPairAddrs, name, []byte(addr)); err != nil {
				return err
			}
		}
		if _, err := bumpFenceGen(tx); err != nil {
			return err
		}
		return appendEvent(tx, controllerapi.Event{Time: now.UTC(), Type: controllerapi.EventNodeUpdated, Node: a, Actor: actor,
			Message: fmt.Sprintf("storage pair %s made of %s and %s: new volumes go to both", req.Name, a, b)})
	}); err != nil {
		return none, err
	}
	c.log.Info("storage pair made", "pair", req.Name, "nodes", req.Nodes)
	deadline := time.Now().Add(30 * time.Second)
	for {
		info := c.pairInfo(rec, time.Now())
		if info.State == "in sync" {
			return info, nil
		}
		if time.Now().After(deadline) {
			return info, errorf(ErrNodeFailed, "pair %s is recorded, but has not formed within 30 s (%s; see `fabric storage show %s` and `fabric storage show %s`)", req.Name, info.State, a, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pairInfo is pair p's state from its nodes' reports.
func (c *Controller) pairInfo(p pairRecord, now time.Time) controllerapi.StoragePairInfo {
	info := controllerapi.StoragePairInfo{Name: p.Name, Nodes: p.Nodes[:], Created: p.Created, Members: map[string]string{}, FreeBytes: -1}
	var up, synced int
	var ownerEpoch uint64
	for _, name := range p.Nodes {
		n, err := c.reg.Node(name)
		if err != nil {
			info.Members[name] = "not registered"
			continue
		}
		sn := c.storageNode(n, now)
		switch {
		case !sn.Alive || sn.Report == nil:
			info.Members[name] = "down"
			continue
		case now.Sub(sn.LastSeen) > 2*time.Second:
			// A node reports every second: its last word is stale (it
			// may have died), though it is not counted down yet.
			info.Members[name] = fmt.Sprintf("not heard for %.0f s", now.Sub(sn.LastSeen).Seconds())
			continue
		case sn.Report.Pair == nil || sn.Report.Pair.Pair != p.Name:
			info.Members[name] = "not in the pair yet"
		default:
			rp := sn.Report.Pair
			info.Members[name] = rp.Role + ", " + rp.State
			// A node killed a moment ago still counts as reporting, with
			// its last word: of two owners the newer epoch is the owner.
			if rp.Role == "owner" && rp.Serving && rp.Epoch >= ownerEpoch {
				info.Owner, ownerEpoch = name, rp.Epoch
			}
			if rp.State == "in sync" && rp.Serving {
				synced++
			}
		}
		up++
		if f := sn.Report.Capacity.FreeBytes; info.FreeBytes < 0 || f < info.FreeBytes {
			info.FreeBytes = f
		}
	}
	info.FreeBytes = max(info.FreeBytes, 0)
	peer := p.peer(info.Owner)
	switch pv := info.Members[peer]; {
	case synced == 2:
		info.State = "in sync"
	case up == 0:
		info.State = "down"
	case info.Owner == "":
		info.State = "no owner yet" // forming, or failing over
	case pv == "down":
		info.State = "degraded: " + peer + " is down"
	case strings.Contains(pv, "resync"):
		info.State = "resyncing " + peer + " (" + pv + ")"
	default:
		info.State = "degraded: " + peer + " does not serve (" + pv + ")"
	}
	return info
}

// pairStateKey is a pair state without its detail in parentheses: what
// changes enough to be an event.
func pairStateKey(s string) string {
	if i := strings.Index(s, " ("); i > 0 {
		return s[:i]
	}
	return s
}

// Pairs lists the pairs the controller made.
func (c *Controller) Pairs() ([]controllerapi.StoragePairInfo, error) {
	var ps []pairRecord
	if err := c.st.View(func(tx store.Tx) (err error) {
		ps, err = c.pairList(tx)
		return err
	}); err != nil {
		return nil, err
	}
	out := []controllerapi.StoragePairInfo{}
	now := time.Now()
	for _, p := range ps {
		out = append(out, c.pairInfo(p, now))
	}
	slices.SortFunc(out, func(a, b controllerapi.StoragePairInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func (c *Controller) createPair(w http.ResponseWriter, r *http.Request) {
	var req controllerapi.PairRequest
	if !decode(w, r, &req) {
		return
	}
	info, err := c.CreatePair(req, actorOf(r))
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, info)
}

func (c *Controller) listPairs(w http.ResponseWriter, r *http.Request) {
	out, err := c.Pairs()
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// storageWitness answers a pair node's witness request
// (POST /v1/storage/witness/v1/lease, its node certificate): only for
// itself, and only in the pair the controller made it one of.
func (c *Controller) storageWitness(w http.ResponseWriter, r *http.Request) {
	n, _, err := c.agentAuth(r, controllerapi.RoleStorage)
	if err != nil {
		c.fail(w, err)
		return
	}
	var req witness.Request
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		c.fail(w, errorf(ErrInvalid, "witness request: %v", err))
		return
	}
	var p pairRecord
	var ok bool
	if err := c.st.View(func(tx store.Tx) (err error) {
		p, ok, err = c.pairOf(tx, n.Name)
		return err
	}); err != nil {
		c.fail(w, err)
		return
	}
	if req.Node != n.Name || !ok || p.Name != req.Pair || (req.Peer != "" && req.Peer != p.peer(n.Name)) {
		c.fail(w, errorf(ErrForbidden, "%s may ask the witness for itself in its own pair only", n.Name))
		return
	}
	rep, err := c.wit.Do(req)
	if err != nil {
		c.fail(w, errorf(ErrInvalid, "%v", err))
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

// storageRemovable refuses to forget a storage node that holds the
// controller's volumes or is one of a pair: its volumes would be lost, or
// the pair left with a member the controller no longer knows. Even with
// --force: what is lost here is data.
func (c *Controller) storageRemovable(node string) error {
	var vols []controllerapi.StorageVolumeSpec
	var p pairRecord
	var paired bool
	if err := c.st.View(func(tx store.Tx) (err error) {
		if vols, err = c.storageVolumes(tx, node); err != nil {
			return err
		}
		p, paired, err = c.pairOf(tx, node)
		return err
	}); err != nil {
		return err
	}
	var names []string
	for _, v := range vols {
		if v.Addr != "" {
			names = append(names, v.Name)
		}
	}
	switch {
	case paired && len(names) > 0:
		return errorf(ErrConflict, "storage node %s is one of pair %s, which holds %s; removing a pair member is not built: keep the node (drain it for maintenance: `fabric storage drain %s`)",
			node, p.Name, strings.Join(names, ", "), node)
	case paired:
		return errorf(ErrConflict, "storage node %s is one of pair %s; removing a pair member is not built", node, p.Name)
	case len(names) > 0:
		return errorf(ErrConflict, "storage node %s holds the only copy of %s; delete the instances and nodes those belong to first", node, strings.Join(names, ", "))
	}
	return nil
}
