package controller

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/controller/scheduler"
	"github.com/fabric-project/fabric/controller/store"
)

// Fencing: a hardware node the controller declares failed is cut off from
// its disks on every storage node before any of its instances runs
// anywhere else. The fence is part of the storage nodes' desired state
// (StorageDesired.Fence: the node's MACs, whose frames every target then
// ignores); the controller waits until every live storage node reports the
// generation that carries it.

const (
	bucketFences = "fences"      // node name -> fenceRecord JSON
	keyFenceGen  = "#generation" // in bucketFences: the storage desired-state generation
)

type fenceRecord struct {
	Node   string    `json:"node"`
	MACs   []string  `json:"macs"`
	Reason string    `json:"reason"`
	Actor  string    `json:"actor"`
	At     time.Time `json:"at"`
	// Generation is the storage desired-state generation that carries
	// the fence: nothing restarts before every live storage node has
	// applied it.
	Generation uint64 `json:"generation,omitempty"`
}

// DefaultFenceConfirm is how long Fence waits for the storage nodes.
const DefaultFenceConfirm = 15 * time.Second

func fenceGen(tx store.Tx) uint64 {
	b, err := tx.Get(bucketFences, keyFenceGen)
	if err != nil || len(b) != 8 {
		return 1
	}
	return binary.BigEndian.Uint64(b)
}

func bumpFenceGen(tx store.Tx) (uint64, error) {
	g := fenceGen(tx) + 1
	return g, tx.Put(bucketFences, keyFenceGen, binary.BigEndian.AppendUint64(nil, g))
}

// storageDesired is what storage node node must apply: the fence (every
// storage node's), the volumes it holds for the controller, its pair, and
// whether it is drained or shut down.
func (c *Controller) storageDesired(node string) (controllerapi.StorageDesired, error) {
	d := controllerapi.StorageDesired{Fence: []string{}}
	err := c.st.View(func(tx store.Tx) error {
		d.Generation = fenceGen(tx)
		d.Drain = c.storageDrained(tx, node)
		d.Shutdown = c.storageShutdown(tx, node)
		d.ManagesVolumes = true
		var err error
		if d.Volumes, err = c.storageVolumes(tx, node); err != nil {
			return err
		}
		if d.Pair, err = c.storagePairSpec(tx, node); err != nil {
			return err
		}
		return tx.ForEach(bucketFences, "", func(k string, v []byte) error {
			if k == keyFenceGen {
				return nil
			}
			var r fenceRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			d.Fence = append(d.Fence, r.MACs...)
			return nil
		})
	})
	slices.Sort(d.Fence)
	d.Fence = slices.Compact(d.Fence)
	return d, err
}

// fenced says whether node is fenced, and why.
func (c *Controller) fenced(node string) (fenceRecord, bool) {
	var r fenceRecord
	err := c.st.View(func(tx store.Tx) error {
		b, err := tx.Get(bucketFences, node)
		if err != nil {
			return err
		}
		return json.Unmarshal(b, &r)
	})
	return r, err == nil
}

// Fence cuts a hardware node off from every disk: its MACs go into every
// storage node's fence, and Fence returns once every live storage node
// has applied it (or fails after DefaultFenceConfirm, naming the ones that
// did not). Fencing a node whose agent is alive is allowed (an admin's
// call): its guests lose their disks.
func (c *Controller) Fence(node, reason, actor string) ([]string, error) {
	n, err := c.reg.Node(node)
	if err != nil {
		return nil, err
	}
	if n.Role != controllerapi.RoleHWNode {
		return nil, errorf(ErrInvalid, "%s is a %s node; only hardware nodes are fenced", n.Name, n.Role)
	}
	macs := []string{strings.ToLower(n.MAC)}
	if hb, _, _ := c.agents.get(n.Name, time.Now()); hb.Capacity.AoEMAC != "" && !slices.Contains(macs, strings.ToLower(hb.Capacity.AoEMAC)) {
		macs = append(macs, strings.ToLower(hb.Capacity.AoEMAC))
	}
	var gen uint64
	if err := c.reg.update(func(tx store.Tx) error {
		if gen, err = bumpFenceGen(tx); err != nil {
			return err
		}
		if err := putJSON(tx, bucketFences, n.Name, fenceRecord{Node: n.Name, MACs: macs, Reason: reason, Actor: actor, At: time.Now().UTC(), Generation: gen}); err != nil {
			return err
		}
		return appendEvent(tx, controllerapi.Event{Time: time.Now().UTC(), Type: controllerapi.EventNodeFenced, Node: n.Name, MAC: n.MAC, Actor: actor,
			Message: fmt.Sprintf("%s fenced (%s): MACs %s cut off from every volume", n.Name, reason, strings.Join(macs, ", "))})
	}); err != nil {
		return nil, err
	}
	c.log.Warn("node fenced; waiting for the storage nodes", "node", n.Name, "reason", reason, "macs", macs, "generation", gen)
	return c.waitStorage(gen, DefaultFenceConfirm)
}

