package controller

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strconv"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

// maxBody bounds every request body: the largest legitimate one is a few
// hundred bytes.
const maxBody = 64 << 10

// Handler returns the API's HTTP handler.
func (c *Controller) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.Handle("POST /v1/nodes", c.auth(c.registerNode))
	mux.Handle("GET /v1/nodes", c.auth(c.listNodes))
	mux.Handle("GET /v1/nodes/{name}", c.auth(c.showNode))
	mux.Handle("PATCH /v1/nodes/{name}", c.auth(c.updateNode))
	mux.Handle("DELETE /v1/nodes/{name}", c.auth(c.removeNode))
	mux.Handle("GET /v1/events", c.auth(c.events))
	mux.Handle("GET /v1/status", c.auth(c.status))
	mux.Handle("POST /v1/nodes/{name}/token", c.auth(c.nodeToken))
	mux.Handle("POST /v1/nodes/{name}/reset", c.auth(c.resetNode))
	mux.Handle("POST /v1/tokens", c.auth(c.createToken))
	mux.Handle("GET /v1/tokens", c.auth(c.listTokens))
	mux.Handle("DELETE /v1/tokens/{name}", c.auth(c.revokeToken))
	mux.Handle("POST /v1/nodes/{name}/drain", c.auth(c.drainNode))
	mux.Handle("POST /v1/nodes/{name}/undrain", c.auth(c.undrainNode))
	mux.Handle("POST /v1/nodes/{name}/reimage", c.auth(c.reimageNode))
	mux.Handle("POST /v1/nodes/{name}/fence", c.auth(c.fenceNode))
	mux.Handle("POST /v1/nodes/{name}/unfence", c.auth(c.unfenceNode))
	mux.Handle("PUT /v1/images/{name}", c.authUpload(c.importImage))
	mux.Handle("GET /v1/images", c.auth(c.listImages))
	mux.Handle("DELETE /v1/images/{name}", c.auth(c.deleteImage))
	mux.Handle("POST /v1/instances", c.auth(c.createInstance))
	mux.Handle("GET /v1/instances", c.auth(c.listInstances))
	mux.Handle("GET /v1/instances/{name}", c.auth(c.showInstance))
	mux.Handle("GET /v1/instances/{name}/console", c.auth(c.showConsole))
	mux.Handle("POST /v1/instances/{name}/start", c.auth(c.setState(controllerapi.StateRunning, "running")))
	mux.Handle("POST /v1/instances/{name}/stop", c.auth(c.setState(controllerapi.StateStopped, "shutoff")))
	mux.Handle("DELETE /v1/instances/{name}", c.auth(c.deleteInstance))
	mux.Handle("POST /v1/instances/{name}/migrate", c.auth(c.migrateInstance))
	mux.Handle("POST /v1/instances/{name}/limit", c.auth(c.limitInstance))
	mux.HandleFunc("POST /v1/agent/enroll", c.enroll)
	mux.HandleFunc("POST /v1/agent/heartbeat", c.heartbeat)
	mux.HandleFunc("POST /v1/agent/renew", c.renew)
	mux.HandleFunc("POST /v1/storage/report", c.storageReport)
	mux.HandleFunc("GET /v1/storage/images/{name}", c.storageImage)
	mux.HandleFunc("POST /v1/storage/witness/v1/lease", c.storageWitness)
	mux.Handle("POST /v1/storage/pairs", c.auth(c.createPair))
	mux.Handle("GET /v1/storage/pairs", c.auth(c.listPairs))
	mux.Handle("GET /v1/storage", c.auth(c.listStorage))
	mux.Handle("GET /v1/volumes", c.auth(c.listVolumes))
	mux.Handle("GET /v1/volumes/{name}", c.auth(c.showVolume))
	mux.Handle("POST /v1/volumes/{name}/resize", c.auth(c.resizeVolume))
	mux.Handle("GET /v1/storage/{name}", c.auth(c.showStorage))
	mux.Handle("POST /v1/storage/{name}/drain", c.auth(c.storageAction(c.DrainStorage)))
	mux.Handle("POST /v1/storage/{name}/shutdown", c.auth(c.storageAction(c.ShutdownStorage)))
	mux.Handle("POST /v1/storage/{name}/undrain", c.auth(c.undrainStorage))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, controllerapi.CodeNotFound, fmt.Sprintf("no API endpoint %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// auth admits requests that carry the admin credential.
func (c *Controller) auth(h http.HandlerFunc) http.Handler {
	return c.authUpload(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		h(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeJSONList answers 200 with a JSON array of items. pretty indents
// it by two spaces, as the CLI prints JSON, so that the CLI copies it out
// as it comes instead of decoding and encoding it again. Items are encoded
// in chunks, on every core, and written in order as each chunk is done:
// encoding 10,000 nodes as one value grew a 4 MB buffer by doubling (a
// third of the encoding went to copying and clearing it), and one core
// encoded while the other waited.
func writeJSONList[T any](w http.ResponseWriter, items []T, pretty bool) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	defer bw.Flush()
	if len(items) == 0 {
		_, _ = bw.WriteString("[]\n")
		return
	}
	const chunk = 256
	type part struct {
		b    []byte
		done chan struct{}
	}
	parts := make(chan *part, runtime.GOMAXPROCS(0))
	go func() {
		defer close(parts)
		for lo := 0; lo < len(items); lo += chunk {
			p := &part{done: make(chan struct{})}
			parts <- p // blocks while GOMAXPROCS chunks wait to be written
			go func(lo, hi int) {
				defer close(p.done)
				p.b = appendJSONItems(nil, items, lo, hi, pretty)
			}(lo, min(lo+chunk, len(items)))
		}
	}()
	failed := false
	for p := range parts {
		<-p.done
		if !failed {
			_, err := bw.Write(p.b)
			failed = err != nil // the client left: encode the rest, write nothing
		}
	}
	if pretty {
		_, _ = bw.WriteString("\n]\n")
	} else {
		_, _ = bw.WriteString("]\n")
	}
}

// appendJSONItems appends items[lo:hi] to b, each after the text that
// goes before it in the whole array (its opening bracket or a comma).
func appendJSONItems[T any](b []byte, items []T, lo, hi int, pretty bool) []byte {
	buf := bytes.NewBuffer(b)
	buf.Grow((hi - lo) * 256) // a node summary is about 130 bytes, a node 380
	var one, ind bytes.Buffer
	enc := json.NewEncoder(&one)
	for i := lo; i < hi; i++ {
		one.Reset()
		if err := enc.Encode(&items[i]); err != nil {
			break // cannot happen for the API's types; the client sees a broken list
		}
		elem := bytes.TrimRight(one.Bytes(), "\n")
		switch {
		case !pretty && i == 0:
			buf.WriteByte('[')
		case !pretty:
			buf.WriteByte(',')
		case i == 0:
			buf.WriteString("[\n  ")
		default:
			buf.WriteString(",\n  ")
		}
		if pretty {
			ind.Reset()
			_ = json.Indent(&ind, elem, "  ", "  ")
			elem = ind.Bytes()
		}
		buf.Write(elem)
	}
	return buf.Bytes()
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, controllerapi.ErrorResponse{Error: msg, Code: code})
}

// fail maps a registry error to its HTTP answer.
func (c *Controller) fail(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrInvalid):
		writeError(w, http.StatusBadRequest, controllerapi.CodeInvalid, err.Error())
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, controllerapi.CodeNotFound, err.Error())
	case errors.Is(err, ErrConflict):
		writeError(w, http.StatusConflict, controllerapi.CodeConflict, err.Error())
	case errors.Is(err, ErrUnauthorized):
		writeError(w, http.StatusUnauthorized, controllerapi.CodeUnauthorized, err.Error())
	case errors.Is(err, ErrRevoked):
		writeError(w, http.StatusForbidden, controllerapi.CodeRevoked, err.Error())
	case errors.Is(err, ErrForbidden):
		writeError(w, http.StatusForbidden, controllerapi.CodeForbidden, err.Error())
	case errors.Is(err, ErrNodeFailed):
		writeError(w, http.StatusBadGateway, controllerapi.CodeNodeFailed, err.Error())
	case errors.Is(err, ErrUnplaceable):
		writeError(w, http.StatusConflict, controllerapi.CodeUnplaceable, err.Error())
	case errors.Is(err, ErrExhausted):
		writeError(w, http.StatusInsufficientStorage, controllerapi.CodeExhausted, err.Error())
	default:
		c.log.Error("API request failed", "err", err)
		writeError(w, http.StatusInternalServerError, controllerapi.CodeInternal, "internal error: "+err.Error())
	}
}

