// Package witness is the third party that decides which node of a storage
// pair owns writes (docs/storage-pairs.md): a lease with an epoch, granted
// to one node at a time, and the record of which nodes hold the newest
// data. Two nodes cut off from each other cannot both own: the one that
// asks second gets ownership only once the first one's lease has run out,
// and only if it holds the newest data.
//
// The controller will hold these leases when it manages the pairs; this
// small server is the alternative for a pair without one (fabricd storage
// witness). It keeps its state in one file, written before it answers any
// change of owner or of who is current.
package witness

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/fabric-project/fabric/internal/atomicfile"
)

// Operations a node asks for.
const (
	// OpAcquire asks for ownership: granted when nobody holds a running
	// lease and the asker holds the newest data (or nobody has ever
	// owned the pair). A new owner gets a new, higher epoch.
	OpAcquire = "acquire"
	// OpRenew extends the asker's lease for the epoch it holds.
	OpRenew = "renew"
	// OpDegraded records that the owner continues without its peer: from
	// now on only the owner holds the newest data. The owner asks before
	// it acknowledges any write alone.
	OpDegraded = "degraded"
	// OpInSync records that the peer holds the owner's data again.
	OpInSync = "insync"
	// OpRelease gives ownership up before its lease ends (a planned
	// handover): the peer may acquire at once.
	OpRelease = "release"
	// OpHandover gives ownership straight to the peer (Peer), which must
	// hold the newest data: the peer owns a new epoch from the moment of
	// the request, and is recorded as the only current node (the owner
	// is leaving; it comes back through a resync). One change where
	// release, acquire and degraded take three.
	OpHandover = "handover"
)

// Request is what a node sends.
type Request struct {
	Pair  string `json:"pair"`
	Node  string `json:"node"`
	Op    string `json:"op"`
	Epoch uint64 `json:"epoch"`          // the epoch the node holds (renew, degraded, insync, release)
	Peer  string `json:"peer,omitempty"` // insync: the peer now current; handover: the new owner
}

// Reply is the witness's answer. Granted says whether the operation took
// effect; the rest is the pair's state either way, so a refused node
// learns the current owner and epoch.
type Reply struct {
	Granted bool     `json:"granted"`
	Reason  string   `json:"reason,omitempty"`
	Owner   string   `json:"owner"`
	Epoch   uint64   `json:"epoch"`
	LeaseMS int64    `json:"lease_ms"` // the lease's length, counted by the node from when it sent the request
	Current []string `json:"current"`  // nodes holding the newest data; empty: the pair never had an owner
}

// pairState is one pair's record.
type pairState struct {
	Owner   string    `json:"owner"`
	Epoch   uint64    `json:"epoch"`
	Current []string  `json:"current"`
	Expires time.Time `json:"-"` // the owner's lease, by the witness's clock
}

// Server is a witness. Its zero value is not usable; call New.
type Server struct {
	lease time.Duration
	path  string
	log   *slog.Logger
	now   func() time.Time

	mu    sync.Mutex
	pairs map[string]*pairState
}

// New returns a witness keeping its state at path (created if missing).
// After a restart every owner is treated as holding a lease that runs a
// full lease from the restart: the witness cannot know when it last
// renewed.
func New(path string, lease time.Duration, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{lease: lease, path: path, log: log, now: time.Now, pairs: map[string]*pairState{}}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		// Write the empty state now: a directory that cannot hold it is
		// an error at start, not at the first grant a pair asks for.
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return nil, fmt.Errorf("witness: state directory: %w", err)
		}
		if err := s.save(); err != nil {
			return nil, fmt.Errorf("witness: state file %s: %w", path, err)
		}
	case err != nil:
		return nil, fmt.Errorf("witness: %w", err)
	default:
		if err := json.Unmarshal(b, &s.pairs); err != nil {
			return nil, fmt.Errorf("witness: state file %s: %w", path, err)
		}
	}
	until := s.now().Add(lease)
	for _, p := range s.pairs {
		if p.Owner != "" {
			p.Expires = until
		}
	}
	return s, nil
}

