// Package lab runs a whole fabric on one Linux machine in network
// namespaces joined by a bridge that plays the top-of-rack switch: a
// controller, a storage node, two hardware nodes each with its own libvirtd
// (in its own mount and UTS namespace) and agent, and a client. The
// end-to-end tests and `make demo` (through cmd/fabric-lab) use it, so
// there is one lab, not two.
//
// Everything Up creates is recorded in DIR/lab.json, and Down removes it
// (processes by PID, namespaces, mount points it made), also from another
// process after a crash.
package lab

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fabric-project/fabric/pxe"
)

// Addresses of the lab network.
const (
	Subnet       = "10.234.0.0/24"
	ControllerIP = "10.234.0.1"
	ClientIP     = "10.234.0.100"
	StorageIP    = "10.234.0.5" // the storage node reports to the controller from here
	APIPort      = "8443"
	// With a storage pair, the storage nodes' eth0 carries AoE only (a
	// node must send nothing from its AoE MAC while its peer answers for
	// it); they reach the controller and each other on a second network.
	MgmtSubnetPrefix = "10.235.0."
	MgmtControllerIP = MgmtSubnetPrefix + "1"
)

// Host is a hardware node of the lab.
type Host struct {
	Name string `json:"name"`
	NS   string `json:"ns"`
	IP   string `json:"ip"`
	Dir  string `json:"dir"` // libvirtd's per-host directories
	MAC  string `json:"mac"` // br0's address: the node's registered MAC
}

// Proc is a process the lab started.
type Proc struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	Log  string `json:"log"`
}

// Lab is a running lab; its JSON form is DIR/lab.json.
type Lab struct {
	Dir         string   `json:"dir"`
	Bin         string   `json:"bin"`
	Images      string   `json:"images"`
	Prefix      string   `json:"prefix"`
	MaxDowntime string   `json:"max_downtime,omitempty"`
	LibvirtTLS  bool     `json:"libvirt_tls,omitempty"`
	Watchdog    string   `json:"watchdog,omitempty"`
	Namespaces  []string `json:"namespaces"`
	Mounts      []string `json:"created_mountpoints"`
	Procs       []Proc   `json:"procs"`
	Hosts       []Host   `json:"hosts"`
	CtlNS       string   `json:"controller_ns"`
	StorageNS   string   `json:"storage_ns"`
	// Storage2NS is sn2's namespace when the lab runs a storage pair.
	Storage2NS string `json:"storage2_ns,omitempty"`
	// StorageArgs are each storage node's fabricd arguments (by process
	// name: storage, storage2), for RestartStorage.
	StorageArgs map[string][]string `json:"storage_args,omitempty"`
	ClientNS    string              `json:"client_ns"`
	SwitchNS    string              `json:"switch_ns"`
	// AgentExtra are flags added to every agent's command line at its
	// next start (a later flag overrides an earlier one).
	AgentExtra []string `json:"agent_extra,omitempty"`
	StateDir   string   `json:"state_dir"`
	DataDir    string   `json:"data_dir"`

	log, trace io.Writer
}

// Config configures Up.
type Config struct {
	Dir    string // work directory (state, logs); created
	Bin    string // directory with fabricd and fabric
	Images string // scripts/images.sh output
	Prefix string // namespace name prefix, short: "fl"
	Log    io.Writer
	// HostMemory caps the guest memory each hardware node offers, per
	// host ("" = default).
	HostMemory []string
	// Boot runs the controller's boot services (DHCP, TFTP, HTTP boot)
	// on the lab network, with each hardware node's root volume cloned
	// from images/hwnode-root.img, for BootDiskless.
	Boot bool
	// RootImageFile is the image hardware nodes' root volumes are cloned
	// from with Boot ("" = Images/hwnode-root.img, the busybox stub;
	// Images/hwnode-debian.img is the real hardware-node image).
	RootImageFile string
	// AgentTimeout is the controller's --agent-timeout ("" = 4s: the
	// namespace nodes answer at once; PXE-booted VMs under software
	// emulation need longer).
	AgentTimeout string
	// NoHosts builds no namespace hardware nodes: the fabric's hardware
	// nodes are PXE-booted VMs (StartPXENode).
	NoHosts bool
	// Trace, when set, gets every fabric command the lab runs, with its
	// output: the story the demo tells.
	Trace io.Writer
	// MaxDowntime is the agents' live migration downtime target ("" =
	// the agent's default).
	MaxDowntime string
	// CertTTL is the lifetime of node certificates ("" = the
	// controller's default); short in tests, so that agents renew.
	CertTTL string
	// LibvirtTLS has the hardware nodes' libvirtd migrate over TLS with
	// the fabric-issued node certificates (qemu+tls://, port 16514)
	// instead of plain TCP.
	LibvirtTLS bool
	// Hosts is the number of hardware nodes, hn1 to hnN (0: 2; at most
	// 9).
	Hosts int
	// Spare is how many of the last hosts are built (namespace, link,
	// libvirtd) but not registered: Join adds one to the fabric, as a
	// sysadmin adds a node.
	Spare int
	// StoragePair runs two storage nodes, sn1 and sn2, that the
	// controller makes a pair (fabric storage pair create): every
	// controller volume is on both.
	StoragePair bool
	// Watchdog, e.g. "8s": each agent feeds a watchdog with this timeout,
	// a stand-in process (fabric-lab watchdog) that "resets" the node's
	// namespace when it is not fed (the machine's own is never armed).
	Watchdog string
}

