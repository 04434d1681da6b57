// Package scheduler decides where instances run: a pure function from a
// read-only snapshot of the fabric (nodes with liveness, drain, fence and
// capacity; instances with their groups and priorities) to a plan, as
// Nomad's scheduler does. The controller takes the snapshot under its
// placement lock and commits the plan; nothing here talks to a node.
//
// Policies:
//   - capacity: memory is never overcommitted; vCPUs up to the node's
//     overcommitted count (the snapshot gives it);
//   - anti-affinity groups: no two members of a group on one node while
//     another node that fits has none;
//   - the N+1 reserve: Reserve says which nodes' failure would leave HA
//     instances without room (placement does not refuse for it: the
//     controller reports it);
//   - storage reachability: a node that cannot reach any storage node
//     holding an instance's volume is no candidate for it;
//   - only live, undrained, unfenced nodes take instances;
//   - among the nodes left, the one with the most free memory (ties: name).
package scheduler

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Node is a hardware node as the scheduler sees it.
type Node struct {
	Name      string
	Usable    bool // alive, not drained, not fenced
	VCPUs     int  // vCPUs it offers (overcommit included)
	MemoryMiB int  // memory it offers guests
	// Storage lists the storage nodes its AoE frames reach. With
	// StorageKnown false nobody knows, and no placement is refused for it.
	Storage      []string
	StorageKnown bool
}

// Instance is an instance as the scheduler sees it.
type Instance struct {
	Name      string
	Node      string // where it is assigned; "" for a new one
	VCPUs     int
	MemoryMiB int
	Group     string // anti-affinity group; "" for none
	HA        bool   // meant to run, and restarted elsewhere when its node fails
	Priority  int    // higher restarts first
	// Also is a second node whose room the instance holds: the
	// destination of its migration.
	Also string
	// Storage lists the storage nodes holding its volume: only a node
	// that reaches one of them can run it (none listed: any node).
	Storage []string
}

// Snapshot is the fabric at one moment.
type Snapshot struct {
	Nodes     []Node
	Instances []Instance
}

// state is the snapshot's free room and group members per node, by node
// index (sorted by name).
type state struct {
	names  []string
	usable []bool
	reach  [][]string // nil: unknown
	free   [][2]int   // vcpus, memory free
	idx    map[string]int
	groups map[string][]int // group -> members per node
}

func newState(s Snapshot) *state {
	nodes := slices.Clone(s.Nodes)
	slices.SortFunc(nodes, func(a, b Node) int { return cmp.Compare(a.Name, b.Name) })
	st := &state{idx: map[string]int{}, groups: map[string][]int{}}
	for i, n := range nodes {
		st.names = append(st.names, n.Name)
		st.usable = append(st.usable, n.Usable)
		reach := n.Storage
		if n.StorageKnown && reach == nil {
			reach = []string{}
		}
		st.reach = append(st.reach, reach)
		st.free = append(st.free, [2]int{n.VCPUs, n.MemoryMiB})
		st.idx[n.Name] = i
	}
	for _, in := range s.Instances {
		st.take(in, in.Node)
		if in.Also != "" && in.Also != in.Node {
			st.take(in, in.Also)
		}
	}
	return st
}

func (st *state) take(in Instance, node string) {
	i, ok := st.idx[node]
	if !ok {
		return // unassigned, or a node the snapshot does not list
	}
	st.free[i][0] -= in.VCPUs
	st.free[i][1] -= in.MemoryMiB
	if in.Group != "" {
		g := st.groups[in.Group]
		if g == nil {
			g = make([]int, len(st.names))
			st.groups[in.Group] = g
		}
		g[i]++
	}
}

func (st *state) fits(i int, in Instance) bool {
	return st.usable[i] && st.free[i][0] >= in.VCPUs && st.free[i][1] >= in.MemoryMiB && st.reaches(i, in)
}

// reaches says whether node i reaches a storage node holding in's volume.
func (st *state) reaches(i int, in Instance) bool {
	if len(in.Storage) == 0 || st.reach[i] == nil {
		return true
	}
	for _, s := range in.Storage {
		if slices.Contains(st.reach[i], s) {
			return true
		}
	}
	return false
}

// whyNot says why in does not fit on usable node i.
func (st *state) whyNot(i int, in Instance) string {
	if !st.reaches(i, in) {
		return fmt.Sprintf("%s: reaches no storage node holding the disk (%s)", st.names[i], strings.Join(in.Storage, ", "))
	}
	return fmt.Sprintf("%s: %d MiB, %d vCPUs free", st.names[i], max(st.free[i][1], 0), max(st.free[i][0], 0))
}

// ErrNoRoom says why an instance fits nowhere.
type ErrNoRoom struct {
	Instance string
	Why      []string // per node
	// Unreachable (from Check): the node has room, but reaches none of
	// the storage nodes holding the instance's disk.
	Unreachable bool
}

func (e *ErrNoRoom) Error() string {
	if len(e.Why) == 0 {
		return fmt.Sprintf("no usable hardware node for %s", e.Instance)
	}
	return fmt.Sprintf("no hardware node has room for %s (%s)", e.Instance, strings.Join(e.Why, "; "))
}

