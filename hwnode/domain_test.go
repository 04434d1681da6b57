package hwnode

import (
	"encoding/xml"
	"strings"
	"testing"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

func TestDomainXML(t *testing.T) {
	spec := controllerapi.InstanceSpec{Name: "web", UUID: "54ba990c-aba6-45a2-8ded-11495e39bd94", VCPUs: 2, MemoryMiB: 256,
		MAC: "52:54:00:81:51:32", IP: "10.234.0.50/24", Gateway: "10.234.0.1", Volume: "e1.2", Running: true}
	nbdDisk := Disk{NBDHost: "127.0.0.1", NBDPort: "10809", NBDExport: "e1.2"}
	blk := Disk{Device: "/dev/etherd/e1.2"}
	g := Guest{Emulator: "/usr/bin/qemu-system-x86_64", Kernel: "/k", Initrd: "/i", Bridge: "br0", SerialLog: "/var/log/libvirt/qemu/web.serial.log"}
	for _, tc := range []struct {
		hv   string
		disk Disk
		want []string
	}{
		{QEMU, nbdDisk, []string{`<domain type="qemu">`, `<disk type="network" device="disk">`, `protocol="nbd" name="e1.2"`, `<host name="127.0.0.1" port="10809">`, `cache="none"`, `<emulator>/usr/bin/qemu-system-x86_64</emulator>`, `<model type="virtio">`}},
		{KVM, blk, []string{`<domain type="kvm">`, `<cpu mode="host-passthrough">`, `<disk type="block" device="disk">`, `<source dev="/dev/etherd/e1.2">`, `io="native"`}},
		{Xen, blk, []string{`<domain type="xen">`, `dev="xvda" bus="xen"`, `<model type="netfront">`}},
	} {
		g.Hypervisor = tc.hv
		x, err := DomainXML(spec, tc.disk, g)
		if err != nil {
			t.Fatalf("%s: %v", tc.hv, err)
		}
		for _, w := range append(tc.want, `<name>web</name>`, `<memory unit="MiB">256</memory>`, `<vcpu>2</vcpu>`,
			`fabric.ip=10.234.0.50/24`, `fabric.gw=10.234.0.1`, `<mac address="52:54:00:81:51:32">`, `<source bridge="br0">`) {
			if !strings.Contains(x, w) {
				t.Errorf("%s domain lacks %s:\n%s", tc.hv, w, x)
			}
		}
		if err := xml.Unmarshal([]byte(x), new(struct{})); err != nil {
			t.Errorf("%s: not well-formed XML: %v", tc.hv, err)
		}
		vol, ok := managedVolume(x)
		if !ok || vol != "e1.2" {
			t.Errorf("%s: managedVolume = %q, %v", tc.hv, vol, ok)
		}
	}
	// Values are escaped, never spliced into the XML.
	evil := spec
	evil.Name = "a</name><devices>"
	g.Hypervisor = QEMU
	x, err := DomainXML(evil, nbdDisk, g)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(x, "</name><devices>") {
		t.Errorf("name not escaped:\n%s", x)
	}
	for _, bad := range []struct {
		spec controllerapi.InstanceSpec
		disk Disk
		hv   string
	}{
		{controllerapi.InstanceSpec{Name: "x"}, nbdDisk, QEMU},
		{spec, Disk{}, QEMU},
		{spec, nbdDisk, "vmware"},
		{func() controllerapi.InstanceSpec { s := spec; s.MAC = "zz"; return s }(), nbdDisk, QEMU},
	} {
		g.Hypervisor = bad.hv
		if _, err := DomainXML(bad.spec, bad.disk, g); err == nil {
			t.Errorf("DomainXML(%+v, %+v, %s) accepted", bad.spec, bad.disk, bad.hv)
		}
	}
	if _, ok := managedVolume(`<domain><name>other</name></domain>`); ok {
		t.Error("a domain without fabric metadata counted as managed")
	}
}

func TestHostUUID(t *testing.T) {
	caps := `<capabilities><host><uuid>5e1f0c6a-3b8e-4a55-9f41-6a1d6f7f2a10</uuid><cpu><arch>x86_64</arch></cpu></host><guest/></capabilities>`
	if got := hostUUID(caps); got != "5e1f0c6a-3b8e-4a55-9f41-6a1d6f7f2a10" {
		t.Errorf("hostUUID = %q", got)
	}
	if got := hostUUID("<capabilities><host/></capabilities>"); got != "" {
		t.Errorf("no uuid: hostUUID = %q, want empty", got)
	}
	if got := hostUUID("not xml"); got != "" {
		t.Errorf("bad XML: hostUUID = %q, want empty", got)
	}
}