// waitStorage waits until every live storage node reports generation gen
// applied, and returns their names; at least one must.
func (c *Controller) waitStorage(gen uint64, timeout time.Duration) ([]string, error) {
	deadline := time.Now().Add(timeout)
	for {
		sns, err := c.StorageNodes()
		if err != nil {
			return nil, err
		}
		var ok, missing []string
		for _, sn := range sns {
			switch {
			case !sn.Alive:
			case sn.Report.Generation >= gen:
				ok = append(ok, sn.Name)
			default:
				missing = append(missing, sn.Name)
			}
		}
		if len(missing) == 0 && len(ok) > 0 {
			return ok, nil
		}
		if time.Now().After(deadline) {
			if len(ok) == 0 && len(missing) == 0 {
				return nil, errorf(ErrNodeFailed, "no storage node reports to the controller, so none can confirm the fence (start them with --controller)")
			}
			return ok, errorf(ErrNodeFailed, "storage nodes %s did not confirm the fence within %v", strings.Join(missing, ", "), timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Unfence lets a fenced node reach its disks again and take instances.
// Its agent destroys every domain the controller moved away when it next
// reports; the admin unfences after the node's repair.
func (c *Controller) Unfence(node, actor string) error {
	n, err := c.reg.Node(node)
	if err != nil {
		return err
	}
	if _, ok := c.fenced(n.Name); !ok {
		return errorf(ErrInvalid, "%s is not fenced", n.Name)
	}
	var gen uint64
	if err := c.reg.update(func(tx store.Tx) error {
		if err := tx.Delete(bucketFences, n.Name); err != nil {
			return err
		}
		if gen, err = bumpFenceGen(tx); err != nil {
			return err
		}
		return appendEvent(tx, controllerapi.Event{Time: time.Now().UTC(), Type: controllerapi.EventNodeUpdated, Node: n.Name, MAC: n.MAC, Actor: actor,
			Message: fmt.Sprintf("%s unfenced: it reaches its disks and takes instances again", n.Name)})
	}); err != nil {
		return err
	}
	_, err = c.waitStorage(gen, DefaultFenceConfirm)
	return err
}

// Failure detection. A hardware node counts as failed only when three
// witnesses agree: its agent missed heartbeats for the agent timeout, no
// storage node has seen an ATA command from its MACs for StorageQuiet,
// and it does not answer ping from the config node. An agent that died on
// a node the storage or ping still hears is reported, never fenced.

// StorageQuiet is how long the storage must have heard nothing from a node
// before it counts as a witness of the node's death.
const StorageQuiet = 4 * time.Second

// Failure detector verdicts on a node whose agent is silent, shown by
// `fabric node list`.
const (
	VerdictAgentLost = "agent lost" // a witness still hears the node: not fenced
	VerdictFailed    = "failed"     // no witness hears it: being fenced
)

// setVerdict records the detector's verdict on node ("" state: none).
func (c *Controller) setVerdict(node, state, why string) {
	c.verdictMu.Lock()
	defer c.verdictMu.Unlock()
	if c.verdicts == nil {
		c.verdicts = map[string][2]string{}
	}
	if state == "" {
		delete(c.verdicts, node)
		return
	}
	c.verdicts[node] = [2]string{state, why}
}

func (c *Controller) verdict(node string) (state, why string) {
	c.verdictMu.Lock()
	defer c.verdictMu.Unlock()
	v := c.verdicts[node]
	return v[0], v[1]
}

// watchNodes runs the failure detector until ctx ends.
func (c *Controller) watchNodes(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	lost := map[string]string{} // node -> what was last said about it
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		nodes, err := c.reg.Nodes()
		if err != nil {
			continue
		}
		for _, n := range nodes {
			if n.Role != controllerapi.RoleHWNode {
				continue
			}
			if _, f := c.fenced(n.Name); f {
				c.setVerdict(n.Name, "", "")
				continue
			}
			hb, seen, alive := c.agents.get(n.Name, time.Now())
			if alive || seen.IsZero() {
				delete(lost, n.Name)
				c.setVerdict(n.Name, "", "")
				continue
			}
			silent := time.Since(seen).Round(time.Second)
			witness, why := c.stillAlive(n, hb)
			if witness != "" {
				c.setVerdict(n.Name, VerdictAgentLost, fmt.Sprintf("agent silent %s, but %s", silent, why))
				if lost[n.Name] != witness {
					lost[n.Name] = witness
					msg := fmt.Sprintf("%s's agent is silent for %s, but %s: not fenced", n.Name, silent, why)
					c.log.Warn(msg)
					_ = c.reg.Record(controllerapi.Event{Type: controllerapi.EventAgentLost, Node: n.Name, MAC: n.MAC, Message: msg})
				}
				continue
			}
			if c.drained(n.Name) && !c.runsInstances(n.Name) {
				// A planned reboot or reimage: nothing to protect, and
				// a fence would lock the node out of its own root
				// volume when it boots again.
				c.setVerdict(n.Name, VerdictAgentLost, fmt.Sprintf("agent silent %s; drained and runs no instances: not fenced", silent))
				if lost[n.Name] != "drained" {
					lost[n.Name] = "drained"
					msg := fmt.Sprintf("%s's agent is silent for %s; %s is drained and runs no instances: not fenced", n.Name, silent, n.Name)
					c.log.Warn(msg)
					_ = c.reg.Record(controllerapi.Event{Type: controllerapi.EventAgentLost, Node: n.Name, MAC: n.MAC, Message: msg})
				}
				continue
			}
			if !c.anyStorageAlive() {
				c.setVerdict(n.Name, VerdictFailed, "no storage node reports to the controller to fence it through; its instances are not restarted")
				if lost[n.Name] != "no storage" {
					lost[n.Name] = "no storage"
					msg := fmt.Sprintf("%s looks dead, but no storage node reports to the controller to fence it through: its instances are not restarted", n.Name)
					c.log.Error(msg)
					_ = c.reg.Record(controllerapi.Event{Type: controllerapi.EventAgentLost, Node: n.Name, MAC: n.MAC, Message: msg})
				}
				continue
			}
			reason := fmt.Sprintf("agent silent %s, no AoE traffic for %v, no answer to ping", time.Since(seen).Round(100*time.Millisecond), StorageQuiet)
			c.setVerdict(n.Name, VerdictFailed, reason+"; fencing")
			if _, err := c.Fence(n.Name, reason, "failure detector"); err != nil {
				c.setVerdict(n.Name, VerdictFailed, reason+"; fence not confirmed: "+err.Error())
				c.log.Error("fencing a failed node", "node", n.Name, "err", err)
				continue
			}
			c.setVerdict(n.Name, "", "")
			delete(lost, n.Name)
		}
		c.restartFenced()
	}
}

// runsInstances reports whether any instance is placed on node.
func (c *Controller) runsInstances(node string) bool {
	ins, err := listJSON[controllerapi.Instance](c.st, bucketInstances)
	if err != nil {
		return true // unknown: fence as before
	}
	for _, in := range ins {
		if in.Node == node {
			return true
		}
	}
	return false
}

// watchStorageLoop records storage changes as events until ctx ends.
func (c *Controller) watchStorageLoop(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	sw := storageWatch{up: map[string]bool{}, pairs: map[string]string{}}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.watchStorage(&sw)
	}
}

// storageWatch is what the watch last saw of the storage: each node up or
// not, each pair's state.
type storageWatch struct {
	up    map[string]bool
	pairs map[string]string
}

// watchStorage records a storage node going silent or reporting again,
// and a pair changing state, as events: what a sysadmin reads to follow
// a storage node's death and its resync.
func (c *Controller) watchStorage(sw *storageWatch) {
	now := time.Now()
	for _, name := range c.storage.names() {
		_, seen, alive := c.storage.get(name, now)
		was, known := sw.up[name]
		sw.up[name] = alive
		switch {
		case !known || was == alive:
		case alive:
			_ = c.reg.Record(controllerapi.Event{Type: controllerapi.EventStorageUp, Node: name,
				Message: fmt.Sprintf("storage node %s reports again", name)})
		default:
			_ = c.reg.Record(controllerapi.Event{Type: controllerapi.EventStorageDown, Node: name,
				Message: fmt.Sprintf("storage node %s stopped reporting (silent %s)", name, now.Sub(seen).Round(100*time.Millisecond))})
		}
	}
	if len(sw.up) == 0 {
		return // no storage node ever reported: no pair to watch
	}
	ps, err := c.Pairs()
	if err != nil {
		return
	}
	for _, p := range ps {
		prev, known := sw.pairs[p.Name]
		if known && pairStateKey(prev) == pairStateKey(p.State) {
			continue
		}
		sw.pairs[p.Name] = p.State
		if !known {
			continue
		}
		msg := fmt.Sprintf("pair %s: %s (was %s)", p.Name, p.State, pairStateKey(prev))
		if p.Owner != "" {
			msg += "; " + p.Owner + " owns writes"
		}
		_ = c.reg.Record(controllerapi.Event{Type: controllerapi.EventPairState, Node: p.Nodes[0], Message: msg})
	}
}

func (c *Controller) anyStorageAlive() bool {
	sns, _ := c.StorageNodes()
	for _, sn := range sns {
		if sn.Alive {
			return true
		}
	}
	return false
}

// stillAlive says which witness still hears the node ("storage" or
// "ping", and what it heard), or "".
func (c *Controller) stillAlive(n controllerapi.Node, hb controllerapi.Heartbeat) (witness, what string) {
	macs := []string{strings.ToLower(n.MAC)}
	if hb.Capacity.AoEMAC != "" {
		macs = append(macs, strings.ToLower(hb.Capacity.AoEMAC))
	}
	sns, _ := c.StorageNodes()
	for _, sn := range sns {
		if !sn.Alive {
			continue
		}
		for _, m := range macs {
			if at, ok := sn.Report.Initiators[m]; ok && time.Since(at) < StorageQuiet {
				return "storage", fmt.Sprintf("storage node %s saw I/O from %s %s ago", sn.Name, m, time.Since(at).Round(100*time.Millisecond))
			}
		}
	}
	if n.IP != "" && exec.Command("ping", "-n", "-c", "1", "-W", "1", n.IP).Run() == nil {
		return "ping", fmt.Sprintf("it answers ping at %s", n.IP)
	}
	return "", ""
}

// confirmedFences lists the fenced hardware nodes whose fence every live
// storage node has applied (and at least one reports): only their
// instances may run elsewhere. For the others it says what is missing,
// once a minute.
func (c *Controller) confirmedFences() []string {
	var recs []fenceRecord
	_ = c.st.View(func(tx store.Tx) error {
		return tx.ForEach(bucketFences, "", func(k string, v []byte) error {
			var r fenceRecord
			if k != keyFenceGen && json.Unmarshal(v, &r) == nil {
				recs = append(recs, r)
			}
			return nil
		})
	})
	if len(recs) == 0 {
		return nil
	}
	sns, err := c.StorageNodes()
	if err != nil {
		return nil
	}
	var out []string
	for _, r := range recs {
		var ok, missing []string
		for _, sn := range sns {
			switch {
			case !sn.Alive:
			case sn.Report.Generation >= r.Generation:
				ok = append(ok, sn.Name)
			default:
				missing = append(missing, sn.Name)
			}
		}
		if len(ok) > 0 && len(missing) == 0 {
			out = append(out, r.Node)
			continue
		}
		if c.firstInAMinute("unconfirmed/" + r.Node) {
			why := "no storage node reports to the controller"
			if len(missing) > 0 {
				why = "storage nodes " + strings.Join(missing, ", ") + " have not applied it"
			}
			msg := fmt.Sprintf("the instances of fenced node %s are not restarted yet: %s", r.Node, why)
			c.log.Warn(msg)
			_ = c.reg.Record(controllerapi.Event{Type: controllerapi.EventInstanceNodeError, Node: r.Node, Message: msg})
		}
	}
	return out
}

// restartFreshness is how recently a node's agent must have reported for
// a restart to go there: a healthy agent reports at least every 2 s (its
// held heartbeat).
const restartFreshness = 3 * time.Second

// restartFenced restarts elsewhere the HA instances meant to run on fenced
// nodes whose fence every live storage node applied, all in one scheduler
// plan: by priority (then size) whichever node
// they ran on, so that when two nodes fail the most important instances
// get the room. Those that fit nowhere wait (an event says so once a
// minute) and are tried again at the next pass.
func (c *Controller) restartFenced() {
	fenced := c.confirmedFences()
	if len(fenced) == 0 {
		return
	}
	c.placeMu.Lock()
	defer c.placeMu.Unlock()
	v, err := c.snapshot()
	if err != nil {
		return
	}
	for _, in := range v.ins {
		if in.NoHA && in.Want == controllerapi.StateRunning && slices.Contains(fenced, in.Node) && c.firstInAMinute("noha/"+in.Name) {
			msg := fmt.Sprintf("instance %s stays down with its fenced node %s: it is not HA (created with --ha=false)", in.Name, in.Node)
			_ = c.reg.Record(controllerapi.Event{Type: controllerapi.EventInstanceNodeError, Node: in.Node, Message: msg})
		}
	}
	// A restart goes only to a node heard from lately: one whose agent
	// missed its last report may be failing too (two nodes losing power
	// a second apart), and an instance sent there would wait for that
	// node's fence before it restarts again.
	now := time.Now()
	for i, n := range v.snap.Nodes {
		if _, seen, _ := c.agents.get(n.Name, now); n.Usable && now.Sub(seen) > restartFreshness {
			v.snap.Nodes[i].Usable = false
		}
	}
	plan := scheduler.Restart(v.snap, fenced...)
	for _, m := range plan.Moves {
		in, from, to := v.ins[m.Instance], m.From, m.To
		err := c.allow(instanceVolume(in.Name), to)
		if err == nil {
			err = c.reg.update(func(tx store.Tx) error {
				cur, err := getInstance(tx, in.Name)
				if err != nil || cur.Node != from {
					return err
				}
				cur.Node, cur.Migrate, cur.Updated = to, nil, time.Now().UTC()
				cur.Restarts = append(cur.Restarts, controllerapi.Restart{At: cur.Updated, From: from, To: to, Why: from + " fenced"})
				if err := putJSON(tx, bucketInstances, in.Name, cur); err != nil {
					return err
				}
				return appendEvent(tx, controllerapi.Event{Time: cur.Updated, Type: controllerapi.EventInstanceRestarted, Node: to,
					Message: fmt.Sprintf("instance %s restarted on %s: %s failed and was fenced", in.Name, to, from)})
			})
		}
		if err != nil {
			c.log.Error("restarting an instance elsewhere", "instance", in.Name, "to", to, "err", err)
			continue
		}
		c.log.Warn("instance restarted elsewhere", "instance", in.Name, "from", from, "to", to)
	}
	for i, name := range plan.Waiting {
		if c.firstInAMinute("restart/" + name) {
			node := v.ins[name].Node
			msg := fmt.Sprintf("instance %s of fenced node %s waits for a node with room (%d of %d in the restart order, by priority)", name, node, i+1, len(plan.Waiting))
			c.log.Warn(msg)
			_ = c.reg.Record(controllerapi.Event{Type: controllerapi.EventInstanceNodeError, Node: node, Message: msg})
		}
	}
}

func (c *Controller) fenceNode(w http.ResponseWriter, r *http.Request) {
	var req controllerapi.FenceRequest
	if r.ContentLength != 0 && !decode(w, r, &req) {
		return
	}
	if req.Reason == "" {
		req.Reason = "fenced by an admin"
	}
	name := r.PathValue("name")
	ok, err := c.Fence(name, req.Reason, actorOf(r))
	if err != nil {
		c.fail(w, err)
		return
	}
	if n, err := c.reg.Node(name); err == nil {
		name = n.Name
	}
	c.restartFenced()
	writeJSON(w, http.StatusOK, controllerapi.FenceResult{Node: name, Confirmed: ok})
}

func (c *Controller) unfenceNode(w http.ResponseWriter, r *http.Request) {
	if err := c.Unfence(r.PathValue("name"), actorOf(r)); err != nil {
		c.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
