package lab

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

// pxeNode is a PXE-booted hardware node of TestPXEHardwareNode: a
// diskless QEMU VM whose root is a clone of the Debian hardware-node image
// (scripts/hwnode-image.sh) on the lab's storage node.
type pxeNode struct {
	name, mac, guestMAC string
	vm                  *VM
	stop                func()
}

// identity is what a node's first-boot setup printed on its console:
// FABRIC-NODE setup NAME ip=... boot=N machine-id=... ssh=...
type identity struct {
	boot             int
	machineID, sshFP string
}

var setupLine = regexp.MustCompile(`FABRIC-NODE setup (\S+) ip=\S+ boot=(\d+) machine-id=(\S+) ssh=(\S+)`)

func (p *pxeNode) power(t *testing.T, l *Lab) {
	t.Helper()
	vm, stop, err := l.StartPXENode(p.name, p.mac, p.guestMAC, Memory(1536), CPUs(2))
	if err != nil {
		t.Fatal(err)
	}
	p.vm, p.stop = vm, stop
}

func (p *pxeNode) off() {
	if p.stop != nil {
		p.stop()
		p.stop = nil
	}
}

// setup waits for the node's setup line of this boot.
func (p *pxeNode) setup(timeout time.Duration) (identity, error) {
	var id identity
	err := waitFor(timeout, func() bool {
		for _, line := range p.vm.Serial() {
			if m := setupLine.FindStringSubmatch(line); m != nil && m[1] == p.name {
				fmt.Sscan(m[2], &id.boot)
				id.machineID, id.sshFP = m[3], m[4]
				return true
			}
		}
		return false
	})
	return id, err
}

// tail is the end of the node's console, for a failure message.
func (p *pxeNode) tail(n int) string {
	s := p.vm.Serial()
	return strings.Join(s[max(0, len(s)-n):], "\n")
}

// nodeStatus is the node as the controller sees it.
func nodeStatus(l *Lab, name string) (controllerapi.Node, bool) {
	var n controllerapi.Node
	out, err := l.Fabric("node", "show", name, "-o", "json")
	if err != nil || json.Unmarshal([]byte(out), &n) != nil {
		return n, false
	}
	return n, n.Status != nil && n.Status.Alive
}