func (l *Lab) logf(format string, a ...any) {
	if l.log != nil {
		fmt.Fprintf(l.log, "lab: "+format+"\n", a...)
	}
}

func (l *Lab) save() error {
	b, _ := json.MarshalIndent(l, "", "  ")
	return os.WriteFile(filepath.Join(l.Dir, "lab.json"), b, 0o644)
}

// Load reads a lab's record from dir.
func Load(dir string, log io.Writer) (*Lab, error) {
	b, err := os.ReadFile(filepath.Join(dir, "lab.json"))
	if err != nil {
		return nil, err
	}
	l := &Lab{log: log}
	return l, json.Unmarshal(b, l)
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// In runs a command in a namespace and returns its combined output.
func In(ns string, name string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s (in %s): %v: %s", name, strings.Join(args, " "), ns, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// libvirtDirs are bind-mounted per hardware node in its libvirtd's mount
// namespace; /etc/pki holds the node's libvirt TLS credentials (the
// agent writes them to HOST/pki).
var libvirtDirs = []string{"/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/log/libvirt", "/var/cache/libvirt", "/etc/pki"}

// Up builds the lab. On error everything made so far is removed.
func Up(cfg Config) (l *Lab, err error) {
	if cfg.Prefix == "" {
		cfg.Prefix = "fl"
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, err
	}
	if old, err := Load(dir, cfg.Log); err == nil {
		old.logf("removing the lab left in %s", dir)
		_ = old.Down()
	}
	l = &Lab{Dir: dir, Bin: cfg.Bin, Images: cfg.Images, Prefix: cfg.Prefix, MaxDowntime: cfg.MaxDowntime, LibvirtTLS: cfg.LibvirtTLS, Watchdog: cfg.Watchdog, log: cfg.Log, trace: cfg.Trace}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// A fresh fabric each time: what an earlier lab left is removed.
	for _, pat := range []string{"controller", "storage*", "hn[0-9]", "*.log", "*migration-*", "demo-storage", "pair-probe"} {
		old, _ := filepath.Glob(filepath.Join(dir, pat))
		for _, o := range old {
			if err := os.RemoveAll(o); err != nil {
				return nil, err
			}
		}
	}
	defer func() {
		if err != nil {
			if derr := l.Down(); derr != nil {
				l.logf("cleanup after failure: %v", derr)
			}
		}
	}()
	t0 := time.Now()
	l.SwitchNS, l.CtlNS, l.StorageNS, l.ClientNS = cfg.Prefix+"-sw", cfg.Prefix+"-ctl", cfg.Prefix+"-st", cfg.Prefix+"-cl"
	if cfg.Hosts == 0 && !cfg.NoHosts {
		cfg.Hosts = 2
	}
	if !cfg.NoHosts && (cfg.Hosts < 1 || cfg.Hosts > 9 || cfg.Spare < 0 || cfg.Spare >= cfg.Hosts) {
		return l, fmt.Errorf("lab: %d hosts with %d spare: want 1 to 9 hosts, at least one not spare", cfg.Hosts, cfg.Spare)
	}
	all := []string{l.SwitchNS, l.CtlNS, l.StorageNS, l.ClientNS}
	if cfg.StoragePair {
		l.Storage2NS = cfg.Prefix + "-st2"
		all = append(all, l.Storage2NS)
	}
	for i := 1; i <= cfg.Hosts; i++ {
		h := Host{Name: fmt.Sprintf("hn%d", i), NS: fmt.Sprintf("%s-hn%d", cfg.Prefix, i), IP: fmt.Sprintf("10.234.0.1%d", i), MAC: fmt.Sprintf("02:fa:b0:00:00:1%d", i)}
		l.Hosts = append(l.Hosts, h)
		all = append(all, h.NS)
	}
	for _, ns := range all {
		_ = run("ip", "netns", "del", ns) // a leftover of a lab killed before it could record itself
		if err := run("ip", "netns", "add", ns); err != nil {
			return l, err
		}
		l.Namespaces = append(l.Namespaces, ns)
		if _, err := In(ns, "ip", "link", "set", "lo", "up"); err != nil {
			return l, err
		}
	}
	if err := l.save(); err != nil {
		return l, err
	}
	sw := l.SwitchNS
	if _, err := In(sw, "ip", "link", "add", "sw0", "type", "bridge", "stp_state", "0", "forward_delay", "0"); err != nil {
		return l, err
	}
	if _, err := In(sw, "ip", "link", "set", "sw0", "up"); err != nil {
		return l, err
	}
	port := func(ns, name string) error {
		if err := run("ip", "-n", sw, "link", "add", "p-"+name, "type", "veth", "peer", "name", "eth0", "netns", ns); err != nil {
			return err
		}
		if err := run("ip", "-n", sw, "link", "set", "p-"+name, "master", "sw0", "up"); err != nil {
			return err
		}
		// Jumbo frames: AoE carries 17 sectors per frame at MTU 9000.
		if err := run("ip", "-n", sw, "link", "set", "p-"+name, "mtu", "9000"); err != nil {
			return err
		}
		return run("ip", "-n", ns, "link", "set", "eth0", "mtu", "9000", "up")
	}
	ports := []struct{ ns, name, addr string }{
		{l.CtlNS, "ctl", ControllerIP + "/24"}, {l.StorageNS, "st", StorageIP + "/24"}, {l.ClientNS, "cl", ClientIP + "/24"},
	}
	if cfg.StoragePair {
		ports[1].addr = ""
		ports = append(ports, struct{ ns, name, addr string }{l.Storage2NS, "st2", ""})
		if err := l.mgmtNetwork(); err != nil {
			return l, err
		}
	}
	for _, p := range ports {
		if err := port(p.ns, p.name); err != nil {
			return l, err
		}
		if p.addr != "" {
			if _, err := In(p.ns, "ip", "addr", "add", p.addr, "dev", "eth0"); err != nil {
				return l, err
			}
		}
	}
	for i := range l.Hosts {
		h := &l.Hosts[i]
		if err := port(h.NS, h.Name); err != nil {
			return l, err
		}
		for _, c := range [][]string{
			{"link", "add", "br0", "address", h.MAC, "type", "bridge", "stp_state", "0", "forward_delay", "0"},
			{"link", "set", "eth0", "master", "br0"},
			{"link", "set", "br0", "mtu", "9000"},
			{"link", "set", "br0", "up"},
			{"addr", "add", h.IP + "/24", "dev", "br0"},
		} {
			if _, err := In(h.NS, "ip", c...); err != nil {
				return l, err
			}
		}
	}
	l.logf("network: %d namespaces, switch sw0, MTU 9000 (%.1fs)", len(all), time.Since(t0).Seconds())

	// libvirtd per hardware node.
	for _, d := range libvirtDirs {
		if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return l, err
			}
			l.Mounts = append(l.Mounts, d)
		}
	}
	for i := range l.Hosts {
		if err := l.startLibvirtd(&l.Hosts[i], i); err != nil {
			return l, err
		}
	}
	for _, h := range l.Hosts {
		if err := h.waitLibvirtd(); err != nil {
			return l, err
		}
	}
	l.logf("libvirtd on %d hardware nodes (%.1fs)", len(l.Hosts), time.Since(t0).Seconds())

	// The controller keeps images in its state directory and places
	// volumes on the storage node, which reports to it and holds what
	// its desired state lists (controller/volumes.go).
	l.StateDir, l.DataDir = filepath.Join(dir, "controller"), filepath.Join(dir, "storage")
	if err := os.MkdirAll(l.DataDir, 0o755); err != nil {
		return l, err
	}
	ctlArgs := []string{"controller", "--state-dir", l.StateDir,
		"--api-addr", ControllerIP + ":" + APIPort, "--api-host", ControllerIP, "--boot-subnet", Subnet, "--server-ip", ControllerIP,
		"--first-ip", "10.234.0.50", "--agent-timeout", cmp.Or(cfg.AgentTimeout, "4s")}
	if cfg.StoragePair {
		ctlArgs[4] = ":" + APIPort // both networks
		ctlArgs = append(ctlArgs, "--api-host", MgmtControllerIP)
	}
	if cfg.CertTTL != "" {
		ctlArgs = append(ctlArgs, "--cert-ttl", cfg.CertTTL)
	}
	if cfg.Boot {
		// The VMs run under software emulation with QEMU's fastest CPU
		// model, which offers SVM: the nodes must not load KVM (a KVM
		// nested in emulated SVM is not what a real node runs), and
		// their libvirtd emulates guests.
		ctlArgs = append(ctlArgs, "--boot-iface", "eth0", "--boot-dir", filepath.Join(l.Images, "boot"), "--hwnode-root-image", "hwnode-root",
			"--hwnode-cmdline", pxe.DefaultCmdline+" modprobe.blacklist=kvm_amd,kvm_intel")
	}
	if err := l.start("controller", l.CtlNS, filepath.Join(l.Bin, "fabricd"), ctlArgs...); err != nil {
		return l, err
	}
	if err := waitFor(20*time.Second, func() bool {
		_, err := l.Fabric("node", "list")
		return err == nil
	}); err != nil {
		return l, fmt.Errorf("controller API did not come up: %w", err)
	}
	// The storage nodes are members: they report what they serve and
	// which initiators they hear, and apply fences (HA).
	stores := []struct{ proc, name, ns, dir, ip string }{{"storage", "sn1", l.StorageNS, l.DataDir, StorageIP}}
	if cfg.StoragePair {
		stores = append(stores, struct{ proc, name, ns, dir, ip string }{"storage2", "sn2", l.Storage2NS, filepath.Join(dir, "storage2"), "10.234.0.6"})
	}
	l.StorageArgs = map[string][]string{}
	for i, st := range stores {
		if err := os.MkdirAll(st.dir, 0o755); err != nil {
			return l, err
		}
		mac, err := In(st.ns, "cat", "/sys/class/net/eth0/address")
		if err != nil {
			return l, err
		}
		if _, err := l.Fabric("node", "register", "--name", st.name, "--mac", strings.TrimSpace(mac), "--role", "storage", "--ip", st.ip); err != nil {
			return l, err
		}
		tok, err := l.Fabric("node", "token", st.name)
		if err != nil {
			return l, err
		}
		f := strings.Fields(tok)
		args := []string{"storage", "--iface", "eth0", "--data-dir", st.dir, "--controller", "https://" + ControllerIP + ":" + APIPort,
			"--ca", filepath.Join(l.StateDir, "ca", "ca.crt"), "--name", st.name, "--token", f[len(f)-1]}
		if cfg.StoragePair {
			mgmt := fmt.Sprintf("%s%d", MgmtSubnetPrefix, 5+i)
			args[6] = "https://" + MgmtControllerIP + ":" + APIPort
			args = append(args, "--replication-listen", mgmt+":7410")
		}
		l.StorageArgs[st.proc] = args
		if err := l.start(st.proc, st.ns, filepath.Join(l.Bin, "fabricd"), args...); err != nil {
			return l, err
		}
	}
	if err := waitFor(20*time.Second, func() bool {
		out, err := l.Fabric("storage", "list")
		return err == nil && strings.Count(out, "  alive") == len(stores)
	}); err != nil {
		out, _ := l.Fabric("storage", "list")
		for _, st := range stores {
			b, _ := os.ReadFile(filepath.Join(dir, st.proc+".log"))
			out += fmt.Sprintf("%s.log:\n%s\n", st.proc, b[max(0, len(b)-2000):])
		}
		return l, fmt.Errorf("storage nodes did not report: %w\n%s", err, out)
	}
	if cfg.StoragePair {
		if _, err := l.Fabric("storage", "pair", "create", "sn1", "sn2"); err != nil {
			return l, err
		}
	}
	l.logf("controller and %d storage nodes (%.1fs)", len(stores), time.Since(t0).Seconds())
	if cfg.Boot {
		img := cfg.RootImageFile
		if img == "" {
			img = filepath.Join(l.Images, "hwnode-root.img")
		}
		t1 := time.Now()
		if _, err := l.Fabric("image", "import", "hwnode-root", img); err != nil {
			return l, err
		}
		l.logf("root image %s imported (%.1fs)", filepath.Base(img), time.Since(t1).Seconds())
	}
	members := l.Hosts[:len(l.Hosts)-cfg.Spare]
	for i, h := range members {
		if _, err := l.Fabric("node", "register", "--name", h.Name, "--mac", h.MAC, "--role", "hwnode", "--ip", h.IP); err != nil {
			return l, err
		}
		mem := ""
		if i < len(cfg.HostMemory) {
			mem = cfg.HostMemory[i]
		}
		if err := l.StartAgent(h, mem); err != nil {
			return l, err
		}
	}
	if err := waitFor(20*time.Second, func() bool {
		out, err := l.Fabric("node", "list")
		return err == nil && strings.Count(out, "alive") == len(members)
	}); err != nil {
		out, _ := l.Fabric("node", "list")
		return l, fmt.Errorf("hardware node agents did not report: %w\n%s", err, out)
	}
	if cfg.LibvirtTLS {
		// libvirtd needs its certificate before it can listen for TLS,
		// and the agent enrolls only once libvirtd answers: libvirtd
		// started without TLS, the agents enrolled and wrote their
		// certificates; now it restarts with TLS (the agents reconnect,
		// guests are not affected).
		for _, h := range members {
			if err := waitFor(10*time.Second, h.hasTLSCert); err != nil {
				return l, fmt.Errorf("agent of %s wrote no libvirt TLS credentials: %w", h.Name, err)
			}
			if err := l.StopLibvirtd(h); err != nil {
				return l, err
			}
			if err := l.StartLibvirtd(h); err != nil {
				return l, err
			}
		}
		l.logf("libvirtd restarted with TLS (fabric node certificates)")
	}
	l.logf("agents enrolled and reporting; lab up in %.1fs", time.Since(t0).Seconds())
	return l, l.save()
}

