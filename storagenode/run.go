package storagenode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
)

// Config configures the storage node daemon.
type Config struct {
	Interfaces []string // serve AoE on these
	DataDir    string   // the volume pool
	Exports    []Export // extra exports outside the pool (vblade style)
	Queues     int      // sockets per interface; 0: one
	// BufferCount is advertised to initiators; 0: 64.
	BufferCount uint16
	// Reload is how often the pool state is reread so volume commands
	// take effect on a running daemon; 0: 1s.
	Reload time.Duration
	Logger *slog.Logger
	// Ready, if set, is called once every port is listening.
	Ready func(*Target)
	// Pair, if set, makes this node one of a storage pair: every pool
	// volume is replicated to the peer (docs/storage-pairs.md).
	Pair *PairConfig
	// Member, if set, enrolls the node with the controller and reports
	// to it.
	Member *MemberConfig
}

// Run serves until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Interfaces) == 0 {
		return fmt.Errorf("storagenode: no interface to serve on (--iface)")
	}
	pool, err := OpenPool(cfg.DataDir)
	if err != nil {
		return err
	}
	info := DaemonInfo{PID: os.Getpid(), Interfaces: cfg.Interfaces, Started: time.Now().UTC(), Exports: map[string]string{}}
	for _, e := range cfg.Exports {
		if prev, dup := info.Exports[e.Addr()]; dup {
			return fmt.Errorf("storagenode: --export %s=%s: %s is already exported from %s", e.Addr(), e.Path, e.Addr(), prev)
		}
		info.Exports[e.Addr()] = e.Path
	}
	release, err := lockDaemon(pool.Dir(), info)
	if err != nil {
		return err
	}
	defer release()
	t := NewTarget(TargetConfig{Logger: log, Configs: pool, BufferCount: cfg.BufferCount})
	defer t.Close()
	rep := &reporter{pool: pool, info: info, log: log}
	var m *member
	if cfg.Member != nil {
		if m, err = newMember(*cfg.Member, pool, t, cfg.Interfaces, rep, log); err != nil {
			return err
		}
	}
	var pair *Pair
	switch spec, err := loadPairSpec(pool); {
	case err != nil:
		return err
	case cfg.Pair != nil && spec != nil:
		return fmt.Errorf("storagenode: the controller made this node one of pair %s (%s); --pair cannot apply too", spec.Name, pairSpecFile)
	case cfg.Pair != nil:
		if pair, err = NewPair(t, *cfg.Pair, pool.Dir(), cfg.Interfaces, log); err != nil {
			return err
		}
	case spec != nil && m == nil:
		return fmt.Errorf("storagenode: the controller made this node one of pair %s (%s in the pool): run it with --controller", spec.Name, pairSpecFile)
	case spec != nil:
		// Paired by the controller: the pair holds before anything is
		// served, whether or not the controller answers.
		if cfg.Member.ReplicationListen == "" {
			return fmt.Errorf("storagenode: the controller made this node one of pair %s: it needs --replication-listen", spec.Name)
		}
		if pair, err = NewPair(t, m.pairConfig(*spec), pool.Dir(), cfg.Interfaces, log); err != nil {
			return err
		}
	}
	// The fence the controller last gave holds before anything is served.
	fenceGen, err := loadFence(pool, t)
	if err != nil {
		return err
	}
	if err := reconcile(t, pool, cfg.Exports, rep); err != nil {
		return err
	}
	var ports []*Port
	defer func() {
		for _, p := range ports {
			p.Close()
		}
	}()
	for _, name := range cfg.Interfaces {
		p, err := Listen(name, cfg.Queues)
		if err != nil {
			return err
		}
		ports = append(ports, p)
	}
	// On shutdown a pair node first leaves the pair in a planned way
	// (handing ownership over, or voiding its read lease), then stops
	// serving.
	outer := ctx
	serveCtx, stop := context.WithCancel(context.WithoutCancel(outer))
	defer stop()
	go func() {
		select {
		case <-outer.Done():
			if p := t.pair.Load(); p != nil {
				p.Leave(2 * time.Second)
			}
			stop()
		case <-serveCtx.Done():
		}
	}()
	g, ctx := errgroup.WithContext(serveCtx)
	for _, p := range ports {
		g.Go(func() error { return t.Serve(ctx, p) })
	}
	if pair != nil {
		g.Go(func() error { return pair.Run(ctx) })
	}
	kick := make(chan struct{}, 1) // reconcile now
	var reloadMu sync.Mutex        // one reconcile at a time
	reload := func() error {
		reloadMu.Lock()
		defer reloadMu.Unlock()
		return reconcile(t, pool, cfg.Exports, rep)
	}
	if m != nil {
		m.applied = fenceGen
		m.stop = stop
		m.reload = reload
		m.join = func(pc PairConfig) error {
			p, err := NewPair(t, pc, pool.Dir(), cfg.Interfaces, log)
			if err != nil {
				return err
			}
			g.Go(func() error { return p.Run(ctx) })
			select {
			case kick <- struct{}{}: // its volumes are replicated from now on
			default:
			}
			return nil
		}
		g.Go(func() error { m.run(ctx); return nil })
	}
	every := cfg.Reload
	if every <= 0 {
		every = time.Second
	}
	g.Go(func() error {
		// A change to the pool's state file takes effect within 100 ms
		// (an allow list granted before a migration, say); a full pass
		// runs every `every` anyway for changes the file does not show
		// (a volume file resized in place).
		tick := time.NewTicker(min(every, 100*time.Millisecond))
		defer tick.Stop()
		last, lastStamp := time.Now(), stateStamp(pool)
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-kick:
			case <-tick.C:
				if stateStamp(pool) == lastStamp && time.Since(last) < every {
					continue
				}
			}
			last, lastStamp = time.Now(), stateStamp(pool)
			if err := reload(); err != nil {
				log.Error("reloading volumes", "err", err)
			}
		}
	})
	if cfg.Ready != nil {
		cfg.Ready(t)
	}
	return g.Wait()
}

