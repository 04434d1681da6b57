package controller

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

// The crash test re-executes the test binary as a controller process so
// that it can be killed with SIGKILL in the middle of a burst.
const crashChildEnv = "FABRIC_TEST_CONTROLLER_CHILD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		os.Exit(runCrashChild(dir))
	}
	os.Exit(m.Run())
}

func runCrashChild(dir string) int {
	c, err := New(Config{StateDir: dir, APIAddr: "127.0.0.1:0", BootSubnet: netip.MustParsePrefix("10.20.0.0/16")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := c.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func TestCrashKeepsAcknowledgedRegistrations(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
	var childLog strings.Builder
	cmd.Stderr = &childLog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	// Wait for the child to write its client config (after listening).
	var cfgURL string
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(dir + "/" + ClientConfigFile); err == nil && len(b) > 0 {
			if i := strings.Index(string(b), "https://"); i >= 0 {
				cfgURL = strings.SplitN(string(b)[i:], `"`, 2)[0]
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if cfgURL == "" {
		t.Fatalf("controller child did not start: %s", childLog.String())
	}
	caPEM, _ := os.ReadFile(dir + "/ca/ca.crt")
	token, _ := os.ReadFile(dir + "/" + AdminTokenFile)
	cl, err := controllerapi.NewClient(cfgURL, strings.TrimSpace(string(token)), caPEM)
	if err != nil {
		t.Fatal(err)
	}

	var (
		mu    sync.Mutex
		acked = map[string]controllerapi.Node{}
		next  atomic.Int64
		wg    sync.WaitGroup
	)
	ctx := context.Background()
	for range 16 {
		wg.Go(func() {
			for {
				i := next.Add(1)
				n, err := cl.RegisterNode(ctx, controllerapi.RegisterRequest{
					Name: fmt.Sprintf("n%05d", i), MAC: fmt.Sprintf("52:54:00:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff), Role: "hwnode"})
				if err != nil {
					return // the controller died under us
				}
				mu.Lock()
				acked[n.Name] = n
				mu.Unlock()
			}
		})
	}
	for {
		mu.Lock()
		k := len(acked)
		mu.Unlock()
		if k >= 300 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	killed = true
	wg.Wait()
	sent := next.Load()
	t.Logf("killed after %d acknowledged of %d attempted registrations", len(acked), sent)

	c, err := New(Config{StateDir: dir, BootSubnet: netip.MustParsePrefix("10.20.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Registry().CheckInvariants(); err != nil {
		t.Fatalf("after kill -9: %v", err)
	}
	ns, err := c.Registry().Nodes()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]controllerapi.Node{}
	for _, n := range ns {
		have[n.Name] = n
	}
	for name, want := range acked {
		got, ok := have[name]
		if !ok {
			t.Errorf("acknowledged registration %s lost", name)
			continue
		}
		if got.MAC != want.MAC || got.IP != want.IP {
			t.Errorf("%s: after restart %s %s; acknowledged as %s %s", name, got.MAC, got.IP, want.MAC, want.IP)
		}
	}
	if len(ns) < len(acked) || int64(len(ns)) > sent {
		t.Errorf("%d nodes stored; %d acknowledged, %d attempted", len(ns), len(acked), sent)
	}
}
