package lab

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

// TestHABench measures issue 18's figure: the time from a hardware node's
// power loss to its HA instance answering ping from another node, ROUNDS
// times (default 5). web runs on one node; that node loses power (every
// process of its namespace killed, its link cut); web comes back on the
// other; the dead node is repaired (link, libvirtd, agent) and unfenced;
// the next round kills the node web now runs on. Only with
// FABRIC_BENCH=ha (scripts/bench-ha.sh); prints a markdown table.
func TestHABench(t *testing.T) {
	if os.Getenv("FABRIC_BENCH") != "ha" {
		t.Skip("a benchmark: FABRIC_BENCH=ha (scripts/bench-ha.sh)")
	}
	rounds := 5
	if n, err := strconv.Atoi(os.Getenv("ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	images := skipUnlessLab(t)
	bin := buildBinaries(t)
	l := upLab(t, Config{Bin: bin, Images: images})
	_, ip := webOnHN1(t, l, images)
	host := map[string]Host{}
	for _, h := range l.Hosts {
		host[h.Name] = h
	}
	var backs, fences []time.Duration
	fmt.Printf("| round | node killed | fenced after | web answers from | after |\n|---|---|---|---|---|\n")
	for r := 1; r <= rounds; r++ {
		var in controllerapi.Instance
		fabricJSON(t, l, &in, "instance", "show", "web", "-o", "json")
		dead := host[in.Node]
		t0 := time.Now()
		if err := l.PowerOff(dead); err != nil {
			t.Fatal(err)
		}
		var fenced, back time.Duration
		if err := waitFor(60*time.Second, func() bool {
			if fenced == 0 {
				if out, _ := l.Fabric("node", "list"); strings.Contains(out, "FENCED") {
					fenced = time.Since(t0)
				}
			}
			_, err := In(l.ClientNS, "ping", "-c1", "-W1", ip)
			if err == nil {
				back = time.Since(t0)
			}
			return err == nil
		}); err != nil {
			out, _ := l.Fabric("events")
			t.Fatalf("round %d: web never answered after %s lost power: %v\n%s", r, dead.Name, err, out)
		}
		fabricJSON(t, l, &in, "instance", "show", "web", "-o", "json")
		if in.Node == dead.Name {
			t.Fatalf("round %d: web answers, but on %s, the dead node", r, dead.Name)
		}
		fmt.Printf("| %d | %s | %.1f s | %s | %.1f s |\n", r, dead.Name, fenced.Seconds(), in.Node, back.Seconds())
		backs, fences = append(backs, back), append(fences, fenced)

		// Repair: link, libvirtd, agent; then unfence.
		if _, err := In(dead.NS, "ip", "link", "set", "eth0", "up"); err != nil {
			t.Fatal(err)
		}
		if err := l.StartLibvirtd(dead); err != nil {
			t.Fatal(err)
		}
		if err := l.StartAgent(dead, ""); err != nil {
			t.Fatal(err)
		}
		if out, err := l.Fabric("node", "unfence", dead.Name); err != nil {
			t.Fatalf("unfence %s: %v\n%s", dead.Name, err, out)
		}
		if err := waitFor(30*time.Second, func() bool {
			out, _ := l.Fabric("node", "list")
			return strings.Count(out, "alive") == 2 && !strings.Contains(out, "FENCED")
		}); err != nil {
			out, _ := l.Fabric("node", "list")
			t.Fatalf("round %d: %s not back: %v\n%s", r, dead.Name, err, out)
		}
	}
	spread := func(ds []time.Duration) string {
		s := slices.Clone(ds)
		slices.Sort(s)
		return fmt.Sprintf("%.1f / %.1f / %.1f s", s[0].Seconds(), s[len(s)/2].Seconds(), s[len(s)-1].Seconds())
	}
	fmt.Printf("\n| %d power losses | min / median / max |\n|---|---|\n", rounds)
	fmt.Printf("| kill to fenced (seen by `fabric node list`, polled) | %s |\n", spread(fences))
	fmt.Printf("| kill to web answering ping from the other node (goal: 30 s) | %s |\n", spread(backs))
}
