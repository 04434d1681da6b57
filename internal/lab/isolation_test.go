package lab

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/hwnode"
)

// fioIOPS runs fio flat out (4 KiB random reads and writes, 16 deep) for
// d on the NBD export vol of hn's disk server (the path hn's guests' disks
// take) and returns the IOPS it reached.
func fioIOPS(t *testing.T, hn Host, vol string, d time.Duration) float64 {
	t.Helper()
	out, err := In(hn.NS, "fio", "--name=hog", "--ioengine=nbd", "--uri=nbd://127.0.0.1:10809/"+vol, "--rw=randrw", "--bs=4k",
		"--iodepth=16", "--time_based", fmt.Sprintf("--runtime=%dms", d.Milliseconds()), "--output-format=json")
	if err != nil {
		t.Fatalf("fio on %s: %v", vol, err)
	}
	var r struct {
		Jobs []struct {
			Read, Write struct {
				IOPS float64 `json:"iops"`
			}
			Error int `json:"error"`
		} `json:"jobs"`
	}
	if i := strings.IndexByte(out, '{'); i > 0 {
		out = out[i:] // past any warning
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || len(r.Jobs) != 1 || r.Jobs[0].Error != 0 {
		t.Fatalf("fio on %s: %v\n%s", vol, err, out)
	}
	return r.Jobs[0].Read.IOPS + r.Jobs[0].Write.IOPS
}

// ioIsolation: a second instance (hog) on hn1 with its disk on the same
// pair as web's; fio runs flat out on hog's disk, through hn1's disk
// server (the NBD export its guest would use), while web's guest runs its
// write-verify loop. Uncapped, web's passes slow down; with hog capped
// (fabric instance limit), web's mean pass stays within 2x of idle, hog
// gets about its cap, and a cap raised live holds at once. Returns the
// summary lines.
func ioIsolation(t *testing.T, l *Lab, ip string) []string {
	t.Helper()
	var hog controllerapi.Instance
	fabricJSON(t, l, &hog, "instance", "create", "hog", "--image", "tiny", "--memory", "64MiB", "--node", "hn1")
	hn := l.Hosts[0]
	// hn1's agent presents the disk of every instance placed there.
	dc := hwnode.NewDiskClient(filepath.Join(hn.Dir, "agent", "disks.sock"))
	if err := waitFor(20*time.Second, func() bool {
		vols, err := dc.Attached()
		return err == nil && slices.Contains(vols, hog.Volume)
	}); err != nil {
		t.Fatalf("hog's disk %s is not presented on hn1: %v", hog.Volume, err)
	}
	const window = 5 * time.Second
	// web's mean write-verify pass over window, with load running
	// meanwhile (nil: idle).
	webPass := func(load func()) (mean, longest time.Duration) {
		t.Helper()
		wvStats(t, l, ip, "reset")
		p0, _, _ := wvStats(t, l, ip, "")
		start := time.Now()
		if load != nil {
			load()
		} else {
			time.Sleep(window)
		}
		p, errs, longest := wvStats(t, l, ip, "")
		if errs != 0 {
			t.Errorf("the guest's write-verify loop saw %d errors", errs)
		}
		if p <= p0 {
			t.Fatalf("web's write-verify loop made no pass in %v", time.Since(start))
		}
		return time.Since(start) / time.Duration(p-p0), longest
	}
	var flat, capped, raised float64
	idle, idleMax := webPass(nil)
	hogged, hoggedMax := webPass(func() { flat = fioIOPS(t, hn, hog.Volume, window) })
	cap1, cap2 := max(50, int(flat/8)), max(100, int(flat/3))
	if _, err := l.Fabric("instance", "limit", "hog", "--iops", fmt.Sprint(cap1)); err != nil {
		t.Fatal(err)
	}
	limited, limitedMax := webPass(func() { capped = fioIOPS(t, hn, hog.Volume, window) })
	if _, err := l.Fabric("instance", "limit", "hog", "--iops", fmt.Sprint(cap2)); err != nil {
		t.Fatal(err)
	}
	raised = fioIOPS(t, hn, hog.Volume, time.Second)
	lines := []string{
		fmt.Sprintf("web's mean write-verify pass: idle %v (longest %v); hog's fio flat out uncapped (%.0f IOPS) %v (longest %v); hog capped at %d IOPS (fio got %.0f) %v (longest %v)",
			idle.Round(time.Millisecond), idleMax, flat, hogged.Round(time.Millisecond), hoggedMax, cap1, capped, limited.Round(time.Millisecond), limitedMax),
		fmt.Sprintf("hog's cap raised live to %d IOPS: fio got %.0f in the next second", cap2, raised),
	}
	for _, s := range lines {
		t.Log(s)
	}
	if limited > 2*idle {
		t.Errorf("with hog capped at %d IOPS, web's mean pass %v is over twice idle (%v)", cap1, limited, idle)
	}
	if capped < 0.75*float64(cap1) || capped > 1.25*float64(cap1) {
		t.Errorf("hog capped at %d IOPS got %.0f", cap1, capped)
	}
	if raised < 0.75*float64(cap2) || raised > 1.25*float64(cap2) {
		t.Errorf("hog's cap raised live to %d IOPS: %.0f in the next second", cap2, raised)
	}
	if _, err := l.Fabric("instance", "delete", "hog"); err != nil {
		t.Error(err)
	}
	return lines
}
