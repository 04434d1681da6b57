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
	MemoryMiB int
}

// Instance is an instance as the scheduler sees it.
type Instance struct {
	Name      string
	Node      string // where it is assigned; "" for a new one
	VCPUs     int
	MemoryMiB int
	Group     string // anti-affinity group; "" for none
	HA        bool   // restarted elsewhere when its node fails
	Priority  int    // higher restarts first
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
	free   [][2]int // vcpus, memory free
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
		st.free = append(st.free, [2]int{n.VCPUs, n.MemoryMiB})
		st.idx[n.Name] = i
	}
	for _, in := range s.Instances {
		st.take(in, in.Node)
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
	return st.usable[i] && st.free[i][0] >= in.VCPUs && st.free[i][1] >= in.MemoryMiB
}

// ErrNoRoom says why an instance fits nowhere.
type ErrNoRoom struct {
	Instance string
	Why      []string // per node
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
	for i, n := range st.names {
		if st.usable[i] && !slices.Contains(ex, i) {
			why = append(why, fmt.Sprintf("%s: %d MiB, %d vCPUs free", n, max(st.free[i][1], 0), max(st.free[i][0], 0)))
		}
	}
	return "", &ErrNoRoom{Instance: in.Name, Why: why}
}

// Place chooses the node for a new instance (or one moving off the nodes
// in exclude).
func Place(s Snapshot, in Instance, exclude ...string) (string, error) {
	return newState(s).pick(in, exclude...)
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

// Restart plans the restart of a failed node's HA instances elsewhere,
// highest priority first (then the largest, then by name); those that fit
// nowhere wait.
func Restart(s Snapshot, failed string) Plan {
	st := newState(s)
	var todo []Instance
	for _, in := range s.Instances {
		if in.Node == failed && in.HA {
			todo = append(todo, in)
		}
	}
	slices.SortFunc(todo, func(a, b Instance) int {
		return cmp.Or(cmp.Compare(b.Priority, a.Priority), cmp.Compare(b.MemoryMiB, a.MemoryMiB), cmp.Compare(a.Name, b.Name))
	})
	var p Plan
	for _, in := range todo {
		to, err := st.pick(in, failed)
		if err != nil {
			p.Waiting = append(p.Waiting, in.Name)
			continue
		}
		st.take(in, to)
		p.Moves = append(p.Moves, Move{Instance: in.Name, From: failed, To: to})
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

// Reserve says whether the N+1 reserve holds: whether the HA instances of
// every usable node could restart on the others if that node failed. It
// returns the nodes whose failure would leave instances waiting.
func Reserve(s Snapshot) []string {
	var short []string
	for _, n := range s.Nodes {
		if !n.Usable {
			continue
		}
		if p := Restart(s, n.Name); len(p.Waiting) > 0 {
			short = append(short, n.Name)
		}
	}
	slices.Sort(short)
	return short
}
