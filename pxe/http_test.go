package pxe

import (
	"io"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"testing"
)

// scriptBackend is a registry of one hardware node for the boot script
// handler.
type scriptBackend struct {
	host Host
	hold string
}

func (b *scriptBackend) Host(mac net.HardwareAddr) (Host, bool, error) {
	return b.host, mac.String() == b.host.MAC.String(), nil
}
func (b *scriptBackend) Lease(net.HardwareAddr) (Lease, bool, error) { return Lease{}, false, nil }
func (b *scriptBackend) SaveLease(Lease) error                       { return nil }
func (b *scriptBackend) Renew(Lease) bool                            { return false }
func (b *scriptBackend) Report(Event)                                {}
func (b *scriptBackend) BootToken(net.HardwareAddr, netip.Addr) (string, error) {
	return "tok123", nil
}
func (b *scriptBackend) BootScript(net.HardwareAddr) string { return b.hold }

func fetchScript(t *testing.T, h *HTTPBoot, mac string) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/boot/"+mac+".ipxe", nil))
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

// TestBootScripts: the iPXE script of a registered hardware node (kernel
// and initrd with the node's name, root, controller, CA pin and token), of
// a Xen dom0 (multiboot: the hypervisor, then the kernel and initrd as its
// modules), of a node held while its root is made, of an unknown MAC.
func TestBootScripts(t *testing.T) {
	root, err := os.OpenRoot(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC("52:54:00:aa:bb:01")
	be := &scriptBackend{host: Host{Name: "hn1", Role: "hwnode", MAC: mac, IP: netip.MustParseAddr("10.0.0.11"), RootVolume: "e1.0"}}
	h := &HTTPBoot{Root: root, Backend: be, BaseURL: "http://10.0.0.1:8080", Controller: "https://10.0.0.1:8443", CAPin: "sha256:ab12",
		Profiles: map[string]Profile{"hwnode": {Kernel: "hwnode/vmlinuz", Initrd: "hwnode/initrd.img"}}}
	got := fetchScript(t, h, "52-54-00-aa-bb-01")
	for _, want := range []string{
		"kernel http://10.0.0.1:8080/files/hwnode/vmlinuz initrd=initrd.img console=ttyS0 fabric.name=hn1 fabric.root=e1.0 fabric.controller=https://10.0.0.1:8443 fabric.ca=sha256:ab12 fabric.token=tok123\n",
		"initrd --name initrd.img http://10.0.0.1:8080/files/hwnode/initrd.img\n", "boot"} {
		if !strings.Contains(got, want) {
			t.Errorf("script lacks %q:\n%s", want, got)
		}
	}

	h.Profiles["hwnode"] = Profile{Kernel: "hwnode/vmlinuz", Initrd: "hwnode/initrd.img", Hypervisor: "hwnode/xen.gz", HypervisorArgs: "dom0_mem=1024M console=com1",
		Cmdline: "console=hvc0 fabric.name={{.Name}} fabric.root={{.RootVolume}}"}
	got = fetchScript(t, h, "52-54-00-aa-bb-01")
	want := "kernel http://10.0.0.1:8080/files/hwnode/xen.gz dom0_mem=1024M console=com1\n" +
		"module http://10.0.0.1:8080/files/hwnode/vmlinuz console=hvc0 fabric.name=hn1 fabric.root=e1.0\n" +
		"module http://10.0.0.1:8080/files/hwnode/initrd.img\nboot"
	if !strings.Contains(got, want) {
		t.Errorf("Xen dom0 script:\n%s\nwant it to contain:\n%s", got, want)
	}

	be.hold = "reimaging hn1: cloning image root"
	got = fetchScript(t, h, "52-54-00-aa-bb-01")
	if !strings.Contains(got, "echo fabric: reimaging hn1") || !strings.Contains(got, "chain --replace http://10.0.0.1:8080/boot/52-54-00-aa-bb-01.ipxe") || strings.Contains(got, "kernel ") {
		t.Errorf("held script: want the reason and a retry, no kernel:\n%s", got)
	}

	got = fetchScript(t, h, "52-54-00-aa-bb-02")
	if !strings.Contains(got, "not registered") || strings.Contains(got, "kernel ") {
		t.Errorf("unknown MAC: %s", got)
	}
}
