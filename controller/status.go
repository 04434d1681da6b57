package controller

import (
	"net/http"
	"slices"
	"strings"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/controller/scheduler"
	"github.com/fabric-project/fabric/controller/store"
)

// problemTypes are the events `fabric status` lists as recent problems.
var problemTypes = []string{
	controllerapi.EventEnrollRefused, controllerapi.EventAgentRefused, controllerapi.EventMigrationFailed,
	controllerapi.EventInstanceNodeError, controllerapi.EventAddrConflict, controllerapi.EventUnknownMAC,
}

// Status summarises the fabric: nodes by state, the live hardware nodes'
// capacity and its use, instances by state, and the last problems among
// the newest events.
func (c *Controller) Status() (controllerapi.Status, error) {
	st := controllerapi.Status{Controller: controllerapi.ControllerStatus{Started: c.started.UTC(), BootIface: c.cfg.Boot.Iface},
		Instances: map[string]int{}, Problems: []controllerapi.Event{}}
	st.Controller.CAPin, _ = controllerapi.CAPin(c.ca.CertPEM)
	ns, err := c.reg.Nodes()
	if err != nil {
		return st, err
	}
	ins, err := listJSON[controllerapi.Instance](c.st, bucketInstances)
	if err != nil {
		return st, err
	}
	status, err := c.nodeStatuses(ins)
	if err != nil {
		return st, err
	}
	for _, n := range ns {
		if n.Role != controllerapi.RoleHWNode {
			st.Nodes.Storage++
			continue
		}
		st.Nodes.HWNodes++
		ns := status(n)
		switch {
		case ns.Alive:
			st.Nodes.Alive++
			st.Capacity.VCPUs += ns.Capacity.VCPUs * c.cfg.vcpuRatio()
			st.Capacity.MemoryMiB += ns.Capacity.MemoryMiB
			st.Capacity.VCPUsUsed += ns.UsedVCPUs
			st.Capacity.MemoryUsedMiB += ns.UsedMiB
		case ns.LastSeen.IsZero():
			st.Nodes.NotReported++
		default:
			st.Nodes.Dead++
		}
		if ns.Drained {
			st.Nodes.Drained++
		}
		if ns.Fenced {
			st.Nodes.Fenced++
		}
	}
	for i := range ins {
		c.fillState(&ins[i])
		state := ins[i].State
		if ins[i].Migrate != nil {
			state = controllerapi.StateMigrating
		}
		if state == "" || strings.HasPrefix(state, "unknown") { // "unknown (node hn1 not reporting)"
			state = "unknown"
		}
		st.Instances[state]++
	}
	c.placeMu.Lock()
	v, err := c.snapshot()
	c.placeMu.Unlock()
	if err != nil {
		return st, err
	}
	short := scheduler.Reserve(v.snap)
	st.Reserve.Met = len(short) == 0
	for _, s := range short {
		st.Reserve.Short = append(st.Reserve.Short, controllerapi.Shortfall{Node: s.Node, Waiting: s.Waiting})
	}
	if st.Pairs, err = c.Pairs(); err != nil {
		return st, err
	}
	// The newest 1000 events are enough to show what went wrong lately.
	var last uint64
	_ = c.st.View(func(tx store.Tx) error { last = tx.Seq(bucketEvents); return nil })
	st.Controller.Events = last
	from := uint64(1)
	if last > 1000 {
		from = last - 999
	}
	evs, err := c.reg.Events(from, 1000)
	if err != nil {
		return st, err
	}
	for _, ev := range evs {
		if slices.Contains(problemTypes, ev.Type) {
			st.Problems = append(st.Problems, ev)
		}
	}
	if len(st.Problems) > 10 {
		st.Problems = st.Problems[len(st.Problems)-10:]
	}
	return st, nil
}

func (c *Controller) status(w http.ResponseWriter, r *http.Request) {
	st, err := c.Status()
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}
