package hwnode

import (
	"context"
	"time"

	"github.com/digitalocean/go-libvirt"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

// Isolation: a node cut off from both the controller and every storage
// node will be declared failed, fenced, and its guests restarted
// elsewhere. Its own copies can no longer write (no storage answers), and
// they must not reappear on the network beside the restarted ones when
// the links come back: the agent pauses them once both have been silent
// for IsolationPause, shorter than the controller's detection. When the
// controller answers again, guests it still wants here are resumed, the
// others destroyed (reconcile).

// DefaultIsolationPause is how long the controller and the storage may
// both be silent before the agent pauses its guests.
const DefaultIsolationPause = 3 * time.Second

// watchIsolation pauses running guests while the node is isolated.
func (a *Agent) watchIsolation(ctx context.Context) {
	sw, ok := a.dk.(StorageWatcher)
	if !ok || a.cfg.IsolationPause <= 0 {
		return // the kernel driver path has no storage clock here
	}
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.mu.Lock()
		last := a.lastOK
		a.mu.Unlock()
		// A long-polled heartbeat answers at least every Wait.
		if last.IsZero() || time.Since(last) < max(a.cfg.IsolationPause, a.cfg.Wait+time.Second) {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		seen, err := sw.StorageSeen(sctx)
		cancel()
		if err == nil && time.Since(seen) < a.cfg.IsolationPause {
			continue
		}
		doms, states, err := a.managed()
		if err != nil {
			continue
		}
		for name, dom := range doms {
			if libvirt.DomainState(states[name]) != libvirt.DomainRunning {
				continue
			}
			if err := a.lv.DomainSuspend(dom); err != nil {
				a.log.Warn("isolated: pausing a guest failed", "instance", name, "err", err)
				continue
			}
			a.mu.Lock()
			a.paused[name] = time.Now()
			a.mu.Unlock()
			a.log.Warn("isolated: controller silent and no storage node answers; guest paused so that no stale copy runs beside its restart",
				"instance", name, "controller_silent", time.Since(last).Round(time.Second), "storage_seen", seen)
		}
	}
}

// resumeAfterIsolation decides on the guests paused while isolated, from
// ds, the answer to a heartbeat sent at sent: it resumes those the
// controller still wants running here and leaves the others to reconcile,
// which destroys them.
//
// Only a guest paused before sent is decided on. An answer to an earlier
// heartbeat may predate the controller's restart of the guest elsewhere:
// a long poll answered as the node's links went down arrives once they
// return, and it resumed a stale copy beside the restarted guest (its
// disk fenced, its address the same; TestLinksCut). A guest left paused
// waits for the next heartbeat, which then goes without a long poll.
func (a *Agent) resumeAfterIsolation(ds controllerapi.DesiredState, sent time.Time) {
	a.mu.Lock()
	paused := map[string]time.Time{}
	for name, at := range a.paused {
		if at.Before(sent) {
			paused[name] = at
			delete(a.paused, name)
		}
	}
	if len(a.paused) > 0 {
		a.soon = true // the next heartbeat asks without a long poll
	}
	a.mu.Unlock()
	if len(paused) == 0 {
		return
	}
	doms, _, err := a.managed()
	if err != nil {
		// Decide again on the next answer: dropped here, a guest the
		// controller wants running would stay paused (reconcile does not
		// resume domains).
		a.log.Warn("guests paused while isolated: libvirt does not answer; deciding on the next heartbeat", "err", err)
		a.mu.Lock()
		for name, at := range paused {
			if _, again := a.paused[name]; !again { // paused again meanwhile: keep the newer time
				a.paused[name] = at
			}
		}
		a.soon = true
		a.mu.Unlock()
		return
	}
	for _, s := range ds.Instances {
		if _, ok := paused[s.Name]; !ok {
			continue
		}
		if dom, ok := doms[s.Name]; ok && s.Running && s.Migrate == nil {
			if err := a.lv.DomainResume(dom); err != nil {
				a.log.Warn("resuming a guest paused while isolated", "instance", s.Name, "err", err)
				continue
			}
			a.log.Info("controller back: guest resumed", "instance", s.Name)
		}
	}
}