// pkiDir is where a host's agent writes its libvirt TLS credentials: its
// libvirtd sees it as /etc/pki.
func (h Host) pkiDir() string { return filepath.Join(h.Dir, "pki") }

// hasTLSCert reports whether the host's agent has written them.
func (h Host) hasTLSCert() bool {
	_, err := os.Stat(filepath.Join(h.pkiDir(), "libvirt", "private", "serverkey.pem"))
	return err == nil
}

// waitLibvirtd waits until a host's libvirtd answers.
func (h Host) waitLibvirtd() error {
	if err := waitFor(20*time.Second, func() bool {
		_, err := exec.Command("virsh", "-c", h.URI(), "uri").CombinedOutput()
		return err == nil
	}); err != nil {
		return fmt.Errorf("libvirtd on %s did not come up; see %s: %w", h.Name, filepath.Join(h.Dir, "libvirtd.log"), err)
	}
	return nil
}

// URI is the libvirt URI of a host's daemon, from the host namespace.
func (h Host) URI() string {
	return "qemu+unix:///system?socket=" + filepath.Join(h.Dir, "run", "libvirt-sock")
}

func (l *Lab) startLibvirtd(h *Host, i int) error {
	h.Dir = filepath.Join(l.Dir, h.Name)
	for _, d := range []string{"etc", "run", "lib", "log/qemu", "cache", "agent", "pki"} {
		if err := os.MkdirAll(filepath.Join(h.Dir, d), 0o755); err != nil {
			return err
		}
	}
	listen := "listen_tls = 0\nlisten_tcp = 1\n"
	if l.LibvirtTLS && h.hasTLSCert() {
		// The credentials at their default paths (/etc/pki is HOST/pki
		// in libvirtd's mount namespace), where virt-admin
		// server-update-tls rereads them. Any certificate of the
		// fabric CA may connect (tls_allowed_dn_list could pin the OU
		// to hwnode).
		listen = "listen_tls = 1\nlisten_tcp = 0\ntls_port = \"16514\"\n"
	}
	conf := listen + fmt.Sprintf(`listen_addr = "%s"
tcp_port = "16509"
auth_tcp = "none"
auth_unix_rw = "none"
auth_unix_ro = "none"
unix_sock_group = "root"
unix_sock_rw_perms = "0770"
host_uuid = "7a7a7a7a-0000-4000-8000-0000000000%02x"
log_level = 3
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
`, h.IP, i+1)
	qconf := fmt.Sprintf(`security_driver = "none"
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
migration_address = "%s"
migration_host = "%s"
migration_port_min = 49152
migration_port_max = 49215
`, h.IP, h.IP)
	for f, c := range map[string]string{"etc/libvirtd.conf": conf, "etc/qemu.conf": qconf, "etc/libvirt.conf": ""} {
		if err := os.WriteFile(filepath.Join(h.Dir, f), []byte(c), 0o644); err != nil {
			return err
		}
	}
	script := fmt.Sprintf(`hostname %s
mount --bind %[2]s/etc /etc/libvirt && mount --bind %[2]s/run /run/libvirt && mount --bind %[2]s/lib /var/lib/libvirt &&
mount --bind %[2]s/log /var/log/libvirt && mount --bind %[2]s/cache /var/cache/libvirt && mount --bind %[2]s/pki /etc/pki || exit 1
exec libvirtd --listen --pid-file %[2]s/libvirtd.pid --config /etc/libvirt/libvirtd.conf`, h.Name, h.Dir)
	return l.start("libvirtd-"+h.Name, h.NS, "unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", script)
}