func (s *Server) save() error {
	b, err := json.MarshalIndent(s.pairs, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(s.path, b, 0o644)
}

// Do applies one request.
func (s *Server) Do(r Request) (Reply, error) {
	if r.Pair == "" || r.Node == "" {
		return Reply{}, fmt.Errorf("witness: request without pair or node")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	p := s.pairs[r.Pair]
	if p == nil {
		p = &pairState{}
		s.pairs[r.Pair] = p
	}
	before := *p
	before.Current = slices.Clone(p.Current)
	reply := func(granted bool, reason string) (Reply, error) {
		if p.Owner != before.Owner || p.Epoch != before.Epoch || !slices.Equal(p.Current, before.Current) {
			if err := s.save(); err != nil {
				*p = before // not recorded: not granted
				return Reply{}, fmt.Errorf("witness: saving state: %w", err)
			}
			s.log.Info("pair changed", "pair", r.Pair, "op", r.Op, "node", r.Node, "owner", p.Owner, "epoch", p.Epoch, "current", p.Current)
		}
		return Reply{Granted: granted, Reason: reason, Owner: p.Owner, Epoch: p.Epoch,
			LeaseMS: s.lease.Milliseconds(), Current: slices.Clone(p.Current)}, nil
	}
	holds := p.Owner == r.Node && p.Epoch == r.Epoch && r.Epoch != 0
	running := p.Owner != "" && now.Before(p.Expires)
	switch r.Op {
	case OpAcquire:
		if holds && running {
			p.Expires = now.Add(s.lease)
			return reply(true, "")
		}
		if running {
			return reply(false, fmt.Sprintf("%s owns epoch %d for another %v", p.Owner, p.Epoch, p.Expires.Sub(now).Round(time.Millisecond)))
		}
		if len(p.Current) > 0 && !slices.Contains(p.Current, r.Node) {
			return reply(false, fmt.Sprintf("%s does not hold the newest data (current: %v)", r.Node, p.Current))
		}
		p.Owner, p.Epoch, p.Expires = r.Node, p.Epoch+1, now.Add(s.lease)
		if len(p.Current) == 0 {
			p.Current = []string{r.Node}
		}
		return reply(true, "")
	case OpHandover:
		switch {
		case !holds:
			return reply(false, fmt.Sprintf("%s does not own epoch %d (owner %q, epoch %d)", r.Node, r.Epoch, p.Owner, p.Epoch))
		case r.Peer == "" || r.Peer == r.Node:
			return reply(false, "handover needs the peer's name")
		case !slices.Contains(p.Current, r.Peer):
			return reply(false, fmt.Sprintf("%s does not hold the newest data (current: %v)", r.Peer, p.Current))
		}
		p.Owner, p.Epoch, p.Expires, p.Current = r.Peer, p.Epoch+1, now.Add(s.lease), []string{r.Peer}
		return reply(true, "")
	case OpRenew, OpDegraded, OpInSync, OpRelease:
		if !holds {
			return reply(false, fmt.Sprintf("%s does not own epoch %d (owner %q, epoch %d)", r.Node, r.Epoch, p.Owner, p.Epoch))
		}
		if !running && r.Op != OpRelease {
			// Expired but nobody took over: the owner may go on.
			s.log.Info("lease renewed after it ran out", "pair", r.Pair, "node", r.Node)
		}
		switch r.Op {
		case OpRelease:
			p.Owner, p.Expires = "", time.Time{}
			return reply(true, "")
		case OpDegraded:
			p.Current = []string{r.Node}
		case OpInSync:
			if r.Peer == "" || r.Peer == r.Node {
				return reply(false, "insync needs the peer's name")
			}
			p.Current = []string{r.Node, r.Peer}
			slices.Sort(p.Current)
		}
		p.Expires = now.Add(s.lease)
		return reply(true, "")
	}
	return Reply{}, fmt.Errorf("witness: unknown operation %q", r.Op)
}

// ServeHTTP answers POST /v1/lease (a Request) and GET /v1/pairs.
func (s *Server) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	switch {
	case req.Method == http.MethodPost && req.URL.Path == "/v1/lease":
		var r Request
		dec := json.NewDecoder(http.MaxBytesReader(w, req.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&r); err != nil {
			http.Error(w, "witness: bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		rep, err := s.Do(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(rep)
	case req.Method == http.MethodGet && req.URL.Path == "/v1/pairs":
		s.mu.Lock()
		out := map[string]Reply{}
		for name, p := range s.pairs {
			out[name] = Reply{Owner: p.Owner, Epoch: p.Epoch, Current: p.Current,
				LeaseMS: max(0, p.Expires.Sub(s.now()).Milliseconds())}
		}
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	default:
		http.Error(w, "witness: POST /v1/lease or GET /v1/pairs", http.StatusNotFound)
	}
}

// Client asks a witness over HTTP.
type Client struct {
	URL  string // http://host:port
	HTTP *http.Client
}

// Do sends one request. The lease in the reply runs from before the call
// was made: the caller takes the time before calling.
func (c *Client) Do(r Request) (Reply, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return Reply{}, err
	}
	resp, err := c.HTTP.Post(c.URL+"/v1/lease", "application/json", bytes.NewReader(b))
	if err != nil {
		return Reply{}, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return Reply{}, fmt.Errorf("witness %s: %s: %s", c.URL, resp.Status, bytes.TrimSpace(body))
	}
	var rep Reply
	if err := json.Unmarshal(body, &rep); err != nil {
		return Reply{}, fmt.Errorf("witness %s: %w", c.URL, err)
	}
	return rep, nil
}
