package lab

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// BootEvent is a point of a VM's boot timeline, from power-on.
type BootEvent struct {
	Name string
	At   time.Duration
}

// Timeline formats events as "name 1.2 name 3.4".
func Timeline(evs []BootEvent) string {
	var b strings.Builder
	for i, e := range evs {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s %.1f", e.Name, e.At.Seconds())
	}
	return b.String()
}

// OVMF is where Debian's ovmf package puts the UEFI firmware.
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// VMOption changes how BootVM starts the VM.
type VMOption func(*vmConfig)

type vmConfig struct {
	uefiVars        string
	memMiB, cpus    int
	guestTap, guest string // second NIC: tap and MAC
	console         string // file that gets every console line
}

// ConsoleLog writes the VM's console to path as well.
func ConsoleLog(path string) VMOption { return func(c *vmConfig) { c.console = path } }

// Memory sets the VM's memory in MiB (default 384).
func Memory(mib int) VMOption { return func(c *vmConfig) { c.memMiB = mib } }

// CPUs sets the VM's vCPUs (default 1).
func CPUs(n int) VMOption { return func(c *vmConfig) { c.cpus = n } }

// SecondNIC gives the VM a second virtio NIC on tap with mac (eth1: a
// hardware node's guest uplink).
func SecondNIC(tap, mac string) VMOption {
	return func(c *vmConfig) { c.guestTap, c.guest = tap, mac }
}

// UEFI boots the VM with OVMF and the firmware's own network stack and
// PXE client (EDK2), not an iPXE option ROM: the firmware -> iPXE chain
// that real servers take. vars is a writable copy of OVMFVars.
func UEFI(vars string) VMOption { return func(c *vmConfig) { c.uefiVars = vars } }

// VM is a running diskless QEMU VM and its serial console.
type VM struct {
	cmd    *exec.Cmd
	start  time.Time
	lines  chan string // every console line, in order; closed when the console ends
	mu     sync.Mutex
	serial []string
}

// StartVM powers on a diskless QEMU VM (Debian's iPXE ROM, -boot n; or UEFI
// firmware PXE) on tap in namespace ns. Read its console with Next; Stop
// kills it.
func StartVM(ns, tap, mac string, opts ...VMOption) (*VM, error) {
	var vc vmConfig
	for _, o := range opts {
		o(&vc)
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return nil, err
	}
	mem, cpus := 384, 1
	if vc.uefiVars != "" {
		mem = 512 // OVMF wants more
	}
	if vc.memMiB > 0 {
		mem = vc.memMiB
	}
	if vc.cpus > 0 {
		cpus = vc.cpus
	}
	args := []string{"netns", "exec", ns, qemu,
		"-accel", "tcg", "-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus), "-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot",
		"-netdev", "tap,id=n0,ifname=" + tap + ",script=no,downscript=no"}
	if cpus > 1 {
		// About twice as fast as the default qemu64 under software
		// emulation. It offers SVM: the lab's boot command line keeps
		// KVM from loading on the nodes.
		args = append(args, "-cpu", "max")
	}
	if vc.uefiVars != "" {
		args = append(args,
			"-drive", "if=pflash,format=raw,readonly=on,file="+OVMFCode,
			"-drive", "if=pflash,format=raw,file="+vc.uefiVars,
			// No option ROM: the firmware's own driver and PXE client.
			"-device", "virtio-net-pci,netdev=n0,romfile=,bootindex=1,mac="+mac)
	} else {
		args = append(args, "-boot", "n", "-device", "virtio-net-pci,netdev=n0,mac="+mac)
	}
	if vc.guestTap != "" {
		// No option ROM: the boot NIC's iPXE alone answers -boot n.
		args = append(args, "-netdev", "tap,id=n1,ifname="+vc.guestTap+",script=no,downscript=no",
			"-device", "virtio-net-pci,netdev=n1,romfile=,mac="+vc.guest)
	}
	cmd := exec.Command("ip", args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	v := &VM{cmd: cmd, start: time.Now(), lines: make(chan string, 100000)}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	var logf *os.File
	if vc.console != "" {
		logf, _ = os.Create(vc.console)
	}
	go func() {
		defer close(v.lines)
		if logf != nil {
			defer logf.Close()
		}
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			if logf != nil {
				fmt.Fprintln(logf, line)
			}
			v.mu.Lock()
			v.serial = append(v.serial, line)
			v.mu.Unlock()
			select {
			case v.lines <- line:
			default: // nobody reads: Serial still has it
			}
		}
	}()
	return v, nil
}

// Next returns the next console line, waiting until deadline; false when
// the console ended or the deadline passed.
func (v *VM) Next(deadline time.Time) (string, bool) {
	select {
	case l, ok := <-v.lines:
		return l, ok
	case <-time.After(time.Until(deadline)):
		return "", false
	}
}

// Serial is every console line so far.
func (v *VM) Serial() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.serial...)
}

// Since is the time since power-on.
func (v *VM) Since() time.Duration { return time.Since(v.start) }

// Stop kills the VM.
func (v *VM) Stop() {
	_ = v.cmd.Process.Kill()
	_ = v.cmd.Wait()
}

// BootVM powers on a diskless QEMU VM (StartVM) and follows its serial
// console until it prints done (FABRIC-ROOT-OK also requires the root to
// have been mounted and written), the initramfs reports FABRIC-FAIL, or
// timeout passes. The VM is killed on return.
func BootVM(ns, tap, mac, done string, timeout time.Duration, opts ...VMOption) ([]BootEvent, []string, error) {
	v, err := StartVM(ns, tap, mac, opts...)
	if err != nil {
		return nil, nil, err
	}
	defer v.Stop()
	deadline := time.Now().Add(timeout)
	var timeline []BootEvent
	seen := map[string]bool{}
	mark := func(name string) {
		if !seen[name] {
			seen[name] = true
			timeline = append(timeline, BootEvent{name, v.Since()})
		}
	}
	for {
		line, ok := v.Next(deadline)
		if !ok {
			return timeline, v.Serial(), fmt.Errorf("console ended without %s (timeout %v)", done, timeout)
		}
		switch {
		case strings.Contains(line, "Start PXE over IPv4"):
			mark("firmware-pxe")
		case strings.Contains(line, "iPXE initialising devices"):
			mark("ipxe-started")
		case strings.Contains(line, "Linux version"):
			mark("kernel-started")
		case strings.HasPrefix(line, "FABRIC-STEP "):
			if f := strings.Fields(line); len(f) >= 2 {
				mark(f[1])
			}
		case strings.HasPrefix(line, "FABRIC-FAIL"):
			return timeline, v.Serial(), fmt.Errorf("initramfs: %s", line)
		case done != "FABRIC-ROOT-OK" && strings.Contains(line, done):
			mark(done)
			return timeline, v.Serial(), nil
		case strings.Contains(line, "FABRIC-ROOT-OK"):
			mark("root-ok")
			if !seen["root-mounted"] || !containsLine(v.Serial(), "FABRIC-ROOT-WRITE-OK") {
				return timeline, v.Serial(), fmt.Errorf("root init ran without the AoE root mounted and written")
			}
			return timeline, v.Serial(), nil
		}
	}
}

func containsLine(lines []string, s string) bool {
	for _, l := range lines {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}