// pick chooses a node for in, not one of exclude: the usable node that
// fits with no member of in's group if there is one, else any that fits;
// the most free memory wins (ties: the first by name).
func (st *state) pick(in Instance, exclude ...string) (string, error) {
	var ex []int
	for _, e := range exclude {
		if i, ok := st.idx[e]; ok {
			ex = append(ex, i)
		}
	}
	g := st.groups[in.Group] // nil: no group, or no member yet
	best, bestSpread, bestMem := -1, false, -1
	for i := range st.names {
		if !st.fits(i, in) || slices.Contains(ex, i) {
			continue
		}
		spread := g == nil || g[i] == 0
		if mem := st.free[i][1]; best < 0 || spread && !bestSpread || spread == bestSpread && mem > bestMem {
			best, bestSpread, bestMem = i, spread, mem
		}
	}
	if best >= 0 {
		return st.names[best], nil
	}
	var why []string
	for i := range st.names {
		if st.usable[i] && !slices.Contains(ex, i) {
			why = append(why, st.whyNot(i, in))
		}
	}
	return "", &ErrNoRoom{Instance: in.Name, Why: why}
}

// Place chooses the node for a new instance (or one moving off the nodes
// in exclude).
func Place(s Snapshot, in Instance, exclude ...string) (string, error) {
	return newState(s).pick(in, exclude...)
}

// Check says why in cannot go on node (nil when it can): no room, or the
// node reaches none of its storage. A node the snapshot does not list,
// or lists as unusable, gets ErrNoRoom with no reason; the caller knows
// better why (dead, drained, fenced).
func Check(s Snapshot, in Instance, node string) error {
	st := newState(s)
	i, ok := st.idx[node]
	if !ok || !st.usable[i] {
		return &ErrNoRoom{Instance: in.Name}
	}
	if st.fits(i, in) {
		return nil
	}
	return &ErrNoRoom{Instance: in.Name, Why: []string{st.whyNot(i, in)}, Unreachable: !st.reaches(i, in)}
}

// Free returns the vCPUs and memory left on node once the snapshot's
// instances are counted (negative: overcommitted).
func Free(s Snapshot, node string) (vcpus, memoryMiB int) {
	st := newState(s)
	if i, ok := st.idx[node]; ok {
		return st.free[i][0], st.free[i][1]
	}
	return 0, 0
}

// Move is one instance's new node in a plan.
type Move struct {
	Instance string
	From, To string
}

// Plan is what the controller commits: moves, and instances that wait
// for room (in the order they will be tried).
type Plan struct {
	Moves   []Move
	Waiting []string
}

// Restart plans the restart of the failed nodes' HA instances elsewhere,
// all together: highest priority first (then the largest, then by name),
// whichever node they ran on; those that fit nowhere wait.
func Restart(s Snapshot, failed ...string) Plan {
	st := newState(s)
	var todo []Instance
	for _, in := range s.Instances {
		if in.HA && slices.Contains(failed, in.Node) {
			todo = append(todo, in)
		}
	}
	slices.SortFunc(todo, func(a, b Instance) int {
		return cmp.Or(cmp.Compare(b.Priority, a.Priority), cmp.Compare(b.MemoryMiB, a.MemoryMiB), cmp.Compare(a.Name, b.Name))
	})
	var p Plan
	for _, in := range todo {
		to, err := st.pick(in, failed...)
		if err != nil {
			p.Waiting = append(p.Waiting, in.Name)
			continue
		}
		st.take(in, to)
		p.Moves = append(p.Moves, Move{Instance: in.Name, From: in.Node, To: to})
	}
	return p
}

// Drain plans moving every instance off node; it fails up front, with the
// numbers, when not all of them fit elsewhere.
func Drain(s Snapshot, node string) (Plan, error) {
	st := newState(s)
	var todo []Instance
	for _, in := range s.Instances {
		if in.Node == node {
			todo = append(todo, in)
		}
	}
	slices.SortFunc(todo, func(a, b Instance) int {
		return cmp.Or(cmp.Compare(b.MemoryMiB, a.MemoryMiB), cmp.Compare(a.Name, b.Name))
	})
	var p Plan
	for _, in := range todo {
		to, err := st.pick(in, node)
		if err != nil {
			return Plan{}, fmt.Errorf("cannot drain %s: %w", node, err)
		}
		st.take(in, to)
		p.Moves = append(p.Moves, Move{Instance: in.Name, From: node, To: to})
	}
	return p, nil
}

// Shortfall is a node whose failure would leave HA instances waiting.
type Shortfall struct {
	Node    string
	Waiting []string // in restart order
}

// Reserve says whether the N+1 reserve holds: whether the HA instances of
// every usable node could restart on the others if that node failed. It
// returns the nodes whose failure would leave instances waiting (none:
// the reserve holds), by name.
func Reserve(s Snapshot) []Shortfall {
	var short []Shortfall
	for _, n := range s.Nodes {
		if !n.Usable {
			continue
		}
		if p := Restart(s, n.Name); len(p.Waiting) > 0 {
			short = append(short, Shortfall{Node: n.Name, Waiting: p.Waiting})
		}
	}
	slices.SortFunc(short, func(a, b Shortfall) int { return cmp.Compare(a.Node, b.Node) })
	return short
}