// diskSocket is a host's disk server control socket.
func (h Host) diskSocket() string { return filepath.Join(h.Dir, "agent", "disks.sock") }

// StartAgent starts a hardware node's agent (again, after StopAgent), and
// its disk server if it does not run yet.
func (l *Lab) StartAgent(h Host, memory string) error {
	if !l.running("disks-" + h.Name) {
		if err := l.start("disks-"+h.Name, h.NS, filepath.Join(l.Bin, "fabricd"), "hwnode-disks", "--aoe-iface", "br0",
			"--nbd-addr", "127.0.0.1:10809", "--control", h.diskSocket()); err != nil {
			return err
		}
		if err := waitFor(10*time.Second, func() bool { _, err := os.Stat(h.diskSocket()); return err == nil }); err != nil {
			return fmt.Errorf("disk server of %s did not start: %w", h.Name, err)
		}
	}
	if l.Watchdog != "" && !l.running("watchdog-"+h.Name) {
		if err := os.WriteFile(h.watchdogFile(), nil, 0o644); err != nil {
			return err
		}
		if err := l.start("watchdog-"+h.Name, h.NS, filepath.Join(l.Bin, "fabric-lab"), "watchdog", "--file", h.watchdogFile(),
			"--timeout", l.Watchdog, "--iface", "eth0"); err != nil {
			return err
		}
	}
	tok, err := l.Fabric("node", "token", h.Name)
	if err != nil {
		return err
	}
	return l.start("agent-"+h.Name, h.NS, filepath.Join(l.Bin, "fabricd"), l.agentArgs(h, strings.TrimSpace(tok), memory)...)
}

