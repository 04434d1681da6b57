package storagenode

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/fabric-project/fabric/internal/atomicfile"
)

// PairStatus is a pair node's state as `fabricd storage status` shows it.
type PairStatus struct {
	Pair          string             `json:"pair"`
	Node          string             `json:"node"`
	Peer          string             `json:"peer"`
	Role          string             `json:"role"` // owner, follower, none
	Epoch         uint64             `json:"epoch"`
	LeaseLeftMS   int64              `json:"lease_left_ms"`
	PeerConnected bool               `json:"peer_connected"`
	State         string             `json:"state"` // in sync, resyncing, alone, silent
	Serving       bool               `json:"serving"`
	Generation    string             `json:"generation"`
	Volumes       []PairVolumeStatus `json:"volumes"`
	Resync        *ResyncStatus      `json:"resync,omitempty"`
	TakenOver     []string           `json:"taken_over_macs"`
	Waiting       string             `json:"waiting,omitempty"` // why writes or ownership wait
	LastEvent     string             `json:"last_event"`
	Events        []string           `json:"events"` // the last 20, oldest first
	Counters      PairCounters       `json:"counters"`
	Updated       time.Time          `json:"updated"`
}

// PairVolumeStatus is one replicated volume.
type PairVolumeStatus struct {
	Addr       string `json:"addr"`
	Name       string `json:"name"`
	DirtyBytes int64  `json:"dirty_bytes"` // regions the peer lacks
	InSync     bool   `json:"in_sync"`
	// ResyncPercent is how much of what this volume lacked at the start
	// of the running resync has been copied; absent when none runs.
	ResyncPercent *float64 `json:"resync_percent,omitempty"`
	Paths         []string `json:"paths"` // the MACs this node answers on for it now
}

// ResyncStatus is a running resync's progress.
type ResyncStatus struct {
	DoneBytes  int64   `json:"done_bytes"`
	TotalBytes int64   `json:"total_bytes"`
	Percent    float64 `json:"percent"`
	RateBps    float64 `json:"rate_bytes_per_second"`
	ETASeconds float64 `json:"eta_seconds"`
}

// PairCounters count replication traffic and refusals.
type PairCounters struct {
	Forwards        uint64 `json:"forwards"`
	Superseded      uint64 `json:"superseded_forwards"` // late resends dropped, overtaken by a newer write
	Duplicates      uint64 `json:"duplicate_writes"`    // late originals of a completed write, answered, not applied
	ReplicatedBytes uint64 `json:"replicated_bytes"`
	ResyncBytes     uint64 `json:"resync_bytes_received"`
	Dropped         uint64 `json:"dropped_messages"`
	Refused         uint64 `json:"refused_connections"`
	StaleEpoch      uint64 `json:"stale_epoch"`
}

const pairStatusFile = "pair-status.json"

// Status returns the pair's state now.
func (p *Pair) Status() PairStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := PairStatus{Pair: p.cfg.Name, Node: p.cfg.Node, Peer: p.cfg.PeerNode, Role: p.role.String(), Epoch: p.st.Epoch,
		PeerConnected: p.link != nil, Serving: p.serving(), Generation: p.st.Generation, Events: slices.Clone(p.events),
		Waiting: p.waitingFor, TakenOver: []string{}, Updated: time.Now().UTC()}
	if p.role == roleOwner {
		s.LeaseLeftMS = max(0, time.Until(p.leaseEnd).Milliseconds())
	}
	switch {
	case p.role == roleOwner && p.link != nil && p.peerSyncd:
		s.State = "in sync"
	case p.role == roleOwner && p.link != nil:
		s.State = "resyncing"
	case p.role == roleOwner && p.degrading:
		s.State = "peer lost: recording at the witness that this node is alone"
	case p.role == roleOwner:
		s.State = "alone"
	case p.role == roleFollower && p.fInSync:
		s.State = "in sync"
	case p.role == roleFollower:
		s.State = "resyncing from the owner (silent)"
	default:
		s.State = "silent: no owner reachable"
	}
	if s.State == "in sync" {
		s.Waiting = ""
	}
	paths := []string{}
	if s.Serving {
		for _, name := range p.ifaces {
			if ifi, err := net.InterfaceByName(name); err == nil {
				paths = append(paths, ifi.HardwareAddr.String()+" on "+name)
			}
		}
		for _, tk := range p.takeovers {
			paths = append(paths, net.HardwareAddr(tk.mac[:]).String()+" on "+tk.iface+" (the peer's)")
		}
	}
	if n := len(s.Events); n > 0 {
		s.LastEvent = s.Events[n-1]
	}
	for _, v := range p.t.tab.Load().list {
		if !v.Replicated {
			continue
		}
		vs := PairVolumeStatus{Addr: v.Addr(), Name: v.Name, Paths: paths}
		if bm := p.bitmaps[key(v.Shelf, v.Slot)]; bm != nil {
			vs.DirtyBytes = min(int64(bm.dirty)*RegionSize, int64(v.sectors)*512)
		}
		vs.InSync = s.State == "in sync"
		if r := p.resync; r.running && p.link != nil {
			if total := r.perVolume[key(v.Shelf, v.Slot)]; total > 0 {
				pct := 100 * (1 - float64(vs.DirtyBytes)/float64(total))
				vs.ResyncPercent = &pct
			}
		}
		s.Volumes = append(s.Volumes, vs)
	}
	if r := p.resync; r.running && p.link != nil {
		rs := &ResyncStatus{DoneBytes: r.done, TotalBytes: r.total}
		if r.total > 0 {
			rs.Percent = 100 * float64(r.done) / float64(r.total)
		}
		if el := time.Since(r.started).Seconds(); el > 0 {
			rs.RateBps = float64(r.done) / el
			if rs.RateBps > 0 {
				rs.ETASeconds = float64(r.total-r.done) / rs.RateBps
			}
		}
		s.Resync = rs
	}
	for _, tk := range p.takeovers {
		s.TakenOver = append(s.TakenOver, net.HardwareAddr(tk.mac[:]).String()+" on "+tk.iface)
	}
	s.Counters = PairCounters{Forwards: p.stats.forwards.Load(), Superseded: p.stats.superseded.Load(), Duplicates: p.stats.duplicates.Load(), ReplicatedBytes: p.stats.replicated.Load(),
		ResyncBytes: p.stats.resyncBytes.Load(), Dropped: p.stats.dropped.Load(), Refused: p.stats.refused.Load(),
		StaleEpoch: p.stats.stale.Load()}
	return s
}

func (p *Pair) writeStatus() {
	b, err := json.MarshalIndent(p.Status(), "", "  ")
	if err != nil {
		return
	}
	_ = atomicfile.Write(filepath.Join(p.dir, pairStatusFile), append(b, '\n'), 0o644)
}

// ReadPairStatus reads the status a running pair node last wrote in dir.
func ReadPairStatus(dir string) (PairStatus, error) {
	var s PairStatus
	b, err := os.ReadFile(filepath.Join(dir, pairStatusFile))
	if err != nil {
		return s, err
	}
	return s, json.Unmarshal(b, &s)
}
