package hwnode

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/internal/backoff"
)

// diskOf returns the disk URL attached for an instance. a.mu held.
func (a *Agent) diskOf(name string) (string, bool) {
	d, ok := a.disks[a.owners[name]]
	if !ok {
		return "", false
	}
	return d.URL(), true
}

// AttachBudget is how long one reconcile pass may spend attaching volumes.
const AttachBudget = 2 * time.Second

// attach makes an instance's volume available to QEMU.
func (a *Agent) attach(ctx context.Context, name, vol string) (Disk, error) {
	a.mu.Lock()
	if d, ok := a.disks[vol]; ok {
		a.owners[name] = vol
		a.mu.Unlock()
		return d, nil
	}
	a.mu.Unlock()
	d, err := a.dk.Attach(ctx, vol)
	if err != nil {
		return Disk{}, err
	}
	a.mu.Lock()
	a.disks[vol] = d
	a.owners[name] = vol
	a.mu.Unlock()
	a.log.Info("volume attached", "instance", name, "volume", vol, "disk", d.URL())
	return d, nil
}

// detach releases an instance's volume when no other instance uses it.
func (a *Agent) detach(name string) {
	a.mu.Lock()
	vol, ok := a.owners[name]
	delete(a.owners, name)
	delete(a.diskErr, name)
	if ok {
		for _, v := range a.owners {
			if v == vol {
				ok = false
				break
			}
		}
	}
	if ok {
		delete(a.disks, vol)
	}
	a.mu.Unlock()
	if !ok {
		return
	}
	if err := a.dk.Detach(vol); err != nil {
		a.log.Warn("detaching volume", "volume", vol, "err", err)
	}
	a.log.Info("volume detached", "instance", name, "volume", vol)
}

func (a *Agent) guest(name string) Guest {
	g := Guest{Hypervisor: a.cap.Hypervisor, Emulator: a.cfg.Emulator, Kernel: a.cfg.Kernel, Initrd: a.cfg.Initrd, Bridge: a.cfg.Bridge}
	if a.cfg.SerialDir != "" {
		g.SerialLog = serialLog(a.cfg.SerialDir, name)
	}
	return g
}

// reconcile brings libvirt to the desired state.
func (a *Agent) reconcile(ctx context.Context, ds controllerapi.DesiredState) {
	// Attaching volumes (the only step that waits on the network) shares
	// one budget per pass, well under the controller's agent timeout: a
	// volume the storage does not answer for must not stop the
	// heartbeats. What did not attach is retried at a later pass.
	ctx, cancel := context.WithTimeout(ctx, AttachBudget)
	defer cancel()
	doms, states, err := a.managed()
	if err != nil {
		a.log.Warn("listing domains", "err", err)
		return
	}
	want := map[string]controllerapi.InstanceSpec{}
	for _, s := range ds.Instances {
		want[s.Name] = s
	}
	a.mu.Lock()
	for name := range a.retry {
		if _, ok := want[name]; !ok {
			delete(a.retry, name)
		}
	}
	a.mu.Unlock()
	for _, s := range ds.Instances {
		a.mu.Lock()
		migrating := a.migrating[s.Name]
		a.mu.Unlock()
		switch {
		case migrating:
			continue
		case s.Migrate != nil:
			a.mu.Lock()
			run := !a.done[s.Migrate.ID]
			if run {
				a.done[s.Migrate.ID], a.migrating[s.Name] = true, true
			}
			a.mu.Unlock()
			if run {
				go a.migrate(s)
			}
		case a.waiting(s):
		case s.Incoming:
			a.setStepErr(s, a.ensureDisk(ctx, s))
		default:
			a.setStepErr(s, a.apply(ctx, s, doms[s.Name], states))
		}
	}
	// Domains the controller no longer assigns here.
	for name, dom := range doms {
		if _, ok := want[name]; ok {
			continue
		}
		if libvirt.DomainState(states[name]) != libvirt.DomainShutoff {
			_ = a.lv.DomainDestroy(dom)
		}
		if err := a.lv.DomainUndefineFlags(dom, libvirt.DomainUndefineNvram); err != nil {
			_ = a.lv.DomainUndefineFlags(dom, 0)
		}
		a.log.Info("instance removed", "instance", name)
		a.detach(name)
	}
	// Volumes attached for instances gone from here (migrated away,
	// deleted, or an aborted incoming migration).
	a.mu.Lock()
	var stale []string
	for name := range a.owners {
		if _, ok := want[name]; !ok && !a.migrating[name] {
			if _, ok := doms[name]; !ok {
				stale = append(stale, name)
			}
		}
	}
	for name := range a.diskErr {
		if _, ok := want[name]; !ok {
			delete(a.diskErr, name)
		}
	}
	a.mu.Unlock()
	for _, name := range stale {
		a.detach(name)
	}
	// Volumes presented for nothing here (left by an agent that restarted
	// meanwhile) are withdrawn.
	wanted := map[string]bool{}
	for _, s := range ds.Instances {
		wanted[s.Volume] = true
	}
	if vols, err := a.dk.Attached(); err == nil {
		for _, v := range vols {
			a.mu.Lock()
			_, mine := a.disks[v]
			a.mu.Unlock()
			if !wanted[v] && !mine {
				a.log.Info("withdrawing a volume no instance here uses", "volume", v)
				_ = a.dk.Detach(v)
			}
		}
	}
}