// decode reads a JSON body strictly: unknown fields and trailing data are
// refused.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("trailing data after the JSON object")
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, controllerapi.CodeTooLarge, fmt.Sprintf("request body over %d bytes", maxBody))
			return false
		}
		writeError(w, http.StatusBadRequest, controllerapi.CodeInvalid, "malformed JSON body: "+err.Error())
		return false
	}
	return true
}

func (c *Controller) registerNode(w http.ResponseWriter, r *http.Request) {
	var req controllerapi.RegisterRequest
	if !decode(w, r, &req) {
		return
	}
	n, err := c.reg.RegisterAs(req, actorOf(r), remoteHost(r))
	if err != nil {
		c.fail(w, err)
		return
	}
	recorded(r) // node.registered names the token
	c.log.Info("node registered", "node", n.Name, "mac", n.MAC, "role", n.Role, "ip", n.IP)
	if err := c.ensureRootVolume(n); err != nil {
		c.log.Error("no root volume for the new node", "node", n.Name, "err", err)
		_ = c.reg.Record(controllerapi.Event{Type: controllerapi.EventNodeUpdated, Node: n.Name, MAC: n.MAC,
			Message: fmt.Sprintf("%s registered, but its root volume %s could not be made: %v", n.Name, n.RootVolume, err)})
	}
	writeJSON(w, http.StatusCreated, n)
}

