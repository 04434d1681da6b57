// Package netns creates Linux network namespaces and veth pairs for tests
// and runs code inside them. Everything it creates is removed by t.Cleanup,
// also when the test fails.
package netns

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// NS is a network namespace made by New.
type NS struct {
	Name string
	path string
}

// Skip skips the test unless it runs as root with ip(8) available.
func Skip(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("network namespace test (-short)")
	}
	if os.Geteuid() != 0 {
		t.Skip("network namespace tests need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("ip(8) not installed (run scripts/deps.sh)")
	}
}

// New creates a namespace named prefix-<random> with lo up.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	ns := &NS{Name: prefix + "-" + hex.EncodeToString(b)}
	ns.path = "/run/netns/" + ns.Name
	Must(t, "ip", "netns", "add", ns.Name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns.Name).Run() })
	ns.Must(t, "ip", "link", "set", "lo", "up")
	return ns
}

// Must runs a command and fails the test if it fails.
func Must(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Must runs a command inside the namespace.
func (ns *NS) Must(t testing.TB, name string, args ...string) string {
	t.Helper()
	return Must(t, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Cmd returns a command that runs inside the namespace.
func (ns *NS) Cmd(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Veth joins a and b with a veth pair named aIf (in a) and bIf (in b),
// addresses given in CIDR form ("" for none), links up.
func Veth(t testing.TB, a *NS, aIf, aAddr string, b *NS, bIf, bAddr string) {
	t.Helper()
	r := make([]byte, 4)
	_, _ = rand.Read(r)
	tmp := "fv" + hex.EncodeToString(r)
	Must(t, "ip", "link", "add", tmp+"a", "type", "veth", "peer", "name", tmp+"b")
	Must(t, "ip", "link", "set", tmp+"a", "netns", a.Name, "name", aIf)
	Must(t, "ip", "link", "set", tmp+"b", "netns", b.Name, "name", bIf)
	for _, s := range []struct {
		ns        *NS
		ifn, addr string
	}{{a, aIf, aAddr}, {b, bIf, bAddr}} {
		if s.addr != "" {
			s.ns.Must(t, "ip", "addr", "add", s.addr, "dev", s.ifn)
		}
		s.ns.Must(t, "ip", "link", "set", s.ifn, "up")
	}
}

// Do runs fn on an OS thread switched into the namespace. Sockets opened by
// fn stay in the namespace after Do returns, whichever thread uses them.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is not unlocked: if switching back failed it must
		// die with the goroutine rather than serve others in the wrong
		// namespace.
		orig, err := os.Open(fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid()))
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(ns.path)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns.Name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns back: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
