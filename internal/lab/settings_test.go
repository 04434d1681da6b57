package lab

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

// TestSettingsReachDomains: an agent restarted with another setting (the
// instance kernel here) leaves a running guest alone and applies the
// setting at the instance's next start.
func TestSettingsReachDomains(t *testing.T) {
	images := skipUnlessLab(t)
	bin := buildBinaries(t)
	l := upLab(t, Config{Bin: bin, Images: images, Hosts: 1})
	h := l.Hosts[0]
	if _, err := l.Fabric("image", "import", "tiny", filepath.Join(images, "instance-template.img")); err != nil {
		t.Fatal(err)
	}
	var in controllerapi.Instance
	fabricJSON(t, l, &in, "instance", "create", "web", "--image", "tiny", "--vcpus", "1", "--memory", "128MiB", "--start")
	kernel := func() string {
		t.Helper()
		out, err := exec.Command("virsh", "-c", h.URI(), "dumpxml", "web", "--inactive").CombinedOutput()
		if err != nil {
			t.Fatalf("virsh dumpxml web: %v\n%s", err, out)
		}
		_, k, _ := strings.Cut(string(out), "<kernel>")
		k, _, _ = strings.Cut(k, "</kernel>")
		return k
	}
	orig := filepath.Join(images, "instance", "vmlinuz")
	if k := kernel(); k != orig {
		t.Fatalf("web's kernel is %q, want %q", k, orig)
	}
	// The same kernel at another path, as after an upgrade moved it.
	moved := filepath.Join(l.Dir, "kernel-v2", "vmlinuz")
	if err := os.MkdirAll(filepath.Dir(moved), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(orig)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(moved, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := l.StopAgent(h); err != nil {
		t.Fatal(err)
	}
	l.AgentExtra = []string{"--kernel", moved}
	if err := l.StartAgent(h, ""); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(20*time.Second, func() bool {
		out, err := l.FabricQuiet("node", "list")
		return err == nil && strings.Contains(out, "alive (1 instances)")
	}); err != nil {
		t.Fatalf("agent did not report again: %v", err)
	}
	// A pass of the restarted agent leaves the running guest as it was.
	time.Sleep(2 * time.Second)
	if k := kernel(); k != orig {
		t.Errorf("a running guest was redefined (kernel %q) before its restart", k)
	}
	if _, err := l.Fabric("instance", "stop", "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Fabric("instance", "start", "web"); err != nil {
		t.Fatal(err)
	}
	if k := kernel(); k != moved {
		t.Errorf("after its restart web's kernel is %q, want the agent's new %q", k, moved)
	}
}