// watchdogFile is what a host's agent feeds when the lab has a watchdog.
func (h Host) watchdogFile() string { return filepath.Join(h.Dir, "watchdog") }

// Reset says whether a host's stand-in watchdog has reset it.
func (l *Lab) Reset(h Host) bool {
	b, _ := os.ReadFile(filepath.Join(l.Dir, "watchdog-"+h.Name+".log"))
	return strings.Contains(string(b), "resetting the node")
}

// agentArgs is a hardware node agent's command line ("" token: none).
func (l *Lab) agentArgs(h Host, token, memory string) []string {
	args := []string{"hwnode", "--name", h.Name, "--controller", "https://" + ControllerIP + ":" + APIPort,
		"--ca", filepath.Join(l.StateDir, "ca", "ca.crt"),
		"--state-dir", filepath.Join(h.Dir, "agent"), "--libvirt-socket", filepath.Join(h.Dir, "run", "libvirt-sock"),
		"--hypervisor", "qemu", "--disk", "nbd", "--disk-server", h.diskSocket(),
		"--kernel", filepath.Join(l.Images, "instance", "vmlinuz"), "--initrd", filepath.Join(l.Images, "instance", "initrd.img"),
		"--serial-dir", "/var/log/libvirt/qemu", "--shutdown-timeout", "5s"}
	if l.LibvirtTLS {
		args = append(args, "--migration-uri", "qemu+tls://"+h.IP+"/system", "--libvirt-pki-dir", h.pkiDir(),
			"--libvirt-admin-uri", "libvirtd:///system?socket="+filepath.Join(h.Dir, "run", "libvirt-admin-sock"))
	} else {
		args = append(args, "--migration-uri", "qemu+tcp://"+h.IP+"/system")
	}
	if token != "" {
		args = append(args, "--token", token)
	}
	if memory != "" {
		args = append(args, "--memory", memory)
	}
	if l.MaxDowntime != "" {
		args = append(args, "--max-downtime", l.MaxDowntime)
	}
	if l.Watchdog != "" {
		args = append(args, "--watchdog", h.watchdogFile())
	}
	return append(args, l.AgentExtra...)
}

