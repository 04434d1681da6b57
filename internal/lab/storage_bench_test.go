package lab

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"
)

// TestStorageBench measures issue 14's figures where a guest sees them:
// web's disk is on a storage pair the controller made; inside the guest a
// loop writes, fsyncs, drops its cache and reads back; the longest pass
// after a fault, less nothing (the healthy longest pass is printed
// beside), is what the guest lived through. Each fault ROUNDS times
// (default 10): a drain of the owner (a planned shutdown, then undrain),
// kill -9 of the owner (then restart), kill -9 of the follower (then
// restart), the owner's AoE link down for 5 s; the pair is in sync again
// before the next. Only with FABRIC_BENCH=storage (scripts/bench-storage.sh);
// prints markdown tables.
func TestStorageBench(t *testing.T) {
	if os.Getenv("FABRIC_BENCH") != "storage" {
		t.Skip("a benchmark: FABRIC_BENCH=storage (scripts/bench-storage.sh)")
	}
	rounds := 10
	if n, err := strconv.Atoi(os.Getenv("ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	images := skipUnlessLab(t)
	bin := buildBinaries(t)
	l := upLab(t, Config{Bin: bin, Images: images, Hosts: 1, StoragePair: true})
	_, ip := webOnHN1(t, l, images)
	wvStats(t, l, ip, "start")
	var healthy []time.Duration
	for i := 0; i < 5; i++ {
		if _, err := l.GuestIO(ip, "reset"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		g, err := l.GuestIO(ip, "")
		if err != nil {
			t.Fatal(err)
		}
		healthy = append(healthy, g.Longest)
	}
	other := map[string]string{"sn1": "sn2", "sn2": "sn1"}
	ns := map[string]string{"sn1": l.StorageNS, "sn2": l.Storage2NS}
	type fault struct {
		name  string
		do    func(own string) error
		after func(own string) error
	}
	faults := []fault{
		{"drain of the owner, then undrain",
			func(own string) error { _, err := l.Fabric("storage", "drain", own); return err },
			func(own string) error { _, err := l.Fabric("storage", "undrain", own); return err }},
		{"kill -9 of the owner, then restart",
			func(own string) error { return l.Kill(StorageProc(own)) },
			func(own string) error { return l.RestartStorage(StorageProc(own)) }},
		{"kill -9 of the follower, then restart",
			func(own string) error { return l.Kill(StorageProc(other[own])) },
			func(own string) error { return l.RestartStorage(StorageProc(other[own])) }},
		{"owner's AoE link down 5 s",
			func(own string) error {
				_, err := In(ns[own], "ip", "link", "set", "eth0", "down")
				time.AfterFunc(5*time.Second, func() { _, _ = In(ns[own], "ip", "link", "set", "eth0", "up") })
				return err
			},
			func(own string) error { return nil }},
	}
	results := make([][]time.Duration, len(faults))
	resyncs := make([][]time.Duration, len(faults))
	var errs int
	for r := 0; r < rounds; r++ {
		for i, f := range faults {
			p, err := l.PairInfo()
			if err != nil || p.Owner == "" {
				t.Fatalf("round %d, %s: pair %+v %v", r+1, f.name, p, err)
			}
			if _, err := l.GuestIO(ip, "reset"); err != nil {
				t.Fatal(err)
			}
			if err := f.do(p.Owner); err != nil {
				t.Fatalf("round %d, %s: %v", r+1, f.name, err)
			}
			time.Sleep(6 * time.Second)
			g, err := l.GuestIO(ip, "")
			if err != nil {
				t.Fatal(err)
			}
			errs = g.Errors
			results[i] = append(results[i], g.Longest)
			if err := f.after(p.Owner); err != nil {
				t.Fatalf("round %d, %s: %v", r+1, f.name, err)
			}
			took, err := l.WaitPairInSync(120 * time.Second)
			if err != nil {
				t.Fatalf("round %d, %s: %v", r+1, f.name, err)
			}
			resyncs[i] = append(resyncs[i], took)
			fmt.Fprintf(os.Stderr, "round %d, %s: longest pass %v, in sync %v later\n", r+1, f.name, g.Longest, took.Round(100*time.Millisecond))
		}
	}
	mmm := func(ds []time.Duration) string {
		s := slices.Clone(ds)
		slices.Sort(s)
		return fmt.Sprintf("%d / %d / %d", s[0].Milliseconds(), s[len(s)/2].Milliseconds(), s[len(s)-1].Milliseconds())
	}
	fmt.Printf("| fault (%d times each) | guest's longest write-verify pass, ms min/med/max | back in sync after, ms min/med/max |\n|---|---|---|\n", rounds)
	fmt.Printf("| none (healthy, 5 windows of 2 s) | %s | |\n", mmm(healthy))
	for i, f := range faults {
		fmt.Printf("| %s | %s | %s |\n", f.name, mmm(results[i]), mmm(resyncs[i]))
	}
	fmt.Printf("\nguest write-verify errors after %d faults: %d\n", rounds*len(faults), errs)
	if errs > 0 {
		t.Errorf("the guest saw %d write-verify errors", errs)
	}
}