// apply brings one instance to the state its spec asks for: disk
// attached, domain defined, started or stopped.
func (a *Agent) apply(ctx context.Context, s controllerapi.InstanceSpec, dom libvirt.Domain, states map[string]int32) error {
	if err := a.ensureDisk(ctx, s); err != nil {
		return err
	}
	st, defined := states[s.Name]
	if !defined {
		var err error
		if dom, err = a.define(s); err != nil {
			return err
		}
		st = int32(libvirt.DomainShutoff)
	}
	switch state := libvirt.DomainState(st); {
	case s.Running && (state == libvirt.DomainShutoff || state == libvirt.DomainCrashed):
		// Defined again from this agent's settings (kernel, bridge,
		// hypervisor, console log may have changed since): a setting
		// reaches an instance at its next start.
		if defined {
			var err error
			if dom, err = a.define(s); err != nil {
				return err
			}
		}
		if err := a.lv.DomainCreate(dom); err != nil {
			return fmt.Errorf("starting: %w", err)
		}
		a.log.Info("instance started", "instance", s.Name)
	case !s.Running && state != libvirt.DomainShutoff:
		a.stop(dom, s.Name)
	default:
		a.mu.Lock()
		delete(a.stopping, s.Name)
		a.mu.Unlock()
	}
	return nil
}

// stepRetry spaces the retries of an instance's failing step.
type stepRetry struct {
	spec controllerapi.InstanceSpec // the spec that failed; another one is tried at once
	b    *backoff.Backoff
	at   time.Time // not retried before
}

// setStepErr records how an instance's step went. A failure is retried
// after a delay that grows while it repeats with the same spec (300 ms
// first: a volume's allow list may not have reached the storage node yet;
// at most 30 s: a bad bridge is not retried 40 times a second).
func (a *Agent) setStepErr(s controllerapi.InstanceSpec, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil {
		delete(a.diskErr, s.Name)
		delete(a.retry, s.Name)
		return
	}
	r := a.retry[s.Name]
	if r == nil || !reflect.DeepEqual(r.spec, s) {
		r = &stepRetry{spec: s, b: backoff.New(300*time.Millisecond, 30*time.Second, 0.2)}
		a.retry[s.Name] = r
	}
	d := r.b.Next()
	r.at = time.Now().Add(d)
	time.AfterFunc(d, func() {
		a.mu.Lock()
		a.soon = true
		a.mu.Unlock()
		a.wake()
	})
	if a.diskErr[s.Name] != err.Error() {
		a.log.Warn("instance", "instance", s.Name, "err", err, "retry_in", d.Round(time.Millisecond))
	}
	a.diskErr[s.Name] = err.Error()
}

// waiting reports whether an instance's failed step is not due for a
// retry yet. A changed spec (stop asked, new settings) is tried at once.
func (a *Agent) waiting(s controllerapi.InstanceSpec) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.retry[s.Name]
	return r != nil && reflect.DeepEqual(r.spec, s) && time.Now().Before(r.at)
}

func (a *Agent) ensureDisk(ctx context.Context, s controllerapi.InstanceSpec) error {
	_, err := a.attach(ctx, s.Name, s.Volume)
	return err
}

