package storagenode_test

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/fabric-project/fabric/aoe/initiator"
)

// TestPairBench measures what replication costs and how long failover
// stalls writes (scripts/bench-pair.sh runs it; FABRIC_BENCH=pair):
// fabric aoe bench (the project's CLI client; any AoE client can stand
// in) against one node alone and against the pair, interleaved, three
// runs each; the resync rate; and the write stall after each node's
// death, ten times each, measured with our initiator resending every
// 100 ms as the Linux driver does.
func TestPairBench(t *testing.T) {
	if os.Getenv("FABRIC_BENCH") != "pair" {
		t.Skip("a benchmark: FABRIC_BENCH=pair (scripts/bench-pair.sh)")
	}
	const size = 256 << 20
	l := newPairLab(t, size)
	l.waitInSync(60 * time.Second)
	fab := os.Getenv("FABRIC_CLI")
	if fab == "" {
		t.Fatal("FABRIC_CLI: path of the fabric binary")
	}
	runs, _ := strconv.Atoi(os.Getenv("RUNS"))
	runs = max(runs, 3)
	secs := os.Getenv("SECS")
	if secs == "" {
		secs = "4s"
	}
	type res struct {
		MBps  float64 `json:"mb_per_s"`
		IOPS  float64 `json:"iops"`
		P50us float64 `json:"p50_us"`
		P99us float64 `json:"p99_us"`
	}
	bench := func(mode string, window int) res {
		out, err := l.ini.Cmd(fab, "aoe", "bench", "-i", "ini0", "--window", fmt.Sprint(window), "--wait", "300ms",
			"--mode", mode, "--duration", secs, "-o", "json", "e7.1").CombinedOutput()
		if err != nil {
			t.Fatalf("fabric aoe bench %s: %v\n%s", mode, err, out)
		}
		var r res
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("%s: %v", out, err)
		}
		return r
	}
	pairArgs := slices.Clone(l.Nodes[0].Args)
	single := func(on bool) {
		for _, n := range l.Nodes {
			l.Kill(n, syscall.SIGKILL)
		}
		if on {
			l.Nodes[0].Args = pairArgs[:5] // storage --iface aoe0 --data-dir DIR: no pair
			l.Start(l.Nodes[0])
			time.Sleep(500 * time.Millisecond)
			return
		}
		l.Nodes[0].Args = pairArgs
		l.StartAll()
		l.waitInSync(60 * time.Second)
	}
	type key struct{ setup, mode string }
	got := map[key][]res{}
	modes := []struct {
		mode   string
		window int
	}{{"seqwrite", 16}, {"randwrite", 16}, {"seqread", 16}, {"randread", 16}}
	// fill the volume once so reads read data
	single(true)
	bench("seqwrite", 16)
	for r := 0; r < runs; r++ {
		for _, setup := range []string{"one node", "pair"} {
			single(setup == "one node")
			for _, m := range modes {
				got[key{setup, m.mode}] = append(got[key{setup, m.mode}], bench(m.mode, m.window))
			}
		}
	}
	spread := func(v []float64) string {
		slices.Sort(v)
		return fmt.Sprintf("%.0f / %.0f / %.0f", v[0], v[len(v)/2], v[len(v)-1])
	}
	fmt.Printf("\n| mode (window 16, MTU 1500) | setup | MB/s min/med/max | IOPS min/med/max | p50 µs min/med/max | p99 µs min/med/max |\n|---|---|---|---|---|---|\n")
	for _, m := range modes {
		for _, setup := range []string{"one node", "pair"} {
			var mb, iops, p50, p99 []float64
			for _, r := range got[key{setup, m.mode}] {
				mb, iops, p50, p99 = append(mb, r.MBps), append(iops, r.IOPS), append(p50, r.P50us), append(p99, r.P99us)
			}
			fmt.Printf("| %s | %s | %s | %s | %s | %s |\n", m.mode, setup, spread(mb), spread(iops), spread(p50), spread(p99))
		}
	}

	// Resync: a full sync of the volume after an ownership change, at the
	// default rate limit (100 MiB/s).
	copied := regexp.MustCompile(`in sync: (\d+) MiB copied in ([0-9.]+m?s)`)
	var rates []float64
	for i := 0; i < runs; i++ {
		own, _ := l.Owner()
		l.Kill(own, syscall.SIGKILL)
		time.Sleep(2 * time.Second)
		l.Start(own)
		l.waitInSync(60 * time.Second)
		newOwn, _ := l.Owner()
		m := copied.FindStringSubmatch(l.Status(newOwn).LastEvent)
		if m == nil {
			t.Fatalf("no resync figure in %q", l.Status(newOwn).LastEvent)
		}
		mib, _ := strconv.Atoi(m[1])
		d, _ := time.ParseDuration(m[2])
		rates = append(rates, float64(mib)/d.Seconds())
	}
	fmt.Printf("\nfull resync of a %d MiB volume at --resync-rate 100M (default), MiB/s min/med/max: %s\n", size>>20, spread(rates))

	// Write stalls: ten kills of the owner and ten of the follower, with
	// eight writers through both paths.
	l.in.Close()
	if err := l.ini.Do(func() (err error) {
		l.in, err = initiator.New("ini0", initiator.Config{Window: 32, Timeout: 100 * time.Millisecond, MaxTimeout: 100 * time.Millisecond, Retries: 100})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	stalls := map[string][]float64{}
	kills, err := strconv.Atoi(os.Getenv("KILLS"))
	if err != nil {
		kills = 10
	}
	if kills == 0 {
		return
	}
	for i := 0; i < kills; i++ {
		for _, who := range []string{"owner", "follower"} {
			own, other := l.Owner()
			victim := own
			if who == "follower" {
				victim = other
			}
			d := l.phase(fmt.Sprintf("kill -9 of the %s %s (%d/%d)", who, victim.Name, i+1, kills), func() { l.Kill(victim, syscall.SIGKILL) }, 2500*time.Millisecond)
			stalls[who] = append(stalls[who], float64(d.Milliseconds()))
			l.Start(victim)
			l.waitInSync(60 * time.Second)
		}
	}
	fmt.Printf("\n| node killed (%d times each) | write stall ms min/med/max |\n|---|---|\n", kills)
	for _, who := range []string{"owner", "follower"} {
		fmt.Printf("| %s | %s |\n", who, spread(stalls[who]))
	}
	l.check("after 20 kills", l.Nodes[0], l.Nodes[1])
}
