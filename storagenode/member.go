package storagenode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/internal/atomicfile"
	"golang.org/x/sys/unix"
)

// MemberConfig makes the storage node a member of a fabric: it enrolls
// with the controller (a one-time token from `fabric node token`, or
// fabric.token= on the kernel command line of a PXE-booted node) and
// reports its capacity, volumes and pair state every few seconds, on
// mutual TLS with its node certificate, renewed at half-life.
type MemberConfig struct {
	Controller string        // https://host:port
	CAFile     string        // the fabric CA
	Node       string        // the name it is registered under (role storage)
	Token      string        // one-time enrollment token; unused once enrolled
	Every      time.Duration // report interval; default 1s
	// ReplicationListen is where the node takes a pair peer's replication
	// connection once the controller pairs it (fabric storage pair
	// create); "": the node cannot be paired by the controller.
	ReplicationListen string
	ResyncRate        int64 // for a pair the controller makes; 0: the default
	NoTakeover        bool  // for a pair the controller makes
}

// IdentityFile holds the node's key and certificate, in the pool.
const IdentityFile = "identity.pem"

type member struct {
	cfg    MemberConfig
	api    *controllerapi.Client
	id     *controllerapi.Identity
	pool   *Pool
	t      *Target
	ifaces []string
	rep    *reporter
	vols   *managed
	log    *slog.Logger
	// applied is the desired-state generation applied (persisted with
	// the fence in the pool).
	applied uint64
	// join starts this node's half of a pair the controller made.
	join func(PairConfig) error
	// reload makes the target serve what the pool says now.
	reload func() error
	// pairWarned: the controller's pair differs from the running one and
	// the node said so.
	pairWarned bool
	pairErr    string // the last error joining it, said once
	// stop ends the daemon (fabric storage shutdown); exiting: it will
	// once the controller has heard it left its pair.
	stop    func()
	exiting bool
}

// shutdownFile holds the last shutdown the controller asked for that the
// node obeyed, in the pool: started again, it does not exit again.
const shutdownFile = "shutdown-obeyed"

// pairSpecFile keeps the pair the controller made, in the pool: a node
// restarted before it reaches the controller again serves its volumes
// only as one of the pair, never alone as if unpaired.
const pairSpecFile = "pair-spec.json"