// TestPXEHardwareNode: bare machines become hardware nodes. Two diskless
// VMs with registered MACs PXE-boot at the same time through the
// controller onto their own clones of the Debian hardware-node image over
// AoE; systemd starts libvirtd and the agent, which fetches the fabric CA
// against the pin on its kernel command line, enrolls with the boot's
// token and reports its capacity. The clones have their own machine-id,
// SSH host keys and libvirt host UUID. An instance placed on the first
// runs (a guest inside the VM: software emulation twice over) and answers
// ping from the client, then live-migrates to the second over libvirt TLS
// with the nodes' fabric certificates. The first is rebooted (its root
// keeps what it wrote), reimaged (`fabric node reimage`) and rebooted: a
// fresh root, a new identity, enrolled again; the old root is kept until
// confirmed.
func TestPXEHardwareNode(t *testing.T) {
	images := skipUnlessLab(t)
	img := filepath.Join(images, "hwnode-debian.img")
	if _, err := os.Stat(img); err != nil {
		t.Skipf("no hardware-node image %s (make images builds it)", img)
	}
	bin := buildBinaries(t)
	// Agents under software emulation stall for seconds at a time.
	l := upLab(t, Config{Bin: bin, Images: images, Boot: true, NoHosts: true, RootImageFile: img, AgentTimeout: "20s"})
	nodes := []*pxeNode{
		{name: "pxe1", mac: "52:54:00:fb:00:01", guestMAC: "52:54:00:fb:01:01"},
		{name: "pxe2", mac: "52:54:00:fb:00:02", guestMAC: "52:54:00:fb:01:02"},
	}
	for _, p := range nodes {
		if _, err := l.Fabric("node", "register", "--name", p.name, "--mac", p.mac, "--role", "hwnode"); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, p := range nodes {
			if t.Failed() && p.vm != nil {
				t.Logf("%s console (tail):\n%s", p.name, p.tail(60))
			}
			p.off()
		}
		// FABRIC_KEEP_DIR=DIR keeps the nodes' journals of a failed run
		// (journalctl -D DIR/NODE).
		if keep := os.Getenv("FABRIC_KEEP_DIR"); keep != "" && t.Failed() {
			vols, _ := filepath.Glob(filepath.Join(l.DataDir, "volumes", "root-*.img"))
			for _, v := range vols {
				dst := filepath.Join(keep, strings.TrimSuffix(filepath.Base(v), ".img"))
				_ = os.MkdirAll(dst, 0o755)
				out, err := exec.Command("debugfs", "-R", "rdump /var/log/journal "+dst, v).CombinedOutput()
				t.Logf("journal of %s kept in %s (%v %s)", filepath.Base(v), dst, err, strings.TrimSpace(string(out)))
			}
		}
	})

	// Power on both at once; each must enroll and report.
	var wg sync.WaitGroup
	ids := make([]identity, len(nodes))
	enrolled := make([]time.Duration, len(nodes))
	errs := make([]error, len(nodes))
	for i, p := range nodes {
		p.power(t, l)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ids[i], errs[i] = p.setup(8 * time.Minute); errs[i] != nil {
				errs[i] = fmt.Errorf("%s: no setup line on the console: %w", p.name, errs[i])
				return
			}
			errs[i] = waitFor(4*time.Minute, func() bool {
				_, alive := nodeStatus(l, p.name)
				return alive
			})
			if errs[i] != nil {
				errs[i] = fmt.Errorf("%s: agent never reported alive: %w", p.name, errs[i])
				return
			}
			enrolled[i] = p.vm.Since()
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var uuids []string
	for i, p := range nodes {
		n, _ := nodeStatus(l, p.name)
		c := n.Status.Capacity
		t.Logf("%s: power-on to agent enrolled and alive %.1f s; %d vCPUs, %d MiB, hypervisor %s, disks %s, libvirt %s, host UUID %s, machine-id %s, ssh %s",
			p.name, enrolled[i].Seconds(), c.VCPUs, c.MemoryMiB, c.Hypervisor, c.Disk, c.Libvirt, c.HostUUID, ids[i].machineID, ids[i].sshFP)
		if c.VCPUs < 1 || c.MemoryMiB < 256 || c.Hypervisor != "qemu" || c.Disk != "kernel" || c.HostUUID == "" {
			t.Errorf("%s reports %+v: want vCPUs, memory, hypervisor qemu (no KVM in the VM), disks from the kernel's aoe driver, a host UUID", p.name, c)
		}
		if ids[i].boot != 1 {
			t.Errorf("%s: boot %d of a fresh clone, want 1", p.name, ids[i].boot)
		}
		uuids = append(uuids, c.HostUUID)
	}
	if ids[0].machineID == ids[1].machineID || ids[0].sshFP == ids[1].sshFP || uuids[0] == uuids[1] {
		t.Errorf("clones share an identity: machine-id %s / %s, SSH host key %s / %s, host UUID %s / %s",
			ids[0].machineID, ids[1].machineID, ids[0].sshFP, ids[1].sshFP, uuids[0], uuids[1])
	}
	if t.Failed() {
		return
	}

	// An instance on pxe1: a guest of the node's libvirtd, its disk the
	// kernel's /dev/etherd device, its NIC on the node's br0 (eth1).
	pxe1 := nodes[0]
	if _, err := l.Fabric("image", "import", "tiny", filepath.Join(images, "instance-template.img")); err != nil {
		t.Fatal(err)
	}
	var in controllerapi.Instance
	fabricJSON(t, l, &in, "instance", "create", "web", "--image", "tiny", "--vcpus", "1", "--memory", "128MiB", "--node", pxe1.name, "--start")
	ip, _, _ := strings.Cut(in.IP, "/")
	t0 := time.Now()
	if err := waitFor(12*time.Minute, func() bool {
		_, err := In(l.ClientNS, "ping", "-c1", "-W1", ip)
		return err == nil
	}); err != nil {
		out, _ := l.Fabric("instance", "show", "web")
		t.Fatalf("instance web (%s) on %s never answered ping: %v\n%s", ip, pxe1.name, err, out)
	}
	t.Logf("instance web on %s answers ping from the client %.1f s after create, %.1f s after %s's power-on",
		pxe1.name, time.Since(t0).Seconds(), pxe1.vm.Since().Seconds(), pxe1.name)

	// Live migration to pxe2: libvirtd to libvirtd over TLS with the
	// nodes' fabric certificates (qemu+tls://), under ping.
	pxe2 := nodes[1]
	t2 := time.Now()
	if out, err := l.Fabric("instance", "migrate", "web", "--to", pxe2.name); err != nil {
		t.Fatalf("migrating web to %s: %v\n%s", pxe2.name, err, out)
	}
	fabricJSON(t, l, &in, "instance", "show", "web", "-o", "json")
	if in.Node != pxe2.name {
		t.Fatalf("web is on %s after the migration, want %s", in.Node, pxe2.name)
	}
	if err := waitFor(2*time.Minute, func() bool {
		_, err := In(l.ClientNS, "ping", "-c1", "-W1", ip)
		return err == nil
	}); err != nil {
		t.Fatalf("web does not answer ping on %s after the migration: %v", pxe2.name, err)
	}
	t.Logf("web live-migrated %s -> %s over libvirt TLS in %.1f s and answers ping there", pxe1.name, pxe2.name, time.Since(t2).Seconds())

	// pxe1, now without instances, is drained as for any planned reboot:
	// a drained node that runs nothing is not fenced when it goes silent
	// (a fence would lock it out of its root). Power off and on: the
	// same root (its boot log on the root has 2 boots) and identity.
	if out, err := l.Fabric("node", "drain", pxe1.name); err != nil {
		t.Fatalf("fabric node drain %s: %v\n%s", pxe1.name, err, out)
	}
	reboot := func(want int) identity {
		t.Helper()
		pxe1.off()
		pxe1.power(t, l)
		id, err := pxe1.setup(8 * time.Minute)
		if err != nil {
			t.Fatalf("%s after the reboot: no setup line: %v", pxe1.name, err)
		}
		if id.boot != want {
			t.Errorf("%s: boot %d of its root volume, want %d", pxe1.name, id.boot, want)
		}
		return id
	}
	again := reboot(2)
	if again.machineID != ids[0].machineID || again.sshFP != ids[0].sshFP {
		t.Errorf("%s changed identity across a reboot: machine-id %s -> %s, ssh %s -> %s", pxe1.name, ids[0].machineID, again.machineID, ids[0].sshFP, again.sshFP)
	}
	// Reimage: the next boot gets a fresh clone of the image.
	out, err := l.Fabric("node", "reimage", pxe1.name)
	if err != nil || !strings.Contains(out, "next PXE boot") {
		t.Fatalf("fabric node reimage %s: %v\n%s", pxe1.name, err, out)
	}
	if out, err := l.Fabric("node", "reimage", "--confirm", pxe1.name); err == nil || !strings.Contains(out, "not booted since") {
		t.Errorf("confirming before the node booted: %v %s; want it refused", err, out)
	}
	t1 := time.Now()
	fresh := reboot(1)
	if fresh.machineID == ids[0].machineID || fresh.sshFP == ids[0].sshFP {
		t.Errorf("%s kept its identity across a reimage: machine-id %s, ssh %s", pxe1.name, fresh.machineID, fresh.sshFP)
	}
	if err := waitFor(4*time.Minute, func() bool {
		n, alive := nodeStatus(l, pxe1.name)
		return alive && n.Status.LastSeen.After(t1)
	}); err != nil {
		t.Fatalf("%s did not enroll again after the reimage: %v", pxe1.name, err)
	}
	t.Logf("%s reimaged: boot %d of a fresh root, machine-id %s; enrolled again %.1f s after power-on", pxe1.name, fresh.boot, fresh.machineID, pxe1.vm.Since().Seconds())
	vols, err := l.Fabric("volume", "list")
	if err != nil || strings.Count(vols, "root-"+pxe1.name) != 2 {
		t.Errorf("want the fresh root and the kept old root of %s in the volume list:\n%s", pxe1.name, vols)
	}
	if out, err := l.Fabric("node", "reimage", "--confirm", pxe1.name); err != nil {
		t.Fatalf("fabric node reimage --confirm %s: %v\n%s", pxe1.name, err, out)
	}
	if err := waitFor(30*time.Second, func() bool {
		vols, err = l.Fabric("volume", "list")
		return err == nil && strings.Count(vols, "root-"+pxe1.name) == 1
	}); err != nil {
		t.Errorf("the old root of %s is still listed after --confirm:\n%s", pxe1.name, vols)
	}
}
