package readme

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The README's by-hand story runs on these machines (README, "The
// controller, by hand"): each a network namespace with the interfaces,
// addresses and MACs the README gives it, and its own /var/lib/fabric,
// /etc/fabric, /run/fabric and /srv (bind mounts in a mount namespace of
// each command), its own home with the checkout's bin/ and work/images.
type machine struct {
	name string
	ns   string
	root string // its private directories
	nics []nic
	// libvirtd runs on the hardware nodes: what the README expects
	// installed there, set up as its Instances section says.
	libvirt bool
	ip      string // its boot-network address (libvirtd's migration_host)
}

type nic struct {
	name, bridge, addr, mac string
	inBr0                   bool // in bridge br0 with the guests (no address)
}

// sections are the README sections whose blocks the test runs, in order.
var sections = []string{"The controller, by hand", "A storage node, by hand", "Instances and live migration"}

// private are each machine's own directories.
var private = []string{"/var/lib/fabric", "/etc/fabric", "/run/fabric", "/var/log/fabric", "/srv"}

// libvirtPrivate are a hardware node's libvirt directories.
var libvirtPrivate = []string{"/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/log/libvirt", "/var/cache/libvirt"}

type world struct {
	t        *testing.T
	dir      string
	bin      string
	images   string
	prefix   string
	machines map[string]*machine
	procs    []*proc
	made     []string // mount points the test created on the host
	tokens   map[string]string
}

type proc struct {
	machine, cmd, log string
	c                 *exec.Cmd
	done              chan struct{}
}

func TestREADMECommands(t *testing.T) {
	if testing.Short() {
		t.Skip("namespace test (-short)")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	for _, b := range []string{"ip", "unshare", "libvirtd", "virsh", "qemu-system-x86_64"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed (scripts/deps.sh)", b)
		}
	}
	images, err := filepath.Abs("../../work/images")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(images, "instance-template.img")); err != nil {
		t.Skip("images not built: run `make images`")
	}
	f, err := os.Open("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"config", "admin", "sn1", "sn2", "witness", "hn1", "hn2"}
	steps, err := Parse(f, sections, names)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	r := make([]byte, 2)
	_, _ = rand.Read(r)
	w := &world{t: t, dir: t.TempDir(), images: images, prefix: "rd" + hex.EncodeToString(r), machines: map[string]*machine{}, tokens: map[string]string{}}
	t.Cleanup(w.down)
	w.bin = filepath.Join(w.dir, "bin")
	// What `make build` makes (the README's first step).
	if out, err := exec.Command("go", "build", "-o", w.bin+"/", "../../cmd/fabricd", "../../cmd/fabric").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	w.up([]*machine{
		{name: "config", nics: []nic{{name: "eth1", bridge: "boot", addr: "10.233.0.1/24"}}},
		{name: "admin", nics: []nic{{name: "eth0", bridge: "boot", addr: "10.233.0.100/24"}}},
		{name: "sn1", nics: []nic{{name: "eth1", bridge: "boot", addr: "10.233.0.21/24", mac: "52:54:00:00:00:21"}, {name: "eth2", bridge: "repl", addr: "10.0.9.1/24"}}},
		{name: "sn2", nics: []nic{{name: "eth1", bridge: "boot", addr: "10.233.0.22/24", mac: "52:54:00:00:00:22"}, {name: "eth2", bridge: "repl", addr: "10.0.9.2/24"}}},
		{name: "witness", nics: []nic{{name: "eth2", bridge: "repl", addr: "10.0.9.3/24"}}},
		{name: "hn1", libvirt: true, ip: "10.233.0.11", nics: []nic{{name: "eth0", bridge: "boot", addr: "10.233.0.11/24", mac: "52:54:00:00:00:11"}, {name: "eth1", bridge: "guests", inBr0: true}}},
		{name: "hn2", libvirt: true, ip: "10.233.0.12", nics: []nic{{name: "eth0", bridge: "boot", addr: "10.233.0.12/24", mac: "52:54:00:00:00:12"}, {name: "eth1", bridge: "guests", inBr0: true}}},
	})
	for _, s := range steps {
		for _, m := range s.Machines {
			w.step(s, w.machines[m])
		}
	}
}