func (c *Controller) listNodes(w http.ResponseWriter, r *http.Request) {
	shared, err := c.reg.sharedNodes()
	if err != nil {
		c.fail(w, err)
		return
	}
	ins, _ := listJSON[controllerapi.Instance](c.st, bucketInstances)
	status, err := c.nodeStatuses(ins)
	if err != nil {
		c.fail(w, err)
		return
	}
	pretty := r.URL.Query().Has("pretty")
	switch v := r.URL.Query().Get("view"); v {
	case "", "full":
		ns := make([]controllerapi.Node, len(shared))
		for i, n := range shared {
			n.Status = status(n)
			ns[i] = n
		}
		writeJSONList(w, ns, pretty)
	case "summary":
		ss := make([]controllerapi.NodeSummary, len(shared))
		for i, n := range shared {
			n.Status = status(n)
			ss[i] = n.Summary()
		}
		writeJSONList(w, ss, pretty)
	default:
		writeError(w, http.StatusBadRequest, controllerapi.CodeInvalid, fmt.Sprintf("unknown view %q: full or summary", v))
	}
}

func (c *Controller) showNode(w http.ResponseWriter, r *http.Request) {
	n, err := c.reg.Node(r.PathValue("name"))
	if err != nil {
		c.fail(w, err)
		return
	}
	ins, _ := listJSON[controllerapi.Instance](c.st, bucketInstances)
	status, err := c.nodeStatuses(ins)
	if err != nil {
		c.fail(w, err)
		return
	}
	n.Status = status(n)
	writeJSON(w, http.StatusOK, n)
}

