package controller

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/internal/lab"
	"github.com/fabric-project/fabric/internal/netns"
	"github.com/fabric-project/fabric/internal/pairlab"
	"github.com/fabric-project/fabric/pxe"
	"github.com/fabric-project/fabric/storagenode"
)

// imagesDir is where scripts/images.sh puts its output (make images).
func imagesDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../work/images")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "hwnode-root.img")); err != nil {
		t.Skip("boot images not built: run `make images` (scripts/images.sh)")
	}
	return dir
}

// qemuLab is one namespace with a bridge (the boot network), a tap per VM,
// a controller with boot services on the bridge and a storage node serving
// each registered hardware node's root volume on the bridge.
type qemuLab struct {
	ns     *netns.NS
	c      *Controller
	tg     *storagenode.Target
	pool   *storagenode.Pool
	nodes  []controllerapi.Node
	images string
}

func newQEMULab(t *testing.T, macs []string, prof pxe.Profile, rootImage string) *qemuLab {
	t.Helper()
	netns.Skip(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed (scripts/deps.sh)")
	}
	l := &qemuLab{images: imagesDir(t)}
	l.ns = netns.New(t, "fboot")
	ns := l.ns
	ns.Must(t, "ip", "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
	ns.Must(t, "ip", "addr", "add", "10.233.0.1/24", "dev", "br0")
	ns.Must(t, "ip", "link", "set", "br0", "up")
	for i := range macs {
		tap := fmt.Sprintf("tap%d", i)
		ns.Must(t, "ip", "tuntap", "add", "dev", tap, "mode", "tap")
		ns.Must(t, "ip", "link", "set", tap, "master", "br0")
		ns.Must(t, "ip", "link", "set", tap, "up")
	}
	c, err := New(Config{StateDir: t.TempDir(), BootSubnet: netip.MustParsePrefix("10.233.0.0/24"), ServerIP: netip.MustParseAddr("10.233.0.1"),
		Boot: pxe.Config{Iface: "br0", BootDir: filepath.Join(l.images, "boot"), RA: true, TFTPSinglePort: true,
			Profiles: map[string]pxe.Profile{"hwnode": prof}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	l.c = c

	// One root volume per hardware node, at the address the registry
	// assigned, cloned from the image.
	pool, err := storagenode.OpenPool(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	l.pool = pool
	fi, err := os.Stat(filepath.Join(l.images, rootImage))
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := pool.Create("template", fi.Size(), storagenode.VolumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := storagenode.CopyFile(filepath.Join(l.images, rootImage), pool.Path(tmpl)); err != nil {
		t.Fatal(err)
	}
	for i, mac := range macs {
		n, err := c.Registry().Register(controllerapi.RegisterRequest{Name: fmt.Sprintf("hn%d", i+1), MAC: mac, Role: "hwnode"})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := pool.Clone("template", n.Name+"-root", storagenode.VolumeOptions{Addr: n.RootVolume}); err != nil {
			t.Fatal(err)
		}
		l.nodes = append(l.nodes, n)
	}
	exports, err := pool.Exports()
	if err != nil {
		t.Fatal(err)
	}
	l.tg = storagenode.NewTarget(storagenode.TargetConfig{Configs: pool,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	t.Cleanup(func() { l.tg.Close() })
	for _, e := range exports {
		if err := l.tg.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	var svc *pxe.Services
	var port *storagenode.Port
	if err := ns.Do(func() (err error) {
		if svc, err = pxe.Listen(c.BootConfig("https://10.233.0.1:8443")); err != nil {
			return err
		}
		port, err = storagenode.Listen("br0", 1)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = svc.Serve(ctx) }()
	go func() { defer wg.Done(); _ = l.tg.Serve(ctx, port) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return l
}

// TestQEMUPXEBootOntoAoERoot is the end-to-end boot: two diskless QEMU VMs
// with Debian's iPXE ROM power on at once, get their addresses and the iPXE
// script from our DHCP and HTTP boot services, load the Debian kernel and
// initramfs over HTTP, find their root volumes on our storage node with the
// Linux aoe driver, mount them and run /sbin/init from them.
func TestQEMUPXEBootOntoAoERoot(t *testing.T) {
	l := newQEMULab(t, []string{"52:54:00:fa:b0:01", "52:54:00:fa:b0:02"},
		pxe.Profile{Kernel: "hwnode/vmlinuz", Initrd: "hwnode/initrd.img"}, "hwnode-root.img")
	c, nodes, ns, tg := l.c, l.nodes, l.ns, l.tg
	type result struct {
		node     string
		timeline []lab.BootEvent
		serial   []string
		err      error
	}
	results := make([]result, len(nodes))
	start := time.Now()
	var vms sync.WaitGroup
	for i, n := range nodes {
		vms.Add(1)
		go func() {
			defer vms.Done()
			r := &results[i]
			r.node = n.Name
			r.timeline, r.serial, r.err = lab.BootVM(ns.Name, fmt.Sprintf("tap%d", i), n.MAC, "FABRIC-ROOT-OK", 180*time.Second)
		}()
	}
	// The DHCP ACK time, from the registry's lease record.
	dhcp := map[string]time.Duration{}
	for done := false; !done; {
		done = true
		for _, n := range nodes {
			if _, ok := dhcp[n.Name]; ok {
				continue
			}
			got, err := c.Registry().Node(n.Name)
			if err == nil && got.Lease != nil && got.Lease.State == pxe.LeaseBound {
				dhcp[n.Name] = time.Since(start)
				continue
			}
			done = false
		}
		if time.Since(start) > 60*time.Second {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	vms.Wait()

	for _, r := range results {
		if r.err != nil {
			t.Errorf("%s: %v\nserial console:\n%s", r.node, r.err, strings.Join(r.serial, "\n"))
			continue
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%s boot timeline (s from power-on, 2 VMs at once, TCG):", r.node)
		if d, ok := dhcp[r.node]; ok {
			fmt.Fprintf(&b, " dhcp-ack %.1f", d.Seconds())
		}
		fmt.Fprintf(&b, " %s", lab.Timeline(r.timeline))
		t.Log(b.String())
	}
	s := tg.Stats()
	if s.ReadBytes == 0 || s.WrittenBytes == 0 {
		t.Errorf("the storage node served no data: %+v", s)
	}
	t.Logf("storage node: %+v", s)
}

// TestQEMUMkfsOnAoE: the real Linux aoe driver in a PXE-booted guest makes
// ext4 on a blank volume served by our target, writes a file, remounts with
// a cold cache and reads it back; then the volume file on the storage node
// is checked as ext4 (e2fsck) and the file read from it (debugfs).
func TestQEMUMkfsOnAoE(t *testing.T) {
	for _, b := range []string{"e2fsck", "debugfs"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed (e2fsprogs)", b)
		}
	}
	l := newQEMULab(t, []string{"52:54:00:fa:b0:21"},
		pxe.Profile{Kernel: "hwnode/vmlinuz", Initrd: "hwnode/initrd.img", Cmdline: pxe.DefaultCmdline + " fabric.scratch=e7.0"}, "hwnode-root.img")
	v, err := l.pool.Create("scratch", 64<<20, storagenode.VolumeOptions{Addr: "e7.0"})
	if err != nil {
		t.Fatal(err)
	}
	exports, err := l.pool.Exports()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range exports {
		if e.Shelf == 7 {
			if err := l.tg.Add(e); err != nil {
				t.Fatal(err)
			}
		}
	}
	before := l.tg.Stats()
	timeline, serial, err := lab.BootVM(l.ns.Name, "tap0", l.nodes[0].MAC, "FABRIC-ROOT-OK", 180*time.Second)
	if err != nil {
		t.Fatalf("%v\nserial console:\n%s", err, strings.Join(serial, "\n"))
	}
	var proof string
	for _, line := range serial {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "FABRIC-MKFS-OK" && f[1] == "e7.0" {
			proof = f[2]
		}
		if strings.HasPrefix(line, "FABRIC-MKFS-FAIL") {
			t.Fatalf("guest: %s\n%s", line, strings.Join(serial, "\n"))
		}
	}
	if proof == "" {
		t.Fatalf("the guest did not report mkfs on e7.0:\n%s", strings.Join(serial, "\n"))
	}
	after := l.tg.Stats()
	t.Logf("guest made ext4 on e7.0 and read back %s; boot %s; target wrote %d bytes, %d flushes during the boot",
		proof, lab.Timeline(timeline), after.WrittenBytes-before.WrittenBytes, after.Flushes-before.Flushes)
	path := l.pool.Path(v)
	if out, err := exec.Command("e2fsck", "-fn", path).CombinedOutput(); err != nil {
		t.Errorf("e2fsck on the volume the guest formatted: %v\n%s", err, out)
	}
	out, err := exec.Command("debugfs", "-R", "cat /proof", path).Output()
	if err != nil || strings.TrimSpace(string(out)) != proof {
		t.Errorf("debugfs reads %q (%v) from the volume, the guest wrote %q", strings.TrimSpace(string(out)), err, proof)
	}
	if fs, _ := exec.Command("blkid", "-o", "value", "-s", "TYPE", path).Output(); strings.TrimSpace(string(fs)) != "ext4" {
		t.Errorf("blkid says %q, want ext4", strings.TrimSpace(string(fs)))
	}
}

// TestQEMUSANBoot boots a VM with iPXE's "sanboot aoe:" straight from a
// disk image our storage node serves: iPXE is the AoE initiator here, and
// the disk's own boot sector runs.
func TestQEMUSANBoot(t *testing.T) {
	l := newQEMULab(t, []string{"52:54:00:fa:b0:11"}, pxe.Profile{SANBoot: true}, "sanboot-disk.img")
	timeline, serial, err := lab.BootVM(l.ns.Name, "tap0", l.nodes[0].MAC, "FABRIC-SANBOOT-OK", 90*time.Second)
	if err != nil {
		t.Fatalf("%v\nstorage node: %+v\nserial console:\n%s", err, l.tg.Stats(), strings.Join(serial, "\n"))
	}
	t.Logf("SAN boot of %s from %s: boot sector ran %.1f s after power-on; storage node %+v",
		l.nodes[0].Name, l.nodes[0].RootVolume, timeline[len(timeline)-1].At.Seconds(), l.tg.Stats())
	if l.tg.Stats().ReadBytes == 0 {
		t.Error("iPXE read nothing from the storage node")
	}
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// TestQEMUPairFailover: the real Linux aoe driver against a storage pair
// the controller made. Two `fabricd storage --controller` nodes
// (internal/pairlab) enroll, the controller pairs them and, at the
// registration of hn1, clones its root from an image onto both. A
// PXE-booted diskless VM with that root runs a write-and-verify loop on it
// (direct I/O, fabric.ioloop) while the owner is killed, brought back and
// resynced, and then the other node (owner by then) is killed. The guest
// must see no I/O error; the longest stall it saw by its own clock is
// printed for each fault.
func TestQEMUPairFailover(t *testing.T) {
	netns.Skip(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed (scripts/deps.sh)")
	}
	images := imagesDir(t)
	ns := netns.New(t, "fpair")
	ns.Must(t, "ip", "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
	ns.Must(t, "ip", "addr", "add", "10.233.0.1/24", "dev", "br0")
	ns.Must(t, "ip", "link", "set", "br0", "up")
	ns.Must(t, "ip", "tuntap", "add", "dev", "tap0", "mode", "tap")
	ns.Must(t, "ip", "link", "set", "tap0", "master", "br0")
	ns.Must(t, "ip", "link", "set", "tap0", "up")
	c, err := New(Config{StateDir: t.TempDir(), BootSubnet: netip.MustParsePrefix("10.233.0.0/24"), ServerIP: netip.MustParseAddr("10.233.0.1"),
		APIHosts: []string{"10.78.1.254", "10.78.2.254"}, AgentTimeout: 2 * time.Second, HWNodeRootImage: "root",
		Boot: pxe.Config{Iface: "br0", BootDir: filepath.Join(images, "boot"), RA: true, TFTPSinglePort: true,
			Profiles: map[string]pxe.Profile{"hwnode": {Kernel: "hwnode/vmlinuz", Initrd: "hwnode/initrd.img", Cmdline: pxe.DefaultCmdline + " fabric.ioloop=1"}}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })

	// The storage nodes reach the controller's API in the pair lab's
	// witness namespace.
	pl := pairlab.New(t, pairlab.Fabricd(t, ".."), ns, "br0")
	var ln net.Listener
	if err := pl.Wit.Do(func() (err error) { ln, err = net.Listen("tcp", ":8443"); return err }); err != nil {
		t.Fatal(err)
	}
	actx, acancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- c.Serve(actx, ln) }()
	t.Cleanup(func() { acancel(); <-served })
	pl.StartMembers(c.Registry(), c.CACertPEM())
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		sns, _ := c.StorageNodes()
		if len(sns) == 2 && sns[0].Alive && sns[1].Alive && sns[0].Report.Replication != "" && sns[1].Report.Replication != "" {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the storage nodes do not report\n%s", pl.Logs())
		}
	}
	pi, err := c.CreatePair(controllerapi.PairRequest{Nodes: []string{"sn1", "sn2"}}, "test")
	if err != nil {
		t.Fatalf("pair: %v\n%s", err, pl.Logs())
	}
	root, err := os.ReadFile(filepath.Join(images, "hwnode-root.img"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ImportImage("root", int64(len(root)), func(f *os.File) error { _, err := f.Write(root); return err }); err != nil {
		t.Fatal(err)
	}
	const mac = "52:54:00:fa:b0:31"
	n, err := c.Registry().Register(controllerapi.RegisterRequest{Name: "hn1", MAC: mac, Role: "hwnode"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ensureRootVolume(n); err != nil {
		t.Fatalf("hn1's root on the pair: %v\n%s", err, pl.Logs())
	}
	if err := pl.WaitInSync(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	vd, err := c.VolumeShow("root-hn1")
	if err != nil || vd.Pair != pi.Name || len(vd.Copies) != 2 {
		t.Fatalf("root-hn1: %+v %v; want a copy on each node of pair %s", vd, err, pi.Name)
	}
	var svc *pxe.Services
	if err := ns.Do(func() (err error) { svc, err = pxe.Listen(c.BootConfig("https://10.233.0.1:8443")); return err }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = svc.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	vm, err := lab.StartVM(ns.Name, "tap0", mac)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(vm.Stop)
	// follow reads the console for d and returns the longest I/O round
	// the guest reported in that time; any I/O error fails the test.
	var ioErrs []string
	follow := func(d time.Duration) (longest time.Duration, rounds int) {
		deadline := time.Now().Add(d)
		for {
			line, ok := vm.Next(deadline)
			if !ok {
				return longest, rounds
			}
			if strings.Contains(line, "FABRIC-IO-ERROR") || strings.Contains(line, "I/O error") || strings.Contains(line, "EXT4-fs error") || strings.HasPrefix(line, "FABRIC-FAIL") {
				ioErrs = append(ioErrs, line)
			}
			var r, w, m, e int
			if _, err := fmt.Sscanf(line, "FABRIC-IO rounds=%d window_max_ms=%d max_ms=%d errors=%d", &r, &w, &m, &e); err == nil {
				longest = max(longest, time.Duration(w)*time.Millisecond)
				rounds = r
			}
		}
	}
	boot := time.Now()
	for {
		line, ok := vm.Next(boot.Add(240 * time.Second))
		if !ok {
			s := vm.Serial()
			t.Fatalf("the guest did not start its I/O loop:\n%s", strings.Join(s[max(0, len(s)-60):], "\n"))
		}
		if strings.HasPrefix(line, "FABRIC-FAIL") {
			t.Fatalf("guest: %s", line)
		}
		if strings.Contains(line, "FABRIC-IOLOOP-START") {
			break
		}
	}
	healthy, r0 := follow(4 * time.Second)
	t.Logf("guest booted onto the pair's volume %s in %v and runs its I/O loop: %d rounds, longest %v while both nodes serve", n.RootVolume, vm.Since().Round(time.Second), r0, healthy)

	var stalls []string
	fault := func(name string, victim *pairlab.Node) {
		pl.Kill(victim, syscall.SIGKILL)
		longest, rounds := follow(8 * time.Second)
		stalls = append(stalls, fmt.Sprintf("%s: %v", name, longest))
		t.Logf("%s killed: the guest's longest I/O round in the next 8 s was %v (%d rounds so far)", name, longest, rounds)
		if rounds == 0 {
			t.Errorf("after %s was killed the guest reported no I/O at all", name)
		}
	}
	own, other := pl.Owner()
	fault("owner "+own.Name, own)
	pl.Start(own)
	if err := pl.WaitInSync(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	back, rb := follow(3 * time.Second)
	t.Logf("%s back and resynced; guest longest round meanwhile %v (%d rounds)", own.Name, back, rb)
	fault("then "+other.Name, other)
	if len(ioErrs) > 0 {
		t.Errorf("the guest saw I/O errors:\n%s", strings.Join(ioErrs, "\n"))
	}
	t.Logf("guest stalls (its own clock, 10 ms resolution): %s", strings.Join(stalls, "; "))
}
