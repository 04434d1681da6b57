package storagenode

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fabric-project/fabric/internal/netns"
)

func TestOneDaemonPerDataDir(t *testing.T) {
	dir := t.TempDir()
	p, err := OpenPool(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := RunningDaemon(dir); ok {
		t.Fatal("a fresh directory reports a running daemon")
	}
	release, err := lockDaemon(dir, DaemonInfo{PID: os.Getpid(), Interfaces: []string{"eth1"}, Started: time.Now(),
		Exports: map[string]string{"e9.0": "/dev/sdb"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = lockDaemon(dir, DaemonInfo{PID: 1})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) || !strings.Contains(err.Error(), "eth1") {
		t.Errorf("second daemon: %v; want ErrLocked naming pid %d on eth1", err, os.Getpid())
	}
	// The daemon's own --export addresses are refused up front, naming it.
	if _, err := p.Create("v1", 1<<20, VolumeOptions{Addr: "9.0"}); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "/dev/sdb") {
		t.Errorf("create at the daemon's --export address: %v; want a conflict naming /dev/sdb", err)
	}
	if vs, _ := p.List(); len(vs) != 0 {
		t.Errorf("refused create left %d volumes", len(vs))
	}
	if _, err := p.Create("v1", 1<<20, VolumeOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.SetExport("v1", "e9.0", nil, false); !errors.Is(err, ErrConflict) {
		t.Errorf("export to the daemon's --export address: %v; want a conflict", err)
	}
	if _, err := p.SetExport("v1", "e9.1", nil, false); err != nil {
		t.Errorf("export to a free address: %v", err)
	}
	release()
	if _, ok := RunningDaemon(dir); ok {
		t.Error("released lock still reports a daemon")
	}
	release, err = lockDaemon(dir, DaemonInfo{PID: os.Getpid()})
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	release()
}

// A pool volume that cannot be served is reported and skipped; every
// other change still applies.
func TestReconcileSkipsBadVolumes(t *testing.T) {
	dir := t.TempDir()
	p, err := OpenPool(dir)
	if err != nil {
		t.Fatal(err)
	}
	static := filepath.Join(dir, "static.img")
	if err := os.WriteFile(static, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	exports := []Export{{Shelf: 9, Slot: 0, Path: static}}
	// Written before the daemon knew of the --export (the state file
	// edited by hand, or an older fabricd): the collision is only seen at
	// reconcile time.
	if _, err := p.Create("clash", 1<<20, VolumeOptions{Addr: "e9.0"}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Create("good", 1<<20, VolumeOptions{Addr: "e9.1"}); err != nil {
		t.Fatal(err)
	}
	info := DaemonInfo{PID: os.Getpid(), Interfaces: []string{"lo"}, Exports: map[string]string{"e9.0": static}}
	release, err := lockDaemon(dir, info)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	tg := NewTarget(TargetConfig{})
	defer tg.Close()
	rep := &reporter{pool: p, info: info, log: tg.log}
	served := func() map[string]string {
		out := map[string]string{}
		for _, v := range tg.tab.Load().list {
			out[v.Addr()] = v.Path
		}
		return out
	}
	if err := reconcile(tg, p, exports, rep); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	got := served()
	if got["e9.0"] != static || got["e9.1"] == "" || len(got) != 2 {
		t.Errorf("served %v; want the static e9.0 and the pool's e9.1", got)
	}
	st, ok := p.DaemonStatus()
	if !ok || !strings.Contains(st.Errors["clash"], "--export") || st.Errors["good"] != "" {
		t.Errorf("status %+v; want clash reported, good served", st)
	}
	// Later changes keep applying: a new volume, and a volume whose file
	// vanished is reported without holding the others back.
	if _, err := p.Create("later", 1<<20, VolumeOptions{Addr: "e9.2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Create("gone", 1<<20, VolumeOptions{Addr: "e9.3"}); err != nil {
		t.Fatal(err)
	}
	vs, _ := p.List()
	for _, v := range vs {
		if v.Name == "gone" {
			os.Remove(p.Path(v))
		}
	}
	if err := reconcile(tg, p, exports, rep); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	got = served()
	if got["e9.2"] == "" || got["e9.3"] != "" || len(got) != 3 {
		t.Errorf("served %v; want e9.0, e9.1, e9.2", got)
	}
	st, _ = p.DaemonStatus()
	if st.Errors["gone"] == "" || st.Errors["clash"] == "" || len(st.Errors) != 2 {
		t.Errorf("status errors %v; want clash and gone", st.Errors)
	}
}

// The real daemon, twice on one directory: the second stops at once and
// says who holds it.
func TestSecondDaemonRefused(t *testing.T) {
	netns.Skip(t)
	ns := netns.New(t, "fsd")
	netns.Veth(t, ns, "sd0", "", ns, "sd1", "")
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- ns.Do(func() error {
			return Run(ctx, Config{Interfaces: []string{"sd0"}, DataDir: dir, Ready: func(*Target) { close(ready) }})
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("first daemon: %v", err)
	}
	err := ns.Do(func() error { return Run(context.Background(), Config{Interfaces: []string{"sd1"}, DataDir: dir}) })
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "pid ") || !strings.Contains(err.Error(), "sd0") {
		t.Errorf("second daemon: %v; want ErrLocked naming the first (pid, sd0)", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("first daemon: %v", err)
	}
}

// TestReconcileAppliesLimitsInPlace: a limit set on a pool volume reaches
// the running target without reopening the volume, and goes away again.
func TestReconcileAppliesLimitsInPlace(t *testing.T) {
	p, err := OpenPool(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Create("v", 1<<20, VolumeOptions{Addr: "3.0"}); err != nil {
		t.Fatal(err)
	}
	tg := NewTarget(TargetConfig{})
	defer tg.Close()
	if err := reconcile(tg, p, nil, nil); err != nil {
		t.Fatal(err)
	}
	v := tg.tab.Load().byAddr[key(3, 0)]
	if v == nil || v.limit.Load() != nil {
		t.Fatalf("volume not served, or limited from the start: %v", v)
	}
	if _, err := p.SetLimit("v", Limit{IOPS: 100, BytesPerSecond: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := reconcile(tg, p, nil, nil); err != nil {
		t.Fatal(err)
	}
	if got := tg.tab.Load().byAddr[key(3, 0)]; got != v {
		t.Fatal("the volume was reopened for a limit change")
	}
	if lm := v.limit.Load(); lm == nil || lm.lim != (Limit{IOPS: 100, BytesPerSecond: 1 << 20}) {
		t.Fatalf("limit not applied: %+v", lm)
	}
	if _, err := p.SetLimit("v", Limit{}); err != nil {
		t.Fatal(err)
	}
	if err := reconcile(tg, p, nil, nil); err != nil {
		t.Fatal(err)
	}
	if v.limit.Load() != nil {
		t.Fatal("limit not removed")
	}
	if _, err := p.SetLimit("v", Limit{IOPS: -1}); err == nil {
		t.Error("a negative limit was accepted")
	}
	if _, err := p.SetLimit("nope", Limit{IOPS: 1}); err == nil {
		t.Error("a limit on a missing volume was accepted")
	}
}