func (a *Agent) define(s controllerapi.InstanceSpec) (libvirt.Domain, error) {
	a.mu.Lock()
	d, ok := a.disks[a.owners[s.Name]]
	a.mu.Unlock()
	if !ok {
		return libvirt.Domain{}, errors.New("no disk attached")
	}
	x, err := DomainXML(s, d, a.guest(s.Name))
	if err != nil {
		return libvirt.Domain{}, err
	}
	dom, err := a.lv.DomainDefineXML(x)
	if err != nil {
		return dom, fmt.Errorf("defining domain: %w", err)
	}
	a.log.Info("instance defined", "instance", s.Name, "disk", d.URL())
	return dom, nil
}

// stop shuts a domain down gracefully, destroying it after the timeout.
func (a *Agent) stop(dom libvirt.Domain, name string) {
	a.mu.Lock()
	asked, ok := a.stopping[name]
	if !ok {
		a.stopping[name] = time.Now()
	}
	a.mu.Unlock()
	switch {
	case !ok:
		if err := a.lv.DomainShutdown(dom); err != nil {
			a.log.Warn("graceful shutdown refused, destroying", "instance", name, "err", err)
			_ = a.lv.DomainDestroy(dom)
		}
		a.log.Info("instance shutting down", "instance", name, "timeout", a.cfg.ShutdownTimeout)
	case time.Since(asked) > a.cfg.ShutdownTimeout:
		a.log.Info("instance did not shut down in time, destroying", "instance", name)
		_ = a.lv.DomainDestroy(dom)
	default:
		a.wakeAfter(time.Second)
	}
}

func (a *Agent) wakeAfter(d time.Duration) { time.AfterFunc(d, a.wake) }

// migrate live-migrates an instance to another node's libvirtd,
// peer-to-peer, and reports how it went.
func (a *Agent) migrate(s controllerapi.InstanceSpec) {
	m := s.Migrate
	rep := controllerapi.MigrationReport{ID: m.ID, Instance: s.Name}
	defer func() {
		a.mu.Lock()
		a.reports = append(a.reports, rep)
		delete(a.migrating, s.Name)
		a.mu.Unlock()
		a.wake()
	}()
	dom, err := a.lv.DomainLookupByName(s.Name)
	if err != nil {
		rep.Error = fmt.Sprintf("instance %s is not defined here: %v", s.Name, err)
		return
	}
	if err := a.lv.DomainMigrateSetMaxDowntime(dom, uint64(a.cfg.MaxDowntime.Milliseconds()), 0); err != nil {
		a.log.Warn("setting migration max downtime", "err", err)
	}
	a.log.Info("migrating", "instance", s.Name, "to", m.To, "uri", m.ToURI)
	t0 := time.Now()
	_, err = a.lv.DomainMigratePerform3Params(dom, libvirt.OptString{m.ToURI}, []libvirt.TypedParam{}, nil,
		libvirt.MigrateLive|libvirt.MigratePeer2peer|libvirt.MigratePersistDest|libvirt.MigrateUndefineSource)
	rep.WallMS = float64(time.Since(t0).Microseconds()) / 1000
	if err != nil {
		rep.Error = err.Error()
		a.log.Warn("migration failed", "instance", s.Name, "to", m.To, "err", err)
		return
	}
	rep.OK = true
	dt, err := a.downtime(m.ToURI, s.Name)
	if err != nil {
		a.log.Warn("reading migration downtime at the destination", "err", err)
	}
	rep.DowntimeMS = dt
	a.log.Info("migrated", "instance", s.Name, "to", m.To, "ms", rep.WallMS, "downtime_ms", dt)
}

// downtime asks the destination's libvirtd for the completed migration
// job's downtime.
func (a *Agent) downtime(uri, name string) (float64, error) {
	l, err := a.dialLibvirt(uri)
	if err != nil {
		return 0, err
	}
	defer l.Disconnect()
	dom, err := l.DomainLookupByName(name)
	if err != nil {
		return 0, err
	}
	_, params, err := l.DomainGetJobStats(dom, libvirt.DomainJobStatsCompleted)
	if err != nil {
		return 0, err
	}
	for _, p := range params {
		if p.Field == "downtime" {
			switch v := p.Value.I.(type) {
			case uint64:
				return float64(v), nil
			case int64:
				return float64(v), nil
			}
		}
	}
	return 0, errors.New("no downtime in the job statistics")
}