func (c *Controller) updateNode(w http.ResponseWriter, r *http.Request) {
	var req controllerapi.UpdateRequest
	if !decode(w, r, &req) {
		return
	}
	old, err := c.reg.Node(r.PathValue("name"))
	if err != nil {
		c.fail(w, err)
		return
	}
	n, err := c.reg.Update(r.PathValue("name"), req)
	if err != nil {
		c.fail(w, err)
		return
	}
	if n.Name != old.Name {
		c.agents.rename(old.Name, n.Name)
	}
	writeJSON(w, http.StatusOK, n)
}

func (c *Controller) removeNode(w http.ResponseWriter, r *http.Request) {
	n, err := c.RemoveNode(r.PathValue("name"), r.URL.Query().Get("force") == "true", actorOf(r))
	if err != nil {
		c.fail(w, err)
		return
	}
	c.log.Info("node removed", "node", n.Name, "mac", n.MAC)
	if n.Role == controllerapi.RoleHWNode && n.RootVolume != "" {
		// The registry has freed the root volume's AoE address for
		// other volumes: the root volume, kept for a registration of
		// the same name, stops being exported there.
		if err := c.vols.Export(c.rootVolume(n.Name), "", nil); err != nil && !errors.Is(err, ErrNotFound) {
			c.log.Warn("unexporting a removed node's root volume", "node", n.Name, "err", err)
		}
	}
	writeJSON(w, http.StatusOK, n)
}

func (c *Controller) resetNode(w http.ResponseWriter, r *http.Request) {
	n, err := c.Reset(r.PathValue("name"), actorOf(r))
	if err != nil {
		c.fail(w, err)
		return
	}
	c.log.Info("node reset", "node", n.Name, "by", actorOf(r))
	writeJSON(w, http.StatusOK, n)
}

// events answers GET /v1/events?since=N[&wait=30s][&limit=N]. With wait, the
// request is held until at least one event with Seq >= since exists.
func (c *Controller) events(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var since uint64
	if s := q.Get("since"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, controllerapi.CodeInvalid, "since must be a sequence number")
			return
		}
		since = v
	}
	limit := 1000
	if s := q.Get("limit"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > 10000 {
			writeError(w, http.StatusBadRequest, controllerapi.CodeInvalid, "limit must be between 1 and 10000")
			return
		}
		limit = v
	}
	wait, ok := waitParam(w, r, 5*time.Minute)
	if !ok {
		return
	}
	c.hold(r.Context(), wait, func(final bool) bool {
		evs, err := c.reg.Events(since, limit)
		if err != nil {
			c.fail(w, err)
			return true
		}
		if len(evs) == 0 && !final {
			return false
		}
		next := since
		if len(evs) > 0 {
			next = evs[len(evs)-1].Seq + 1
		}
		writeJSON(w, http.StatusOK, controllerapi.EventsResponse{Events: evs, Next: next})
		return true
	})
}

// hold runs try after every committed change until it returns true, the
// client goes away, or wait passes; then it runs try once more with final
// set, which must answer. With wait 0, try runs once, final.
// waitParam reads the request's ?wait= duration (0 when absent), up to
// max; on a bad one it answers 400 and returns false.
func waitParam(w http.ResponseWriter, r *http.Request, max time.Duration) (time.Duration, bool) {
	s := r.URL.Query().Get("wait")
	if s == "" {
		return 0, true
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 || d > max {
		writeError(w, http.StatusBadRequest, controllerapi.CodeInvalid, fmt.Sprintf("wait must be a duration up to %v", max))
		return 0, false
	}
	return d, true
}

func (c *Controller) hold(ctx context.Context, wait time.Duration, try func(final bool) bool) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	final := wait <= 0
	for {
		ch := c.changedCh()
		if try(final) || final {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			final = true
		case <-ctx.Done():
			return
		}
	}
}