// stateStamp identifies a version of the pool's state file.
func stateStamp(p *Pool) string {
	fi, err := os.Stat(p.statePath())
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%d/%d/%d", fi.ModTime().UnixNano(), fi.Size(), fi.Sys().(*syscall.Stat_t).Ino)
}

// reconcile makes the target export exactly the pool's exported volumes
// plus the static ones: new ones are added, removed ones withdrawn, changed
// ones (path, read-only, MACs, size) re-added. A pool volume that cannot be
// served (its address is a static export's, its file is gone) is left out
// and reported; it never stops the others. The error is for the static
// exports and the pool's state file only.
func reconcile(t *Target, pool *Pool, static []Export, rep *reporter) error {
	vols, err := pool.Exports()
	if err != nil {
		return err
	}
	for i := range vols {
		vols[i].Replicated = t.pair.Load() != nil
	}
	problems := map[string]string{}
	staticAt := map[uint32]Export{}
	for _, s := range static {
		staticAt[key(s.Shelf, s.Slot)] = s
	}
	var want []Export
	for _, w := range vols {
		if s, ok := staticAt[key(w.Shelf, w.Slot)]; ok {
			problems[w.Name] = fmt.Sprintf("address %s is taken by this daemon's --export %s", w.Addr(), s.Path)
			continue
		}
		want = append(want, w)
	}
	want = append(want, static...)
	cur := map[uint32]*volume{}
	for _, v := range t.tab.Load().list {
		cur[key(v.Shelf, v.Slot)] = v
	}
	seen := map[uint32]bool{}
	var errs []error
	for _, w := range want {
		k := key(w.Shelf, w.Slot)
		if v := cur[k]; v != nil {
			if same(v, w) {
				seen[k] = true
				if v.Limit != w.Limit {
					t.log.Info("volume limit changed", "shelf", w.Shelf, "slot", w.Slot, "iops", w.Limit.IOPS, "bytes_per_second", w.Limit.BytesPerSecond)
					t.SetLimit(w.Shelf, w.Slot, w.Limit)
				}
				continue
			}
			t.log.Info("volume changed, re-exporting", "shelf", w.Shelf, "slot", w.Slot)
			_ = t.Remove(w.Shelf, w.Slot)
		}
		if err := t.Add(w); err != nil {
			if _, isStatic := staticAt[k]; isStatic {
				errs = append(errs, err)
			} else {
				problems[w.Name] = err.Error()
			}
			continue
		}
		seen[k] = true
	}
	for k, v := range cur {
		if !seen[k] {
			_ = t.Remove(v.Shelf, v.Slot)
		}
	}
	rep.report(problems)
	return errors.Join(errs...)
}

// reporter publishes which pool volumes the daemon cannot serve: in the
// pool's status file (read by `volume list`) and, once per change, in the
// log. A nil reporter reports nothing.
type reporter struct {
	pool *Pool
	info DaemonInfo
	log  *slog.Logger
	mu   sync.Mutex
	last map[string]string // nil until the first report is written
}

// problems is the last report: volume name -> why it is not served.
func (r *reporter) problems() map[string]string {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.last)
}

func (r *reporter) report(problems map[string]string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last != nil && maps.Equal(problems, r.last) {
		return
	}
	for name, why := range problems {
		if r.last[name] != why {
			r.log.Warn("volume not served", "volume", name, "reason", why)
		}
	}
	for name := range r.last {
		if _, still := problems[name]; !still {
			r.log.Info("volume served again", "volume", name)
		}
	}
	if err := r.pool.writeStatus(Status{Daemon: r.info, Updated: time.Now().UTC(), Errors: problems}); err != nil {
		r.log.Error("writing status", "err", err)
		return
	}
	r.last = problems
}

func same(v *volume, e Export) bool {
	if v.Path != e.Path || v.ReadOnly != e.ReadOnly || v.Sync != e.Sync || v.Name != e.Name || v.Replicated != e.Replicated || len(v.allow) != len(e.MACs) {
		return false
	}
	for i, m := range e.MACs {
		if !slices.Equal(v.allow[i][:], m) {
			return false
		}
	}
	fi, err := os.Stat(e.Path)
	return err == nil && uint64(fi.Size())/512 == v.sectors
}
