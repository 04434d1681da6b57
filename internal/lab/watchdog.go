package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// StandInWatchdog stands in for a hardware watchdog in the lab (the
// machine's own watchdog is never armed): once file has been written and
// then not for timeout, it "resets the node": it kills every other process
// of its network namespace (libvirtd, QEMU, the agent, the disk server)
// and takes iface down, as a reset machine would vanish from the network,
// then returns.
func StandInWatchdog(file string, timeout time.Duration, iface string) error {
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return err
	}
	var fed time.Time
	for {
		time.Sleep(200 * time.Millisecond)
		fi, err := os.Stat(file)
		if err != nil {
			continue
		}
		if fi.Size() > 0 && fi.ModTime().After(fed) {
			fed = fi.ModTime()
		}
		if fed.IsZero() || time.Since(fed) < timeout {
			continue
		}
		fmt.Printf("watchdog: not fed for %v: resetting the node\n", time.Since(fed).Round(time.Millisecond))
		pids, _ := filepath.Glob("/proc/[0-9]*")
		for _, p := range pids {
			pid, err := strconv.Atoi(filepath.Base(p))
			if err != nil || pid == os.Getpid() {
				continue
			}
			if ns, err := os.Readlink(p + "/ns/net"); err == nil && ns == self {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		return exec.Command("ip", "link", "set", iface, "down").Run()
	}
}