// Join adds a spare host to the fabric, as a sysadmin adds a node:
// registers it and starts its agent (memory: what it offers guests, ""
// for all), and waits until it reports.
func (l *Lab) Join(h Host, memory string) error {
	if _, err := l.Fabric("node", "register", "--name", h.Name, "--mac", h.MAC, "--role", "hwnode", "--ip", h.IP); err != nil {
		return err
	}
	if err := l.StartAgent(h, memory); err != nil {
		return err
	}
	return waitFor(20*time.Second, func() bool {
		out, _ := l.Fabric("node", "list")
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] == h.Name && strings.Contains(line, "alive") {
				return true
			}
		}
		return false
	})
}

// StopAgent kills a hardware node's agent (SIGKILL: a dead node).
func (l *Lab) StopAgent(h Host) error { return l.Kill("agent-" + h.Name) }

// StartLibvirtd starts a hardware node's libvirtd again after
// StopLibvirtd and waits until it answers.
func (l *Lab) StartLibvirtd(h Host) error {
	for i := range l.Hosts {
		if l.Hosts[i].Name != h.Name {
			continue
		}
		if err := l.startLibvirtd(&l.Hosts[i], i); err != nil {
			return err
		}
		return l.Hosts[i].waitLibvirtd()
	}
	return fmt.Errorf("no host %s in the lab", h.Name)
}