// step runs one README command on one machine, as a reader would: a
// daemon in the background (waiting until it answers), anything else to
// its end, its output checked against what the README shows.
func (w *world) step(s Step, m *machine) {
	t := w.t
	where := fmt.Sprintf("README line %d (%s), on %s: %s", s.Line, s.Section, m.name, s.Cmd)
	cmd := s.Cmd
	switch {
	case strings.HasPrefix(cmd, "make "):
		t.Logf("%s: done by the test (binaries built, images from make images)", where)
		return
	case strings.HasPrefix(cmd, "scp "):
		if err := w.scp(m, cmd); err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		t.Logf("%s: copied", where)
		return
	}
	if strings.Contains(cmd, "TOKEN") {
		name := flagValue(cmd, "--name")
		tok, ok := w.tokens[name]
		if !ok {
			t.Fatalf("%s: TOKEN, but no `fabric node token %s` ran before", where, name)
		}
		cmd = strings.ReplaceAll(cmd, "TOKEN", tok)
	}
	if kind := daemonKind(cmd); kind != "" {
		w.startDaemon(s, m, kind, cmd, where)
		return
	}
	timeout := 3 * time.Minute
	follow := strings.Contains(cmd, "--follow")
	if follow {
		timeout = 2 * time.Second
	}
	t0 := time.Now()
	for {
		out, errOut, err := w.run(m, cmd, timeout)
		if follow && errors.Is(err, context.DeadlineExceeded) && out != "" {
			err = nil // Ctrl-C after a look
		}
		if err != nil {
			t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s%s", where, err, out, errOut, w.logs())
		}
		err = MatchOutput(s.Want, out)
		// What a command that only looks shows may not be there yet (a
		// guest still booting): a reader runs it again.
		if err != nil && readOnly(cmd) && time.Since(t0) < 30*time.Second {
			time.Sleep(time.Second)
			continue
		}
		t.Logf("%s (%.1fs)\n%s", where, time.Since(t0).Seconds(), indent(out))
		if err != nil {
			t.Errorf("%s: %v", where, err)
		}
		if strings.HasPrefix(cmd, "bin/fabric node token ") {
			f := strings.Fields(out)
			w.tokens[strings.Fields(cmd)[3]] = f[len(f)-1]
		}
		return
	}
}

// readOnly reports whether a command only shows something.
func readOnly(cmd string) bool {
	f := strings.Fields(commentless(cmd))
	if len(f) < 3 || f[0] != "bin/fabric" {
		return false
	}
	switch f[len(f)-2] {
	case "console", "show":
		return true
	}
	return f[len(f)-1] == "list" || f[len(f)-1] == "status"
}

// daemonKind says which daemon a command starts ("" for a command that
// ends by itself).
func daemonKind(cmd string) string {
	f := strings.Fields(cmd)
	switch {
	case strings.HasSuffix(cmd, "&") || strings.Contains(cmd, " & "):
		return "background"
	case len(f) < 3 || f[0] != "bin/fabricd":
		return ""
	case f[1] == "controller" || f[1] == "hwnode" || f[1] == "hwnode-disks":
		return f[1]
	case f[1] == "storage" && f[2] == "witness":
		return "witness"
	case f[1] == "storage" && strings.HasPrefix(f[2], "--"):
		return "storage"
	}
	return ""
}

// flagValue is the value of --flag in a command line ("" without it).
func flagValue(cmd, flag string) string {
	f := strings.Fields(cmd)
	for i := range len(f) - 1 {
		if f[i] == flag {
			return f[i+1]
		}
	}
	return ""
}

