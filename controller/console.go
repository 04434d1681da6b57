package controller

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

// consoleRequests are the console requests the agents have yet to
// answer, by node; each lasts a few seconds (the agent answers with its
// next heartbeat).
type consoleRequests struct {
	mu   sync.Mutex
	next uint64
	reqs map[string][]consoleRequest
}

type consoleRequest struct {
	controllerapi.ConsoleRequest
	until time.Time
}

// consoleRequestTTL is how long a request stays in a node's desired state.
const consoleRequestTTL = 5 * time.Second

// add records a request for node and returns its ID.
func (cr *consoleRequests) add(node string, r controllerapi.ConsoleRequest, now time.Time) uint64 {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	if cr.reqs == nil {
		cr.reqs = map[string][]consoleRequest{}
	}
	cr.next++
	r.ID = cr.next
	cr.reqs[node] = append(cr.reqs[node], consoleRequest{r, now.Add(consoleRequestTTL)})
	return r.ID
}

// pending returns node's unexpired requests, dropping the expired ones.
func (cr *consoleRequests) pending(node string, now time.Time) []controllerapi.ConsoleRequest {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	var out []controllerapi.ConsoleRequest
	keep := cr.reqs[node][:0]
	for _, r := range cr.reqs[node] {
		if now.Before(r.until) {
			keep = append(keep, r)
			out = append(out, r.ConsoleRequest)
		}
	}
	if len(keep) == 0 {
		delete(cr.reqs, node)
	} else {
		cr.reqs[node] = keep
	}
	return out
}

// withoutConsoles is a heartbeat as the controller keeps it: the console
// logs it carried are kept apart, per instance.
func withoutConsoles(hb controllerapi.Heartbeat) controllerapi.Heartbeat {
	hb.Consoles = nil
	return hb
}

// console returns what an agent sent for console request id.
func (a *agents) console(instance string, id uint64) (controllerapi.ConsoleTail, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, ok := a.consoles[instance]
	return t, ok && t.ID == id
}

// maxConsoleBytes caps one answer: an agent's heartbeat body is at most
// 1 MiB.
const maxConsoleBytes = 256 << 10

// Console asks the node an instance runs on for part of its serial
// console log and waits up to timeout for the answer.
func (c *Controller) Console(name string, from int64, max int, timeout time.Duration) (controllerapi.ConsoleTail, error) {
	in, err := c.Instance(name)
	if err != nil {
		return controllerapi.ConsoleTail{}, err
	}
	if in.Node == "" {
		return controllerapi.ConsoleTail{}, errorf(ErrConflict, "instance %s is on no node", name)
	}
	if _, _, alive := c.agents.get(in.Node, time.Now()); !alive {
		return controllerapi.ConsoleTail{}, errorf(ErrConflict, "the agent of %s, where %s runs, is not reporting: its console log cannot be fetched", in.Node, name)
	}
	if max <= 0 || max > maxConsoleBytes {
		max = maxConsoleBytes
	}
	id := c.consoles.add(in.Node, controllerapi.ConsoleRequest{Instance: name, From: from, Max: max}, time.Now())
	c.broadcast() // the node's held heartbeat returns with the request
	var t controllerapi.ConsoleTail
	if !c.waitAgents(timeout, func() bool {
		var ok bool
		t, ok = c.agents.console(name, id)
		return ok
	}) {
		return t, errorf(ErrNodeFailed, "%s did not send the console log of %s within %s", in.Node, name, timeout)
	}
	if t.Error != "" {
		return t, errorf(ErrConflict, "%s", t.Error)
	}
	return t, nil
}

func (c *Controller) showConsole(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	from, max := int64(-1), 64<<10
	if v := q.Get("from"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < -1 {
			writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("from=%q: want a byte offset, or -1 for the end", v))
			return
		}
		from = n
	}
	if v := q.Get("max"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("max=%q: want a number of bytes", v))
			return
		}
		max = n
	}
	t, err := c.Console(r.PathValue("name"), from, max, 10*time.Second)
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}
