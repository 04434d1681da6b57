package storagenode_test

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

// TestVolumeOpsBench measures controller-driven volume operations on a
// pair the controller made (two real storage nodes): clones of an 8 MiB
// image (each returns once both nodes report the clone), allow-list
// changes (each in force on both when it returns) and deletes (until both
// nodes no longer hold them), N at a time in sequence (default 20), RUNS
// times (default 3). Only with FABRIC_BENCH=volops
// (scripts/bench-storage.sh); prints a markdown table.
func TestVolumeOpsBench(t *testing.T) {
	if os.Getenv("FABRIC_BENCH") != "volops" {
		t.Skip("a benchmark: FABRIC_BENCH=volops (scripts/bench-storage.sh)")
	}
	n, runs := 20, 3
	if v, err := strconv.Atoi(os.Getenv("N")); err == nil && v > 0 && v < 250 {
		n = v
	}
	if v, err := strconv.Atoi(os.Getenv("RUNS")); err == nil && v > 0 {
		runs = v
	}
	l, c := newControllerPair(t)
	if _, err := c.CreatePair(controllerapi.PairRequest{Nodes: []string{"sn1", "sn2"}}, "bench"); err != nil {
		t.Fatalf("pair create: %v\n%s", err, l.Logs())
	}
	img := make([]byte, 8<<20)
	for i := range img {
		img[i] = byte(i / 4096)
	}
	if _, err := c.ImportImage("tiny", int64(len(img)), func(f *os.File) error { _, err := f.Write(img); return err }); err != nil {
		t.Fatal(err)
	}
	vols := c.Volumes()
	// The image travels to the nodes once, before the runs.
	if _, err := vols.Clone("tiny", "warm", "e5.250", nil, ""); err != nil {
		t.Fatal(err)
	}
	if err := vols.Delete("warm"); err != nil {
		t.Fatal(err)
	}
	held := func() int {
		k := 0
		sns, _ := c.StorageNodes()
		for _, sn := range sns {
			if sn.Report == nil {
				continue
			}
			for _, v := range sn.Report.Volumes {
				if v.Addr != "" {
					k++
				}
			}
		}
		return k
	}
	rates := map[string][]float64{}
	for r := 0; r < runs; r++ {
		t0 := time.Now()
		for i := 0; i < n; i++ {
			if _, err := vols.Clone("tiny", fmt.Sprintf("v%d", i), fmt.Sprintf("e5.%d", i), []string{"02:00:00:00:00:01"}, ""); err != nil {
				t.Fatal(err)
			}
		}
		rates["clone (8 MiB image, on both nodes)"] = append(rates["clone (8 MiB image, on both nodes)"], float64(n)/time.Since(t0).Seconds())
		t0 = time.Now()
		for i := 0; i < n; i++ {
			if err := vols.Allow(fmt.Sprintf("v%d", i), []string{"02:00:00:00:00:02"}); err != nil {
				t.Fatal(err)
			}
		}
		rates["allow-list change (applied on both)"] = append(rates["allow-list change (applied on both)"], float64(n)/time.Since(t0).Seconds())
		t0 = time.Now()
		for i := 0; i < n; i++ {
			if err := vols.Delete(fmt.Sprintf("v%d", i)); err != nil {
				t.Fatal(err)
			}
		}
		for held() > 0 {
			if time.Since(t0) > time.Minute {
				t.Fatalf("the nodes still hold %d volumes a minute after the deletes", held())
			}
			time.Sleep(10 * time.Millisecond)
		}
		rates["delete (gone from both)"] = append(rates["delete (gone from both)"], float64(n)/time.Since(t0).Seconds())
	}
	fmt.Printf("| operation (%d in sequence, %d runs) | per second min/med/max |\n|---|---|\n", n, runs)
	for _, op := range []string{"clone (8 MiB image, on both nodes)", "allow-list change (applied on both)", "delete (gone from both)"} {
		s := slices.Clone(rates[op])
		slices.Sort(s)
		fmt.Printf("| %s | %.1f / %.1f / %.1f |\n", op, s[0], s[len(s)/2], s[len(s)-1])
	}
}
