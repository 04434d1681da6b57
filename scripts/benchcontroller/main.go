// Command benchcontroller measures the controller API: registrations per
// second with concurrent clients, against a running controller. It is run by
// scripts/bench-controller.sh.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

func main() {
	url := flag.String("controller", "", "controller URL")
	caFile := flag.String("ca", "", "CA file")
	tokenFile := flag.String("token-file", "", "admin credential file")
	n := flag.Int("n", 10000, "registrations")
	conc := flag.Int("c", 16, "concurrent clients")
	flag.Parse()
	ca, err := os.ReadFile(*caFile)
	if err != nil {
		fatal(err)
	}
	tok, err := os.ReadFile(*tokenFile)
	if err != nil {
		fatal(err)
	}
	cl, err := controllerapi.NewClient(*url, strings.TrimSpace(string(tok)), ca)
	if err != nil {
		fatal(err)
	}
	var next atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range *conc {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(*n) {
					return
				}
				t0 := time.Now()
				_, err := cl.RegisterNode(context.Background(), controllerapi.RegisterRequest{
					Name: fmt.Sprintf("n%05d", i), MAC: fmt.Sprintf("52:54:01:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff), Role: "hwnode"})
				d := time.Since(t0)
				if err != nil {
					failed.Add(1)
					fmt.Fprintln(os.Stderr, err)
					continue
				}
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[int(float64(len(lat)-1)*p)]
	}
	fmt.Printf("registrations\t%d ok, %d failed, %d clients\n", len(lat), failed.Load(), *conc)
	fmt.Printf("registrations/s\t%.0f\n", float64(len(lat))/el.Seconds())
	fmt.Printf("register latency\tp50 %.1f ms, p99 %.1f ms\n", ms(pct(0.5)), ms(pct(0.99)))
	if failed.Load() > 0 {
		os.Exit(1)
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "benchcontroller:", err)
	os.Exit(1)
}