func loadPairSpec(pool *Pool) (*controllerapi.StoragePairSpec, error) {
	b, err := os.ReadFile(filepath.Join(pool.Dir(), pairSpecFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s controllerapi.StoragePairSpec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("storagenode: %s: %w", pairSpecFile, err)
	}
	return &s, nil
}

// pairConfig is this node's half of pair s, with the controller as the
// witness.
func (m *member) pairConfig(s controllerapi.StoragePairSpec) PairConfig {
	return PairConfig{Name: s.Name, Node: m.cfg.Node, PeerNode: s.Peer, Listen: m.cfg.ReplicationListen, PeerAddr: s.PeerAddr,
		Witness:     strings.TrimRight(m.cfg.Controller, "/") + "/v1/storage/witness",
		WitnessHTTP: m.api.AgentHTTP(300 * time.Millisecond), ResyncRate: m.cfg.ResyncRate, NoTakeover: m.cfg.NoTakeover}
}

// applyPair joins the pair the controller made (once: a pair stays).
func (m *member) applyPair(s *controllerapi.StoragePairSpec) error {
	if s == nil {
		return nil
	}
	if cur := m.t.pair.Load(); cur != nil {
		if (cur.cfg.Name != s.Name || cur.cfg.PeerNode != s.Peer || cur.cfg.PeerAddr != s.PeerAddr) && !m.pairWarned {
			m.log.Error("the controller's pair differs from the one this node runs; keeping the running one (restart the node to change it)",
				"controller_pair", s.Name, "controller_peer", s.Peer+"@"+s.PeerAddr, "pair", cur.cfg.Name, "peer", cur.cfg.PeerNode+"@"+cur.cfg.PeerAddr)
			m.pairWarned = true
		}
		return nil
	}
	if m.cfg.ReplicationListen == "" || m.join == nil {
		return fmt.Errorf("the controller paired this node with %s (pair %s), but it runs without --replication-listen", s.Peer, s.Name)
	}
	b, _ := json.MarshalIndent(s, "", "  ")
	if err := atomicfile.Write(filepath.Join(m.pool.Dir(), pairSpecFile), append(b, '\n'), 0o644); err != nil {
		return err
	}
	if err := m.join(m.pairConfig(*s)); err != nil {
		return err
	}
	m.log.Info("joined the pair the controller made", "pair", s.Name, "peer", s.Peer, "peer_addr", s.PeerAddr)
	return nil
}

// fenceFile keeps the fence across restarts, in the pool.
const fenceFile = "fence.json"

type fenceState struct {
	Generation uint64   `json:"generation"`
	MACs       []string `json:"macs"`
}

// loadFence applies the fence kept in the pool, before anything is served.
func loadFence(pool *Pool, t *Target) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(pool.Dir(), fenceFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var fs fenceState
	if err := json.Unmarshal(b, &fs); err != nil {
		return 0, fmt.Errorf("storagenode: %s: %w", fenceFile, err)
	}
	var macs []net.HardwareAddr
	for _, m := range fs.MACs {
		if hw, err := net.ParseMAC(m); err == nil {
			macs = append(macs, hw)
		}
	}
	t.SetFence(macs)
	return fs.Generation, nil
}

// apply makes the controller's desired state durable, then applies it:
// the fence, then the volumes it manages.
func (m *member) apply(ctx context.Context, d controllerapi.StorageDesired) error {
	if d.Generation != m.applied {
		if err := m.applyFence(d); err != nil {
			return err
		}
	}
	// The pair first: volumes exported from now on are replicated.
	if err := m.applyPair(d.Pair); err != nil && err.Error() != m.pairErr {
		m.log.Error("joining the controller's pair", "err", err)
		m.pairErr = err.Error()
	}
	if d.ManagesVolumes {
		if err := m.vols.apply(ctx, d.Volumes); err != nil {
			m.log.Warn("applying the controller's volumes", "err", err)
		}
		// The target serves what the pool now says before the report
		// says so: an allow list or cap is in force when the controller
		// hears it applied, not at the next reload.
		if m.reload != nil {
			if err := m.reload(); err != nil {
				m.log.Error("reloading volumes", "err", err)
			}
		}
	}
	if p := m.t.pair.Load(); p != nil && d.Drain != p.Left() {
		if d.Drain {
			m.log.Info("draining on the controller's word: handing over to the peer and leaving the pair")
			p.Leave(2 * time.Second)
		} else {
			m.log.Info("undrained on the controller's word: rejoining the pair")
			p.Rejoin()
		}
	}
	if p := m.t.pair.Load(); p != nil && d.Drain && d.Shutdown != "" && p.Left() && m.stop != nil {
		path := filepath.Join(m.pool.Dir(), shutdownFile)
		if b, _ := os.ReadFile(path); string(b) != d.Shutdown {
			if err := atomicfile.Write(path, []byte(d.Shutdown), 0o644); err != nil {
				return err
			}
			m.log.Info("shutting down on the controller's word: left the pair; the daemon exits (start it again, then `fabric storage undrain`)")
			m.exiting = true
		}
	}
	m.applied = d.Generation
	return nil
}

// applyFence makes the fence durable, then applies it.
func (m *member) applyFence(d controllerapi.StorageDesired) error {
	var macs []net.HardwareAddr
	for _, s := range d.Fence {
		hw, err := net.ParseMAC(s)
		if err != nil {
			return fmt.Errorf("fence %q: %w", s, err)
		}
		macs = append(macs, hw)
	}
	b, _ := json.Marshal(fenceState{Generation: d.Generation, MACs: d.Fence})
	if err := atomicfile.Write(filepath.Join(m.pool.Dir(), fenceFile), b, 0o644); err != nil {
		return err
	}
	m.t.SetFence(macs)
	m.log.Info("controller's fence applied", "generation", d.Generation, "fenced", d.Fence)
	return nil
}

func newMember(cfg MemberConfig, pool *Pool, t *Target, ifaces []string, rep *reporter, log *slog.Logger) (*member, error) {
	if cfg.Node == "" {
		return nil, errors.New("storagenode: --controller needs the node's registered name (--name)")
	}
	if cfg.Every <= 0 {
		cfg.Every = time.Second
	}
	ca, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("storagenode: fabric CA (--ca): %w", err)
	}
	m := &member{cfg: cfg, pool: pool, t: t, ifaces: ifaces, rep: rep, log: log.With("controller", cfg.Controller)}
	if m.id, err = controllerapi.LoadIdentity(filepath.Join(pool.Dir(), IdentityFile)); err != nil {
		return nil, fmt.Errorf("storagenode: %w", err)
	}
	if m.api, err = controllerapi.NewAgentClient(cfg.Controller, ca, m.id); err != nil {
		return nil, err
	}
	m.vols = newManaged(pool, m.log, m.api)
	return m, nil
}