// startDaemon starts a daemon in the background, as the reader's other
// shell; one of the same kind started before on the machine is stopped
// first (the README says so: Ctrl-C). It returns once the daemon answers.
func (w *world) startDaemon(s Step, m *machine, kind, cmd, where string) {
	t := w.t
	cmd = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(commentless(cmd)), "&"))
	for _, p := range w.procs {
		if p.machine == m.name && daemonKind(p.cmd) == kind && kind != "background" && !p.exited() {
			t.Logf("on %s: stopping %s (Ctrl-C)", m.name, p.cmd)
			p.stop()
		}
	}
	p, err := w.background(m, cmd)
	if err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	ready := func() error { return nil }
	switch kind {
	case "controller":
		ready = func() error {
			_, _, err := w.run(m, "bin/fabric --config /var/lib/fabric/client.json status", 10*time.Second)
			return err
		}
	case "storage":
		if name := flagValue(cmd, "--name"); name != "" && flagValue(cmd, "--controller") != "" {
			ready = func() error { return w.alive("storage", name) }
		}
	case "hwnode":
		ready = func() error { return w.alive("node", flagValue(cmd, "--name")) }
	case "hwnode-disks", "background":
		if sock := flagValue(cmd, "--control"); sock != "" {
			ready = func() error {
				_, err := os.Stat(m.hostPath(sock))
				return err
			}
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	time.Sleep(300 * time.Millisecond)
	for {
		if p.exited() {
			b, _ := os.ReadFile(p.log)
			t.Fatalf("%s: exited:\n%s", where, tail(string(b), 30))
		}
		err := ready()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not answering after 30 s: %v%s", where, err, w.logs())
		}
		time.Sleep(300 * time.Millisecond)
	}
	// A daemon that dies on its flags does so at once.
	time.Sleep(500 * time.Millisecond)
	if p.exited() {
		b, _ := os.ReadFile(p.log)
		t.Fatalf("%s: exited:\n%s", where, tail(string(b), 30))
	}
	t.Logf("%s: running (log %s)", where, p.log)
}