// StopLibvirtd kills a hardware node's libvirtd; its guests keep running.
func (l *Lab) StopLibvirtd(h Host) error { return l.Kill("libvirtd-" + h.Name) }

// Exited reports whether a process the lab started has ended by itself
// (it is forgotten then).
func (l *Lab) Exited(name string) bool {
	for i, p := range l.Procs {
		if p.Name == name {
			if syscall.Kill(p.PID, 0) == nil {
				return false
			}
			l.Procs = append(l.Procs[:i], l.Procs[i+1:]...)
			_ = l.save()
			return true
		}
	}
	return false
}

func (l *Lab) running(name string) bool {
	for _, p := range l.Procs {
		if p.Name == name {
			return true
		}
	}
	return false
}

// mgmtNetwork is the storage pair's second network: bridge mg0 in the
// switch namespace, with the controller (eth1, MgmtControllerIP) and each
// storage node (eth1, .5 and .6) on it.
func (l *Lab) mgmtNetwork() error {
	sw := l.SwitchNS
	if _, err := In(sw, "ip", "link", "add", "mg0", "type", "bridge", "stp_state", "0", "forward_delay", "0"); err != nil {
		return err
	}
	if _, err := In(sw, "ip", "link", "set", "mg0", "up"); err != nil {
		return err
	}
	for _, m := range []struct{ ns, name, ip string }{
		{l.CtlNS, "ctl", MgmtControllerIP}, {l.StorageNS, "st", MgmtSubnetPrefix + "5"}, {l.Storage2NS, "st2", MgmtSubnetPrefix + "6"},
	} {
		for _, c := range [][]string{
			{"ip", "-n", sw, "link", "add", "m-" + m.name, "type", "veth", "peer", "name", "eth1", "netns", m.ns},
			{"ip", "-n", sw, "link", "set", "m-" + m.name, "master", "mg0", "up"},
			{"ip", "-n", m.ns, "addr", "add", m.ip + "/24", "dev", "eth1"},
			{"ip", "-n", m.ns, "link", "set", "eth1", "up"},
		} {
			if err := run(c[0], c[1:]...); err != nil {
				return err
			}
		}
	}
	return nil
}

// RestartStorage starts storage node process name (storage, storage2)
// again with its arguments, after Kill.
func (l *Lab) RestartStorage(name string) error {
	args, ok := l.StorageArgs[name]
	if !ok {
		return fmt.Errorf("no storage process %s in the lab", name)
	}
	ns := l.StorageNS
	if name == "storage2" {
		ns = l.Storage2NS
	}
	return l.start(name, ns, filepath.Join(l.Bin, "fabricd"), args...)
}

// StorageProc is the lab process name of storage node node (sn1, sn2).
func StorageProc(node string) string {
	if node == "sn2" {
		return "storage2"
	}
	return "storage"
}

// Kill kills a process the lab started, by its name (SIGKILL).
func (l *Lab) Kill(name string) error {
	for i, p := range l.Procs {
		if p.Name == name {
			_ = syscall.Kill(p.PID, syscall.SIGKILL)
			waitGone(p.PID, 5*time.Second)
			l.Procs = append(l.Procs[:i], l.Procs[i+1:]...)
			return l.save()
		}
	}
	return fmt.Errorf("no process %s in the lab", name)
}

