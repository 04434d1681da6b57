package storagenode_test

import (
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/internal/netns"
	"github.com/fabric-project/fabric/internal/pairlab"
)

// TestVolumeOpsBench measures controller-driven volume operations across
// two pairs the controller made (four real storage nodes; volume i goes
// to pair i%2): clones of an 8 MiB image (each returns once both nodes of
// its pair report the clone), allow-list changes (each in force on both
// when it returns) and deletes (until no node holds them), N at a time in
// sequence (default 20), RUNS times (default 3). Only with FABRIC_BENCH=volops
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
	// A second pair, sn3 and sn4, on a switch of its own; they reach the
	// controller through a TCP relay in their witness namespace.
	sw2 := netns.New(t, "psw2")
	sw2.Must(t, "ip", "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
	sw2.Must(t, "ip", "link", "set", "br0", "up")
	l2 := pairlab.New(t, l.Bin, sw2, "br0")
	l2.Nodes[0].Name, l2.Nodes[1].Name = "sn3", "sn4"
	netns.Veth(t, l.Wit, "x0", "10.81.0.1/24", l2.Wit, "x0", "10.81.0.2/24")
	relay(t, l2.Wit, ":8443", l2.Wit, "10.81.0.1:8443")
	startMembers(t, c, l2)
	if _, err := c.CreatePair(controllerapi.PairRequest{Nodes: []string{"sn3", "sn4"}}, "bench"); err != nil {
		t.Fatalf("pair create: %v\n%s", err, l2.Logs())
	}
	pairs := []string{"sn1-sn2", "sn3-sn4"}
	img := make([]byte, 8<<20)
	for i := range img {
		img[i] = byte(i / 4096)
	}
	if _, err := c.ImportImage("tiny", int64(len(img)), func(f *os.File) error { _, err := f.Write(img); return err }); err != nil {
		t.Fatal(err)
	}
	vols := c.Volumes()
	// The image travels to the nodes once, before the runs.
	for i, p := range pairs {
		if _, err := vols.Clone("tiny", "warm", fmt.Sprintf("e5.%d", 250+i), nil, p); err != nil {
			t.Fatal(err)
		}
		if err := vols.Delete("warm"); err != nil {
			t.Fatal(err)
		}
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
			if _, err := vols.Clone("tiny", fmt.Sprintf("v%d", i), fmt.Sprintf("e5.%d", i), []string{"02:00:00:00:00:01"}, pairs[i%2]); err != nil {
				t.Fatal(err)
			}
		}
		rates["clone (8 MiB image, on both nodes of its pair)"] = append(rates["clone (8 MiB image, on both nodes of its pair)"], float64(n)/time.Since(t0).Seconds())
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
	fmt.Printf("| operation (%d in sequence over 2 pairs, %d runs) | per second min/med/max |\n|---|---|\n", n, runs)
	for _, op := range []string{"clone (8 MiB image, on both nodes of its pair)", "allow-list change (applied on both)", "delete (gone from both)"} {
		s := slices.Clone(rates[op])
		slices.Sort(s)
		fmt.Printf("| %s | %.1f / %.1f / %.1f |\n", op, s[0], s[len(s)/2], s[len(s)-1])
	}
}

// relay forwards TCP connections accepted at listen in namespace from to
// dial in namespace to.
func relay(t *testing.T, from *netns.NS, listen string, to *netns.NS, dial string) {
	t.Helper()
	var ln net.Listener
	if err := from.Do(func() (err error) { ln, err = net.Listen("tcp", listen); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var u net.Conn
				if err := to.Do(func() (err error) { u, err = net.Dial("tcp", dial); return err }); err != nil {
					return
				}
				defer u.Close()
				go func() { _, _ = io.Copy(u, c); u.Close() }()
				_, _ = io.Copy(c, u)
			}()
		}
	}()
}