// alive asks the controller whether a node's agent reports.
func (w *world) alive(kind, name string) error {
	cfg := w.machines["config"]
	args := "bin/fabric --config /var/lib/fabric/client.json node show " + name + " -o json"
	if kind == "storage" {
		args = "bin/fabric --config /var/lib/fabric/client.json storage show " + name + " -o json"
	}
	out, errOut, err := w.run(cfg, args, 10*time.Second)
	if err != nil {
		return fmt.Errorf("%v: %s", err, errOut)
	}
	var v struct {
		Alive  bool `json:"alive"`
		Status *struct {
			Alive bool `json:"alive"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return err
	}
	if v.Alive || v.Status != nil && v.Status.Alive {
		return nil
	}
	return fmt.Errorf("%s %s is not alive yet", kind, name)
}

// shell is how a command runs on a machine: in its network namespace and
// a mount namespace of its own, with the machine's directories bound in
// place, from its home.
func (w *world) shell(m *machine, cmd string) *exec.Cmd {
	var binds []string
	for _, d := range m.dirs() {
		binds = append(binds, fmt.Sprintf("mount --bind %s %s", m.hostPath(d), d))
	}
	home := filepath.Join(m.root, "home")
	script := fmt.Sprintf("set -e; hostname %s; %s; cd %s; export HOME=%s; exec bash -c \"$1\"", m.name, strings.Join(binds, "; "), home, home)
	c := exec.Command("ip", "netns", "exec", m.ns, "unshare", "--mount", "--uts", "--propagation", "private", "bash", "-c", script, "_", cmd)
	c.Env = append(os.Environ(), "FABRIC_CONFIG=", "FABRIC_CONTROLLER=", "FABRIC_TOKEN=", "FABRIC_CA=")
	return c
}

// run runs a command to its end.
func (w *world) run(m *machine, cmd string, timeout time.Duration) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := w.shell(m, cmd)
	var out, errOut bytes.Buffer
	c.Stdout, c.Stderr = &out, &errOut
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.Start(); err != nil {
		return "", "", err
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case err := <-done:
		return out.String(), errOut.String(), err
	case <-ctx.Done():
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
			<-done
		}
		return out.String(), errOut.String(), ctx.Err()
	}
}

// background starts a long-lived command, logging to the test directory.
func (w *world) background(m *machine, cmd string) (*proc, error) {
	log := filepath.Join(w.dir, fmt.Sprintf("%s-%d.log", m.name, len(w.procs)))
	f, err := os.Create(log)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	c := w.shell(m, cmd)
	c.Stdout, c.Stderr = f, f
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.Start(); err != nil {
		return nil, err
	}
	p := &proc{machine: m.name, cmd: cmd, log: log, c: c, done: make(chan struct{})}
	go func() { _ = c.Wait(); close(p.done) }()
	w.procs = append(w.procs, p)
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop ends a background process group: SIGTERM, then SIGKILL.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	_ = syscall.Kill(-p.c.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-p.c.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// scp copies MACHINE:PATH (or a local path) arguments to the last one, as
// scp between the machines would.
func (w *world) scp(m *machine, cmd string) error {
	args := strings.Fields(commentless(cmd))[1:]
	if len(args) < 2 {
		return fmt.Errorf("scp wants SOURCE... DEST")
	}
	resolve := func(a string) (string, error) {
		on := m
		if host, path, ok := strings.Cut(a, ":"); ok {
			if on = w.machines[host]; on == nil {
				return "", fmt.Errorf("no machine %q", host)
			}
			a = path
		}
		if strings.HasPrefix(a, "~/") {
			return filepath.Join(on.root, "home", a[2:]), nil
		}
		if !filepath.IsAbs(a) {
			return filepath.Join(on.root, "home", a), nil
		}
		return on.hostPath(a), nil
	}
	dst, err := resolve(args[len(args)-1])
	if err != nil {
		return err
	}
	fi, err := os.Stat(dst)
	toDir := err == nil && fi.IsDir()
	if len(args) > 2 && !toDir {
		return fmt.Errorf("%s: not a directory", args[len(args)-1])
	}
	for _, a := range args[:len(args)-1] {
		src, err := resolve(a)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		to := dst
		if toDir {
			to = filepath.Join(dst, filepath.Base(src))
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// dirs are the machine's private directories.
func (m *machine) dirs() []string {
	if m.libvirt {
		return append(append([]string{}, private...), libvirtPrivate...)
	}
	return private
}

// hostPath is where a path of the machine's private directories is on
// the host ("" outside them).
func (m *machine) hostPath(p string) string {
	for _, d := range m.dirs() {
		if p == d || strings.HasPrefix(p, d+"/") {
			return filepath.Join(m.root, "fs", p)
		}
	}
	return ""
}

// up makes the machines: namespaces, a switch namespace with the boot,
// replication and guest networks as bridges, each machine's directories
// and home, and libvirtd on the hardware nodes.
func (w *world) up(ms []*machine) {
	t := w.t
	sw := w.prefix + "-sw"
	w.mustNS(sw)
	for _, br := range []string{"boot", "repl", "guests"} {
		w.ip(sw, "link", "add", br, "type", "bridge", "stp_state", "0", "forward_delay", "0")
		w.ip(sw, "link", "set", br, "up")
	}
	for i, m := range ms {
		m.ns = fmt.Sprintf("%s-%s", w.prefix, m.name)
		m.root = filepath.Join(w.dir, m.name)
		w.machines[m.name] = m
		w.mustNS(m.ns)
		for j, n := range m.nics {
			port := fmt.Sprintf("p%d%d-%s", i, j, w.prefix)
			if err := exec.Command("ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", n.name, "netns", m.ns).Run(); err != nil {
				t.Fatalf("veth for %s %s: %v", m.name, n.name, err)
			}
			w.ip(sw, "link", "set", port, "master", n.bridge, "up")
			if n.mac != "" {
				w.ip(m.ns, "link", "set", n.name, "address", n.mac)
			}
			w.ip(m.ns, "link", "set", n.name, "up")
			if n.inBr0 {
				w.ip(m.ns, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
				w.ip(m.ns, "link", "set", n.name, "master", "br0")
				w.ip(m.ns, "link", "set", "br0", "up")
			}
			if n.addr != "" {
				w.ip(m.ns, "addr", "add", n.addr, "dev", n.name)
			}
		}
		for _, d := range m.dirs() {
			if err := os.MkdirAll(m.hostPath(d), 0o755); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
				w.made = append(w.made, d)
			}
		}
		home := filepath.Join(m.root, "home")
		if err := os.MkdirAll(filepath.Join(home, "work"), 0o755); err != nil {
			t.Fatal(err)
		}
		// The checkout: bin/ from `make build`, work/images from `make images`.
		if err := os.Symlink(w.bin, filepath.Join(home, "bin")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(w.images, filepath.Join(home, "work", "images")); err != nil {
			t.Fatal(err)
		}
		if m.libvirt {
			w.startLibvirtd(m, i)
		}
	}
}

// startLibvirtd runs a hardware node's libvirtd as the README's Instances
// section sets it up (plain TCP on the trusted boot network, QEMU's
// migrations on the node's address, a host UUID of its own). QEMU runs as
// root without a security driver or cgroups: the namespace is not a
// machine with systemd and AppArmor.
func (w *world) startLibvirtd(m *machine, i int) {
	conf := fmt.Sprintf("listen_tls = 0\nlisten_tcp = 1\nauth_tcp = \"none\"\nlisten_addr = %q\nhost_uuid = \"5ead0e00-0000-4000-8000-0000000000%02x\"\n", m.ip, i)
	qconf := fmt.Sprintf("migration_host = %q\nmigration_address = %q\nsecurity_driver = \"none\"\nuser = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\ncgroup_controllers = [ ]\nnamespaces = [ ]\nstdio_handler = \"file\"\n", m.ip, m.ip)
	for f, c := range map[string]string{"libvirtd.conf": conf, "qemu.conf": qconf, "libvirt.conf": ""} {
		if err := os.WriteFile(filepath.Join(m.hostPath("/etc/libvirt"), f), []byte(c), 0o644); err != nil {
			w.t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(m.hostPath("/var/log/libvirt"), "qemu"), 0o755); err != nil {
		w.t.Fatal(err)
	}
	p, err := w.background(m, "exec libvirtd --listen --pid-file /run/libvirt/libvirtd.pid")
	if err != nil {
		w.t.Fatal(err)
	}
	uri := "qemu+unix:///system?socket=" + filepath.Join(m.hostPath("/run/libvirt"), "libvirt-sock")
	for start := time.Now(); ; time.Sleep(200 * time.Millisecond) {
		if exec.Command("virsh", "-c", uri, "uri").Run() == nil {
			return
		}
		if p.exited() || time.Since(start) > 20*time.Second {
			b, _ := os.ReadFile(p.log)
			w.t.Fatalf("libvirtd on %s did not come up:\n%s", m.name, tail(string(b), 20))
		}
	}
}

func (w *world) mustNS(ns string) {
	_ = exec.Command("ip", "netns", "del", ns).Run()
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		w.t.Fatalf("ip netns add %s: %v %s", ns, err, out)
	}
	w.ip(ns, "link", "set", "lo", "up")
}

func (w *world) ip(ns string, args ...string) {
	if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
		w.t.Fatalf("ip -n %s %s: %v %s", ns, strings.Join(args, " "), err, out)
	}
}

// down removes everything: guests, daemons, namespaces, mount points.
func (w *world) down() {
	for _, m := range w.machines {
		if !m.libvirt {
			continue
		}
		uri := "qemu+unix:///system?socket=" + filepath.Join(m.hostPath("/run/libvirt"), "libvirt-sock")
		if out, err := exec.Command("virsh", "-c", uri, "list", "--all", "--name").Output(); err == nil {
			for _, d := range strings.Fields(string(out)) {
				_ = exec.Command("virsh", "-c", uri, "destroy", d).Run()
			}
		}
		pids, _ := filepath.Glob(filepath.Join(m.hostPath("/run/libvirt"), "qemu", "*.pid"))
		for _, f := range pids {
			if b, err := os.ReadFile(f); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	}
	if w.t.Failed() {
		w.t.Logf("daemon logs:%s", w.logs())
		for _, m := range w.machines {
			if m.libvirt {
				out, _ := exec.Command("sh", "-c", "ls -la "+m.hostPath("/var/log/fabric")+"/serial; tail -c 600 "+m.hostPath("/var/log/fabric")+"/serial/*").CombinedOutput()
				w.t.Logf("%s console logs:\n%s", m.name, out)
			}
		}
	}
	for i := len(w.procs) - 1; i >= 0; i-- {
		w.procs[i].stop()
	}
	for _, m := range w.machines {
		_ = exec.Command("ip", "netns", "del", m.ns).Run()
	}
	_ = exec.Command("ip", "netns", "del", w.prefix+"-sw").Run()
	for _, d := range w.made {
		_ = os.Remove(d)
	}
}

// logs are the tails of the daemons' logs, for a failure.
func (w *world) logs() string {
	var b strings.Builder
	for _, p := range w.procs {
		out, _ := os.ReadFile(p.log)
		fmt.Fprintf(&b, "\n--- on %s: %s\n%s", p.machine, p.cmd, tail(string(out), 15))
	}
	return b.String()
}

var comment = regexp.MustCompile(`\s+#.*$`)

// commentless drops a trailing shell comment.
func commentless(cmd string) string { return comment.ReplaceAllString(cmd, "") }

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func indent(s string) string {
	if s == "" {
		return ""
	}
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}
