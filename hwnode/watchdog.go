package hwnode

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Watchdog self-fencing, as Proxmox does: the agent feeds a watchdog
// device (Linux softdog, or the board's), so a node whose agent stays dead
// longer than the timeout is reset by the kernel, and then counts as
// failed for the controller's detector. The timeout must leave systemd
// time to restart a crashed agent. A clean stop disarms it (the magic
// close), where the driver allows.

// watchdogFeed is how often the device is written.
const watchdogFeed = time.Second

// feedWatchdog opens path, sets its timeout when it is a watchdog device,
// and feeds it until ctx ends; then it disarms it.
func feedWatchdog(ctx context.Context, path string, timeout time.Duration, log *slog.Logger) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("hwnode: watchdog %s: %w", path, err)
	}
	if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 && timeout > 0 {
		secs := int(timeout.Seconds())
		if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.WDIOC_SETTIMEOUT, secs); err != nil {
			log.Warn("watchdog: cannot set the timeout; the device keeps its own", "device", path, "err", err)
		}
	}
	log.Info("feeding the watchdog", "device", path, "timeout", timeout)
	go func() {
		t := time.NewTicker(watchdogFeed)
		defer t.Stop()
		for {
			if _, err := f.Write([]byte{'1'}); err != nil {
				log.Error("watchdog: feeding failed", "err", err)
			}
			select {
			case <-ctx.Done():
				_, _ = f.Write([]byte{'V'}) // magic close: a clean stop does not reset the node
				f.Close()
				return
			case <-t.C:
			}
		}
	}()
	return nil
}