// run enrolls if needed and reports until ctx ends or the controller
// revokes the certificate. Volumes are served throughout, whatever the
// controller says.
func (m *member) run(ctx context.Context) {
	if !m.id.Enrolled() || time.Now().After(m.id.Leaf().NotAfter) {
		tok := m.cfg.Token
		if tok == "" {
			tok = controllerapi.KernelArg("fabric.token")
		}
		if tok == "" {
			m.log.Error("not enrolled and no enrollment token: pass --token (`fabric node token " + m.cfg.Node + "`); serving volumes without reporting")
			return
		}
		r, err := m.api.EnrollRetrying(ctx, m.cfg.Node, tok, m.log)
		if err != nil {
			if ctx.Err() == nil {
				m.log.Error("enrollment refused; serving volumes without reporting", "err", err)
			}
			return
		}
		m.log.Info("enrolled with the controller", "node", r.Node, "cert_not_after", r.NotAfter)
	}
	tick := time.NewTicker(m.cfg.Every)
	defer tick.Stop()
	var failing bool
	for {
		if m.id.RenewDue(time.Now()) {
			if r, err := m.api.Renew(ctx, m.cfg.Node); err == nil {
				m.log.Info("certificate renewed", "not_after", r.NotAfter)
			} else if !controllerapi.IsRevoked(err) {
				m.log.Warn("certificate renewal failed; retrying", "err", err)
			}
		}
		// The controller holds the answer until there is something new
		// (or the interval has passed): changes arrive at once.
		// While volumes are on their way (an image fetch), look again
		// soon: a guest may be waiting for the clone.
		wait := m.cfg.Every
		if len(m.vols.Pending()) > 0 {
			wait = 100 * time.Millisecond
		}
		t0 := time.Now()
		d, err := m.api.StorageReport(ctx, m.report(), wait)
		held := time.Since(t0) > wait/2
		changed := err == nil && d.Generation != m.applied
		if err == nil && (changed || d.ManagesVolumes) {
			// Apply and say so at once: the controller may be waiting
			// for this before it restarts a failed node's instances or
			// starts a guest on a new volume.
			if err = m.apply(ctx, d); err == nil && (changed || m.exiting) {
				_, err = m.api.StorageReport(ctx, m.report(), 0)
			}
			if m.exiting {
				m.stop()
				return
			}
		}
		switch {
		case controllerapi.IsRevoked(err):
			m.log.Error("the controller revoked this node's certificate (removed or reset); serving volumes without reporting", "err", err)
			return
		case err != nil && !failing && ctx.Err() == nil:
			m.log.Warn("report to the controller failed; retrying", "err", err)
			failing = true
		case err == nil && failing:
			m.log.Info("reporting to the controller again")
			failing = false
		}
		if err == nil && (held || changed) {
			continue // the controller paces the reports, answering early only with news
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// report is the node's state now.
func (m *member) report() controllerapi.StorageReport {
	r := controllerapi.StorageReport{Node: m.cfg.Node, Generation: m.applied, Replication: m.cfg.ReplicationListen, Fenced: []string{}, Initiators: map[string]time.Time{},
		Heard: map[string]time.Time{}, Interfaces: []controllerapi.StorageIface{}, Volumes: []controllerapi.StorageVolume{}}
	for _, f := range m.t.Fenced() {
		r.Fenced = append(r.Fenced, f.String())
	}
	for mac, at := range m.t.InitiatorsSeen(time.Now().Add(-time.Minute)) {
		r.Initiators[mac] = at.UTC()
	}
	for mac, at := range m.t.InitiatorsHeard(time.Now().Add(-time.Minute)) {
		r.Heard[mac] = at.UTC()
	}
	var fs unix.Statfs_t
	if unix.Statfs(m.pool.Dir(), &fs) == nil {
		r.Capacity = controllerapi.StorageCapacity{TotalBytes: int64(fs.Blocks) * fs.Bsize, FreeBytes: int64(fs.Bavail) * fs.Bsize}
	}
	for _, name := range m.ifaces {
		if ifi, err := net.InterfaceByName(name); err == nil {
			r.Interfaces = append(r.Interfaces, controllerapi.StorageIface{Name: name, MAC: ifi.HardwareAddr.String()})
		}
	}
	var ps *PairStatus
	if p := m.t.pair.Load(); p != nil {
		s := p.Status()
		ps = &s
		r.Drained = p.Left()
		r.Pair = &controllerapi.StoragePair{Pair: s.Pair, Peer: s.Peer, Role: s.Role, Epoch: s.Epoch, PeerConnected: s.PeerConnected,
			State: s.State, Serving: s.Serving, TakenOver: s.TakenOver, Waiting: s.Waiting, LastEvent: s.LastEvent}
	}
	r.Pending = m.vols.Pending()
	problems := m.rep.problems()
	vols, _ := m.pool.List()
	for _, v := range vols {
		sv := controllerapi.StorageVolume{Name: v.Name, Addr: v.Addr(), Size: v.Size, ReadOnly: v.ReadOnly, Sync: v.Sync, MACs: v.MACs, Problem: problems[v.Name]}
		if v.Limit != nil {
			sv.IOPS, sv.BPS = v.Limit.IOPS, v.Limit.BytesPerSecond
		}
		if ps != nil {
			for _, pv := range ps.Volumes {
				if strings.EqualFold(pv.Addr, v.Addr()) {
					sv.DirtyBytes, sv.ResyncPercent = pv.DirtyBytes, pv.ResyncPercent
				}
			}
		}
		r.Volumes = append(r.Volumes, sv)
	}
	return r
}
