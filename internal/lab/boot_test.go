package lab

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

// TestUEFIFirmwarePXEChain boots a diskless VM the way a real server boots:
// UEFI firmware (OVMF) with its own PXE client, no iPXE option ROM. Our
// DHCP answers the firmware (no user class "iPXE", option 93 = 7) with
// ipxe.efi over TFTP from `fabricd controller`; iPXE then asks again and
// gets its HTTP script, loads the kernel and initramfs, and the node mounts
// its root from the storage node over AoE.
func TestUEFIFirmwarePXEChain(t *testing.T) {
	images := skipUnlessLab(t)
	if _, err := os.Stat(OVMFCode); err != nil {
		t.Skip("OVMF not installed (scripts/deps.sh installs ovmf)")
	}
	bin := buildBinaries(t)
	l := upLab(t, Config{Bin: bin, Images: images, Boot: true})
	vars := filepath.Join(t.TempDir(), "OVMF_VARS.fd")
	b, err := os.ReadFile(OVMFVars)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(vars, b, 0o644); err != nil {
		t.Fatal(err)
	}
	const mac = "52:54:00:ef:00:01"
	if _, err := l.Fabric("node", "register", "--name", "uefi1", "--mac", mac, "--role", "hwnode"); err != nil {
		t.Fatal(err)
	}
	tl, serial, err := l.BootDiskless("uefi1", mac, 240*time.Second, UEFI(vars))
	if err != nil {
		n := len(serial)
		t.Fatalf("%v\nlast console lines:\n%s", err, strings.Join(serial[max(0, n-40):], "\n"))
	}
	t.Logf("UEFI firmware PXE -> ipxe.efi (TFTP) -> HTTP script -> kernel -> AoE root: %s", Timeline(tl))
	out, err := l.Fabric("events", "-o", "jsonl")
	if err != nil {
		t.Fatal(err)
	}
	var firmware, ipxe bool
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e controllerapi.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("event %q: %v", line, err)
		}
		if e.Type != controllerapi.EventNodeBooting || e.Node != "uefi1" {
			continue
		}
		t.Logf("event: %s", e.Message)
		firmware = firmware || strings.HasSuffix(e.Message, "boot program ipxe.efi")
		ipxe = ipxe || strings.Contains(e.Message, "boot program http://")
	}
	if !firmware || !ipxe {
		t.Errorf("want a firmware DHCP answered with ipxe.efi and an iPXE DHCP answered with the HTTP script (firmware %v, iPXE %v)", firmware, ipxe)
	}
	seen := map[string]bool{}
	for _, e := range tl {
		seen[e.Name] = true
	}
	for _, want := range []string{"firmware-pxe", "ipxe-started", "root-mounted"} {
		if !seen[want] {
			t.Errorf("timeline lacks %s: %s", want, Timeline(tl))
		}
	}
}
