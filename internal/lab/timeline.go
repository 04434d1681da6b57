package lab

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// WatchFDB records every change of the switch's and each hardware node's
// bridge forwarding table (bridge monitor fdb) in DIR/fdb-*.log, so that a
// test can say where the switch sent a guest's frames when they got lost.
func (l *Lab) WatchFDB() error {
	if err := l.start("fdb-sw0", l.SwitchNS, "bridge", "-timestamp", "monitor", "fdb"); err != nil {
		return err
	}
	for _, h := range l.Hosts {
		if err := l.start("fdb-"+h.Name, h.NS, "bridge", "-timestamp", "monitor", "fdb"); err != nil {
			return err
		}
	}
	return nil
}

// Event is one line of a Timeline.
type Event struct {
	At     time.Time
	Source string // fdb-sw0, agent-hn1, ...
	Text   string
}

func (e Event) String() string { return e.At.Format("15:04:05.000") + "  " + e.Source + "  " + e.Text }

// Timeline gathers what the lab recorded between from and to about a
// guest whose address is mac: moves of mac in the bridges' forwarding
// tables (WatchFDB) and every warning or error of the agents and their
// disk servers, in time order.
func (l *Lab) Timeline(mac string, from, to time.Time) []Event {
	var evs []Event
	in := func(t time.Time) bool { return !t.Before(from) && !t.After(to) }
	logs, _ := filepath.Glob(filepath.Join(l.Dir, "fdb-*.log"))
	for _, p := range logs {
		src := strings.TrimSuffix(filepath.Base(p), ".log")
		for _, e := range fdbEvents(p) {
			if in(e.At) && strings.Contains(strings.ToLower(e.Text), strings.ToLower(mac)) {
				e.Source = src
				evs = append(evs, e)
			}
		}
	}
	for _, h := range l.Hosts {
		for _, name := range []string{"agent-" + h.Name, "disks-" + h.Name} {
			f, err := os.Open(filepath.Join(l.Dir, name+".log"))
			if err != nil {
				continue
			}
			sc := bufio.NewScanner(f)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				var rec struct {
					Time  time.Time `json:"time"`
					Level string    `json:"level"`
				}
				if json.Unmarshal(sc.Bytes(), &rec) != nil || rec.Level == "INFO" || rec.Level == "DEBUG" || !in(rec.Time) {
					continue
				}
				evs = append(evs, Event{At: rec.Time, Source: name, Text: sc.Text()})
			}
			f.Close()
		}
	}
	slices.SortStableFunc(evs, func(a, b Event) int { return a.At.Compare(b.At) })
	return evs
}

// fdbEvents reads a `bridge -timestamp monitor fdb` log: each event is a
// "Timestamp: Tue Dec  1 04:50:51 2026 220186 usec" line, then the entry.
func fdbEvents(path string) []Event {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var evs []Event
	var at time.Time
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Timestamp: "); ok {
			at = time.Time{}
			if f := strings.Fields(rest); len(f) == 7 {
				t, err := time.ParseInLocation("Mon Jan 2 15:04:05 2006", strings.Join(f[:5], " "), time.Local)
				usec, err2 := strconv.Atoi(f[5])
				if err == nil && err2 == nil {
					at = t.Add(time.Duration(usec) * time.Microsecond)
				}
			}
			continue
		}
		if line = strings.TrimSpace(line); line != "" && !at.IsZero() {
			evs = append(evs, Event{At: at, Text: line})
			at = time.Time{} // one entry per timestamp
		}
	}
	return evs
}

// kernelTrouble marks the lines a guest kernel prints when it breaks
// (a soft lockup and a bad page are "BUG:" lines).
var kernelTrouble = []string{"Kernel panic", "Oops:", "BUG:", "kernel BUG at", "general protection fault"}

// GuestCrash is what a guest kernel printed when it broke.
type GuestCrash struct {
	Log     string // serial log, on the hardware node where it ran
	Excerpt string // the first line that tells, and what followed it
}

// GuestCrashes reads the serial logs of the lab's guests for a kernel that
// broke (panic, oops, BUG, general protection fault). A guest kernel that
// panics reboots (panic=-1) and comes back within seconds: without this, a
// test sees only pings lost.
func (l *Lab) GuestCrashes() []GuestCrash {
	var out []GuestCrash
	for _, h := range l.Hosts {
		logs, _ := filepath.Glob(filepath.Join(h.Dir, "log", "qemu", "*.serial.log"))
		for _, p := range logs {
			b, err := os.ReadFile(p)
			if err != nil {
				continue
			}
			if ex, ok := KernelTrouble(string(b)); ok {
				out = append(out, GuestCrash{Log: p, Excerpt: ex})
			}
		}
	}
	return out
}

// KernelTrouble finds, in a guest's console output, the first line that
// tells its kernel broke, and returns it with the 39 lines after it.
func KernelTrouble(console string) (string, bool) {
	lines := strings.Split(console, "\n")
	for i, line := range lines {
		if slices.ContainsFunc(kernelTrouble, func(m string) bool { return startsWord(line, m) }) {
			return strings.Join(lines[i:min(i+40, len(lines))], "\n"), true
		}
	}
	return "", false
}

// startsWord reports whether m occurs in line at the start of a word
// ("BUG:" in "[ 60.6] BUG: scheduling", not in "DEBUG:").
func startsWord(line, m string) bool {
	for i := 0; ; {
		j := strings.Index(line[i:], m)
		if j < 0 {
			return false
		}
		if k := i + j; k == 0 || line[k-1] == ' ' || line[k-1] == ']' {
			return true
		}
		i += j + 1
	}
}
