package storagenode

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fabric-project/fabric/internal/atomicfile"
	"golang.org/x/sys/unix"
)

// Files a running daemon keeps in its data directory.
const (
	daemonLockFile = "daemon.lock" // flock held while a daemon serves the pool; holds DaemonInfo
	statusFile     = "status.json" // what the daemon serves, and what it cannot
)

// DaemonInfo says which daemon serves a data directory. It is written into
// the lock file, so it is only believed while the lock is held.
type DaemonInfo struct {
	PID        int       `json:"pid"`
	Interfaces []string  `json:"interfaces"`
	Started    time.Time `json:"started"`
	// Exports are the daemon's own --export entries, by address: a pool
	// volume may not take one of those addresses.
	Exports map[string]string `json:"exports,omitempty"`
}

func (d DaemonInfo) String() string {
	return fmt.Sprintf("fabricd storage pid %d on %s (since %s)", d.PID, strings.Join(d.Interfaces, ","), d.Started.Format(time.RFC3339))
}

// ErrLocked is returned when another daemon serves the data directory.
var ErrLocked = errors.New("data directory in use")

// lockDaemon takes the data directory for one daemon. The lock is a flock,
// so it goes away with the process however that ends.
func lockDaemon(dir string, info DaemonInfo) (release func(), err error) {
	path := filepath.Join(dir, daemonLockFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("storagenode: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			holder := "another process"
			if d, ok := RunningDaemon(dir); ok {
				holder = d.String()
			}
			return nil, fmt.Errorf("storagenode: %s is already served by %s; stop it first, or give this daemon its own --data-dir: %w", dir, holder, ErrLocked)
		}
		return nil, fmt.Errorf("storagenode: locking %s: %w", path, err)
	}
	b, _ := json.Marshal(info)
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt(append(b, '\n'), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("storagenode: %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// RunningDaemon returns the daemon serving dir, if one does.
func RunningDaemon(dir string) (DaemonInfo, bool) {
	path := filepath.Join(dir, daemonLockFile)
	f, err := os.Open(path)
	if err != nil {
		return DaemonInfo{}, false
	}
	defer f.Close()
	// A shared lock we can take means no daemon holds the exclusive one.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err == nil {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		return DaemonInfo{}, false
	}
	var d DaemonInfo
	b, err := os.ReadFile(path)
	if err != nil || json.Unmarshal(b, &d) != nil {
		return DaemonInfo{}, true
	}
	return d, true
}

// Status is what a running daemon serves: per pool volume, "" when served
// or why not.
type Status struct {
	Daemon  DaemonInfo        `json:"daemon"`
	Updated time.Time         `json:"updated"`
	Errors  map[string]string `json:"errors"` // volume name -> why it is not served
}

func (p *Pool) writeStatus(s Status) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(p.dir, statusFile), append(b, '\n'), 0o644)
}

// DaemonStatus returns the running daemon's status, if a daemon serves the
// pool.
func (p *Pool) DaemonStatus() (Status, bool) {
	d, ok := RunningDaemon(p.dir)
	if !ok {
		return Status{}, false
	}
	var s Status
	b, err := os.ReadFile(filepath.Join(p.dir, statusFile))
	if err != nil || json.Unmarshal(b, &s) != nil || s.Daemon.PID != d.PID {
		return Status{Daemon: d}, true // starting: nothing written yet
	}
	return s, true
}

// checkDaemonExports refuses an address the running daemon serves from its
// own --export list.
func (p *Pool) checkDaemonExports(addr string) error {
	d, ok := RunningDaemon(p.dir)
	if !ok {
		return nil
	}
	if path, ok := d.Exports[addr]; ok {
		return fmt.Errorf("storagenode: %s is served by %s as --export %s; choose another address: %w", addr, d, path, ErrConflict)
	}
	return nil
}
