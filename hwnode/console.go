package hwnode

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

// wantConsoles takes the console requests of a desired state; the next
// heartbeat answers those not answered yet.
func (a *Agent) wantConsoles(reqs []controllerapi.ConsoleRequest) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.consoles = reqs
	still := map[uint64]bool{}
	for _, r := range reqs {
		if a.answered[r.ID] {
			still[r.ID] = true
		}
	}
	a.answered = still
}

// consoleAnswers answers the console requests not answered yet, for a
// heartbeat. a.mu is held.
func (a *Agent) consoleAnswers() []controllerapi.ConsoleTail {
	var out []controllerapi.ConsoleTail
	for _, r := range a.consoles {
		if !a.answered[r.ID] {
			a.answered[r.ID] = true
			out = append(out, consoleTail(a.cfg.SerialDir, r))
		}
	}
	return out
}

// serialLog is the file an instance's serial console goes to.
func serialLog(dir, name string) string { return filepath.Join(dir, name+".serial.log") }

// consoleTail reads what a console request asks for from the instance's
// serial log: from r.From, or the last r.Max bytes.
func consoleTail(dir string, r controllerapi.ConsoleRequest) controllerapi.ConsoleTail {
	t := controllerapi.ConsoleTail{ID: r.ID, Instance: r.Instance}
	if dir == "" {
		t.Error = "this node keeps no console logs: its agent runs without --serial-dir (guests' consoles are ptys: virsh console " + r.Instance + " on the node)"
		return t
	}
	f, err := os.Open(serialLog(dir, r.Instance))
	if errors.Is(err, os.ErrNotExist) {
		t.Error = fmt.Sprintf("no console log for %s on this node yet (it has not started here)", r.Instance)
		return t
	}
	if err != nil {
		t.Error = err.Error()
		return t
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Error = err.Error()
		return t
	}
	t.Size = fi.Size()
	limit := int64(max(r.Max, 0))
	t.Offset = r.From
	if r.From < 0 || r.From > t.Size {
		t.Offset = max(0, t.Size-limit)
	}
	n := min(limit, t.Size-t.Offset)
	t.Data = make([]byte, n)
	k, err := f.ReadAt(t.Data, t.Offset)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Error = err.Error()
	}
	t.Data = t.Data[:k]
	return t
}