// start runs a long-lived process in a namespace, logging to DIR/NAME.log.
func (l *Lab) start(name, ns, bin string, args ...string) error {
	logPath := filepath.Join(l.Dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	go func() { _ = cmd.Wait() }() // reap
	l.Procs = append(l.Procs, Proc{Name: name, PID: cmd.Process.Pid, Log: logPath})
	return l.save()
}

// Fabric runs the fabric CLI in the client namespace against the lab's
// controller.
func (l *Lab) Fabric(args ...string) (string, error) { return l.fabric(true, args...) }

// FabricQuiet is Fabric without the trace: for polling.
func (l *Lab) FabricQuiet(args ...string) (string, error) { return l.fabric(false, args...) }

func (l *Lab) fabric(trace bool, args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", l.ClientNS, filepath.Join(l.Bin, "fabric"), "--config", l.ClientConfig()}, args...)...)
	out, err := cmd.CombinedOutput()
	if trace && l.trace != nil {
		fmt.Fprintf(l.trace, "$ fabric %s\n%s", strings.Join(args, " "), indent(string(out)))
	}
	if err != nil {
		return string(out), fmt.Errorf("fabric %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func indent(s string) string {
	if s == "" {
		return ""
	}
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ") + "\n"
}

// SetTrace sets (or with nil clears) where fabric commands are echoed.
func (l *Lab) SetTrace(w io.Writer) { l.trace = w }

// BootDiskless powers on a QEMU VM without a disk for the registered
// hardware node name with mac, on the lab switch; it returns the VM's boot
// timeline once its root on AoE is mounted and written. The VM is gone
// when it returns.
func (l *Lab) BootDiskless(name, mac string, timeout time.Duration, opts ...VMOption) ([]BootEvent, []string, error) {
	tap := "tap-" + name
	for _, c := range [][]string{
		{"tuntap", "add", "dev", tap, "mode", "tap"},
		{"link", "set", tap, "mtu", "9000"},
		{"link", "set", tap, "master", "sw0", "up"},
	} {
		if _, err := In(l.SwitchNS, "ip", c...); err != nil {
			return nil, nil, err
		}
	}
	defer func() { _, _ = In(l.SwitchNS, "ip", "link", "del", tap) }()
	return BootVM(l.SwitchNS, tap, mac, "FABRIC-ROOT-OK", timeout, opts...)
}

// StartPXENode powers on a diskless VM with two NICs on the lab switch:
// eth0 (mac, the registered MAC) boots from the controller and carries
// AoE, eth1 (guestMAC) is the guest uplink. The VM and its taps are removed
// by the returned stop.
func (l *Lab) StartPXENode(name, mac, guestMAC string, opts ...VMOption) (*VM, func(), error) {
	taps := []string{"tap-" + name, "tpg-" + name}
	del := func() {
		for _, t := range taps {
			_, _ = In(l.SwitchNS, "ip", "link", "del", t)
		}
	}
	for _, tap := range taps {
		for _, c := range [][]string{
			{"tuntap", "add", "dev", tap, "mode", "tap"},
			{"link", "set", tap, "mtu", "9000"},
			{"link", "set", tap, "master", "sw0", "up"},
		} {
			if _, err := In(l.SwitchNS, "ip", c...); err != nil {
				del()
				return nil, nil, err
			}
		}
	}
	v, err := StartVM(l.SwitchNS, taps[0], mac, append([]VMOption{SecondNIC(taps[1], guestMAC), ConsoleLog(filepath.Join(l.Dir, "console-"+name+".log"))}, opts...)...)
	if err != nil {
		del()
		return nil, nil, err
	}
	return v, func() { v.Stop(); del() }, nil
}

// ClientConfig is the path of the controller's client.json.
func (l *Lab) ClientConfig() string { return filepath.Join(l.StateDir, "client.json") }

// Down removes the lab: guests, processes, namespaces, mount points.
func (l *Lab) Down() error {
	var errs []error
	for _, h := range l.Hosts {
		if h.Dir == "" {
			continue
		}
		// Guests first, while libvirtd still runs; then any QEMU left.
		if out, err := exec.Command("virsh", "-c", h.URI(), "list", "--all", "--name").Output(); err == nil {
			for _, d := range strings.Fields(string(out)) {
				_ = exec.Command("virsh", "-c", h.URI(), "destroy", d).Run()
			}
		}
		pids, _ := filepath.Glob(filepath.Join(h.Dir, "run", "qemu", "*.pid"))
		for _, p := range pids {
			if b, err := os.ReadFile(p); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	}
	for i := len(l.Procs) - 1; i >= 0; i-- {
		p := l.Procs[i]
		if err := syscall.Kill(p.PID, syscall.SIGTERM); err == nil {
			if !waitGone(p.PID, 10*time.Second) {
				_ = syscall.Kill(p.PID, syscall.SIGKILL)
				waitGone(p.PID, 5*time.Second)
			}
		}
	}
	l.Procs = nil
	for _, ns := range l.Namespaces {
		if err := run("ip", "netns", "del", ns); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	l.Namespaces = nil
	for _, m := range l.Mounts {
		_ = os.Remove(m)
	}
	l.Mounts = nil
	if err := os.Remove(filepath.Join(l.Dir, "lab.json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	l.logf("down")
	return errors.Join(errs...)
}

// waitGone waits for a process to exit (or become a zombie).
func waitGone(pid int, d time.Duration) bool {
	return waitFor(d, func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		f := strings.Fields(string(b))
		return len(f) > 2 && f[2] == "Z"
	}) == nil
}

func waitFor(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s", d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// PowerOff stands in for a hardware node losing power: every process in
// its namespace (libvirtd, QEMU, the agent, the disk server) is killed
// and its link to the switch cut.
func (l *Lab) PowerOff(h Host) error {
	out, err := exec.Command("ip", "netns", "pids", h.NS).Output()
	if err != nil {
		return fmt.Errorf("ip netns pids %s: %w", h.NS, err)
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for _, name := range []string{"agent-" + h.Name, "libvirtd-" + h.Name, "disks-" + h.Name, "watchdog-" + h.Name} {
		_ = l.Kill(name)
	}
	_, err = In(h.NS, "ip", "link", "set", "eth0", "down")
	return err
}
