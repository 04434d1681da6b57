// Package pairlab runs a storage pair for tests: two `fabricd storage`
// processes, each in its own network namespace with an AoE port on a
// bridge the caller owns, a direct replication link between them, and an
// in-process witness both reach over links of their own. Everything is
// removed by t.Cleanup, also when the test fails.
package pairlab

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/internal/netns"
	"github.com/fabric-project/fabric/storagenode"
	"github.com/fabric-project/fabric/storagenode/witness"
)

// Lab is a running pair.
type Lab struct {
	t       testing.TB
	Bin     string // fabricd
	Nodes   [2]*Node
	Wit     *netns.NS
	Witness *witness.Server
}

// Node is one storage node.
type Node struct {
	Name string
	Dir  string // its pool (and logs)
	NS   *netns.NS
	MAC  string // of its AoE port, aoe0
	Args []string
	cmd  *exec.Cmd
	logf *os.File
}

var build struct {
	sync.Once
	path string
	err  error
}

// Fabricd builds cmd/fabricd once per test binary; root is the path from
// the test's package directory to the module root ("..", "../..").
func Fabricd(t testing.TB, root string) string {
	t.Helper()
	build.Do(func() {
		dir, err := os.MkdirTemp("", "fabricd-test")
		if err != nil {
			build.err = err
			return
		}
		build.path = filepath.Join(dir, "fabricd")
		out, err := exec.Command("go", "build", "-o", build.path, filepath.Join(root, "cmd/fabricd")).CombinedOutput()
		if err != nil {
			build.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.path
}

// New creates the namespaces and links: node i's aoe0 is a port of bridge
// in sw. Nodes are not started; create volumes first (Volume), then Start.
func New(t testing.TB, bin string, sw *netns.NS, bridge string) *Lab {
	t.Helper()
	l := &Lab{t: t, Bin: bin, Wit: netns.New(t, "pwit")}
	for i := range l.Nodes {
		n := &Node{Name: fmt.Sprintf("sn%d", i+1), NS: netns.New(t, fmt.Sprintf("psn%d", i+1)), Dir: t.TempDir()}
		l.Nodes[i] = n
		port := fmt.Sprintf("psn%dp", i+1)
		netns.Veth(t, n.NS, "aoe0", "", sw, port, "")
		sw.Must(t, "ip", "link", "set", port, "master", bridge)
		n.MAC = strings.TrimSpace(n.NS.Must(t, "cat", "/sys/class/net/aoe0/address"))
		netns.Veth(t, n.NS, "wit0", fmt.Sprintf("10.78.%d.1/24", i+1), l.Wit, fmt.Sprintf("w%d", i+1), fmt.Sprintf("10.78.%d.254/24", i+1))
	}
	netns.Veth(t, l.Nodes[0].NS, "rep0", "10.77.0.1/24", l.Nodes[1].NS, "rep0", "10.77.0.2/24")

	w, err := witness.New(filepath.Join(t.TempDir(), "witness.json"), 1500*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	l.Witness = w
	var ln net.Listener
	if err := l.Wit.Do(func() (err error) { ln, err = net.Listen("tcp", ":7420"); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: w}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	for i, n := range l.Nodes {
		peer := l.Nodes[1-i]
		n.Args = []string{"storage", "--iface", "aoe0", "--data-dir", n.Dir, "--pair", "p1", "--node", n.Name, "--peer-node", peer.Name,
			"--replication-listen", fmt.Sprintf("10.77.0.%d:7410", i+1), "--peer", fmt.Sprintf("10.77.0.%d:7410", 2-i),
			"--witness", fmt.Sprintf("http://10.78.%d.254:7420", i+1)}
	}
	t.Cleanup(func() {
		for _, n := range l.Nodes {
			l.Kill(n, syscall.SIGKILL)
		}
	})
	return l
}

// Member makes n a fabric member instead of one half of a pair set up by
// flags: it enrolls (with token) with a controller listening on :8443 in
// the witness namespace, reached at 10.78.N.254, and takes a pair peer's
// replication connection, so that the controller can pair it.
func (l *Lab) Member(n *Node, ca, token string) {
	i := slices.Index(l.Nodes[:], n)
	n.Args = []string{"storage", "--iface", "aoe0", "--data-dir", n.Dir, "--replication-listen", fmt.Sprintf("10.77.0.%d:7410", i+1),
		"--controller", fmt.Sprintf("https://10.78.%d.254:8443", i+1), "--ca", ca, "--name", n.Name, "--token", token}
}

// Registrar is what StartMembers needs of a controller: its registry
// (*controller.Registry).
type Registrar interface {
	Register(controllerapi.RegisterRequest) (controllerapi.Node, error)
	IssueToken(nameOrMAC, actor string, ttl time.Duration) (string, error)
}

// StartMembers registers both nodes with reg (role storage), makes each a
// Member with a token of its own and the fabric CA caPEM, and starts
// them.
func (l *Lab) StartMembers(reg Registrar, caPEM []byte) {
	l.t.Helper()
	ca := filepath.Join(l.t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, caPEM, 0o644); err != nil {
		l.t.Fatal(err)
	}
	for _, n := range l.Nodes {
		if _, err := reg.Register(controllerapi.RegisterRequest{Name: n.Name, MAC: n.MAC, Role: controllerapi.RoleStorage}); err != nil {
			l.t.Fatal(err)
		}
		tok, err := reg.IssueToken(n.Name, "test", time.Hour)
		if err != nil {
			l.t.Fatal(err)
		}
		l.Member(n, ca, tok)
	}
	l.StartAll()
}

// Volume creates the same volume in both pools: empty, or a copy of image.
func (l *Lab) Volume(name string, size int64, addr, image string) {
	l.t.Helper()
	for _, n := range l.Nodes {
		pool, err := storagenode.OpenPool(n.Dir)
		if err != nil {
			l.t.Fatal(err)
		}
		v, err := pool.Create(name, size, storagenode.VolumeOptions{Addr: addr})
		if err != nil {
			l.t.Fatal(err)
		}
		if image != "" {
			if _, err := storagenode.CopyFile(image, pool.Path(v)); err != nil {
				l.t.Fatal(err)
			}
		}
	}
}

// VolumePath is the file of a node's volume.
func (l *Lab) VolumePath(n *Node, name string) string {
	l.t.Helper()
	pool, err := storagenode.OpenPool(n.Dir)
	if err != nil {
		l.t.Fatal(err)
	}
	vs, err := pool.List()
	if err != nil {
		l.t.Fatal(err)
	}
	for _, v := range vs {
		if v.Name == name {
			return pool.Path(v)
		}
	}
	l.t.Fatalf("no volume %s in %s", name, n.Dir)
	return ""
}

// StartAll starts both nodes.
func (l *Lab) StartAll() {
	for _, n := range l.Nodes {
		l.Start(n)
	}
}

// Start starts a node's daemon (its log: Dir/fabricd.log).
func (l *Lab) Start(n *Node) {
	l.t.Helper()
	f, err := os.OpenFile(filepath.Join(n.Dir, "fabricd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		l.t.Fatal(err)
	}
	cmd := n.NS.Cmd(l.Bin, n.Args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	n.cmd, n.logf = cmd, f
}

// Kill signals the node's process group (ip netns exec and fabricd);
// SIGKILL also reaps it.
func (l *Lab) Kill(n *Node, sig syscall.Signal) {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-n.cmd.Process.Pid, sig)
	if sig == syscall.SIGKILL {
		_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGCONT)
		_ = n.cmd.Wait()
		n.cmd = nil
		n.logf.Close()
	}
}

// Stop asks the node's daemon to exit (SIGTERM: a planned shutdown) and
// waits for it, killing it after 10 s.
func (l *Lab) Stop(n *Node) error {
	if n.cmd == nil || n.cmd.Process == nil {
		return nil
	}
	_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- n.cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
		<-done
		err = fmt.Errorf("%s did not exit within 10 s of SIGTERM", n.Name)
	}
	n.cmd = nil
	n.logf.Close()
	return err
}

// Exited waits up to d for the node's daemon to exit on its own and
// returns its exit error (nil: status 0).
func (l *Lab) Exited(n *Node, d time.Duration) error {
	if n.cmd == nil || n.cmd.Process == nil {
		return fmt.Errorf("%s is not running", n.Name)
	}
	done := make(chan error, 1)
	go func() { done <- n.cmd.Wait() }()
	select {
	case err := <-done:
		n.cmd = nil
		n.logf.Close()
		return err
	case <-time.After(d):
		l.Kill(n, syscall.SIGKILL)
		return fmt.Errorf("%s still runs after %v", n.Name, d)
	}
}

// Status is what the node last wrote to its pair-status.json.
func (l *Lab) Status(n *Node) storagenode.PairStatus {
	s, _ := storagenode.ReadPairStatus(n.Dir)
	return s
}

// WaitInSync waits until both nodes serve in sync.
func (l *Lab) WaitInSync(within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		a, b := l.Status(l.Nodes[0]), l.Status(l.Nodes[1])
		if a.State == "in sync" && b.State == "in sync" && a.Serving && b.Serving &&
			time.Since(a.Updated) < 2*time.Second && time.Since(b.Updated) < 2*time.Second {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("pair not in sync after %v:\nsn1 %+v\nsn2 %+v\n%s", within, l.Status(l.Nodes[0]), l.Status(l.Nodes[1]), l.Logs())
}

// Logs is the tail of both nodes' logs.
func (l *Lab) Logs() string {
	var b strings.Builder
	for _, n := range l.Nodes {
		log, _ := os.ReadFile(filepath.Join(n.Dir, "fabricd.log"))
		if len(log) > 6000 {
			log = log[len(log)-6000:]
		}
		fmt.Fprintf(&b, "%s log (tail):\n%s\n", n.Name, log)
	}
	return b.String()
}

// Owner returns the node that owns writes and the other one.
func (l *Lab) Owner() (own, other *Node) {
	if l.Status(l.Nodes[0]).Role == "owner" {
		return l.Nodes[0], l.Nodes[1]
	}
	return l.Nodes[1], l.Nodes[0]
}
