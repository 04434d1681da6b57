package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

// serveAPI serves c's API on a loopback port and returns an admin client.
func serveAPI(t *testing.T, c *Controller) *controllerapi.Client {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	cl, err := controllerapi.NewClient("https://"+ln.Addr().String(), c.AdminToken(), c.CACertPEM())
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func apiStatus(err error) int {
	var ae *controllerapi.APIError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

func TestAPIRequiresCredential(t *testing.T) {
	c := newTestController(t, "10.9.0.0/24")
	admin := serveAPI(t, c)
	ctx := context.Background()
	for _, tok := range []string{"", "wrong", c.AdminToken() + "x"} {
		cl := *admin
		cl.Token = tok
		if _, err := cl.RegisterNode(ctx, controllerapi.RegisterRequest{Name: "hn1", MAC: "52:54:00:12:34:56", Role: "hwnode"}); apiStatus(err) != http.StatusUnauthorized {
			t.Errorf("register with token %q: %v; want 401", tok, err)
		}
		if _, err := cl.Nodes(ctx); apiStatus(err) != http.StatusUnauthorized {
			t.Errorf("list with token %q: %v; want 401", tok, err)
		}
		if err := cl.RemoveNode(ctx, "x", false); apiStatus(err) != http.StatusUnauthorized {
			t.Errorf("remove with token %q: %v; want 401", tok, err)
		}
	}
	ns, err := admin.Nodes(ctx)
	if err != nil || len(ns) != 0 {
		t.Errorf("after unauthenticated calls: nodes %v, %v; want none", ns, err)
	}
	// The secrets are readable by their owner only.
	for _, f := range []string{AdminTokenFile, "ca/ca.key"} {
		fi, err := os.Stat(filepath.Join(c.cfg.StateDir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, %v; want mode 0600", f, fi.Mode(), err)
		}
	}
}

func TestAPIRejectsUntrustedCA(t *testing.T) {
	c := newTestController(t, "10.9.0.0/24")
	admin := serveAPI(t, c)
	other := newTestController(t, "10.9.0.0/24")
	cl, _ := controllerapi.NewClient(admin.BaseURL, c.AdminToken(), other.CACertPEM())
	if _, err := cl.Nodes(context.Background()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("client trusting another CA: %v; want a certificate error", err)
	}
}

func TestAPIBadBodies(t *testing.T) {
	c := newTestController(t, "10.9.0.0/24")
	cl := serveAPI(t, c)
	for _, tc := range []struct {
		name, body string
		status     int
	}{
		{"not JSON", "hello", 400},
		{"unknown field", `{"name":"a","mac":"52:54:00:12:34:56","role":"hwnode","colour":"red"}`, 400},
		{"two objects", `{"name":"a","mac":"52:54:00:12:34:56","role":"hwnode"}{}`, 400},
		{"huge", `{"name":"` + strings.Repeat("a", 200<<10) + `"}`, 413},
		{"bad MAC", `{"name":"a","mac":"zz","role":"hwnode"}`, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", cl.BaseURL+"/v1/nodes", strings.NewReader(tc.body))
			req.Header.Set("Authorization", "Bearer "+cl.Token)
			resp, err := cl.HTTP.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Errorf("status %d; want %d", resp.StatusCode, tc.status)
			}
		})
	}
	if ns, _ := cl.Nodes(context.Background()); len(ns) != 0 {
		t.Errorf("bad bodies registered %d nodes", len(ns))
	}
	req, _ := http.NewRequest("GET", cl.BaseURL+"/v1/nodes?view=everything", nil)
	req.Header.Set("Authorization", "Bearer "+cl.Token)
	resp, err := cl.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), "full or summary") {
		t.Errorf("unknown view: %d %s", resp.StatusCode, b)
	}
}

func TestAPIEventsLongPoll(t *testing.T) {
	c := newTestController(t, "10.9.0.0/24")
	cl := serveAPI(t, c)
	ctx := context.Background()
	got := make(chan controllerapi.EventsResponse, 1)
	go func() {
		r, err := cl.Events(ctx, 1, 20*time.Second)
		if err != nil {
			t.Error(err)
		}
		got <- r
	}()
	time.Sleep(100 * time.Millisecond) // let the poll park; the answer must still wait for the event
	start := time.Now()
	if _, err := cl.RegisterNode(ctx, controllerapi.RegisterRequest{Name: "hn1", MAC: "52:54:00:12:34:56", Role: "hwnode"}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		if len(r.Events) != 1 || r.Events[0].Type != controllerapi.EventNodeRegistered || r.Next != 2 {
			t.Errorf("long poll answered %+v", r)
		}
		t.Logf("event delivered %v after the registration", time.Since(start))
	case <-time.After(10 * time.Second):
		t.Fatal("long poll not answered after a registration")
	}
	r, err := cl.Events(ctx, 1, 0)
	if err != nil || len(r.Events) != 1 || r.Events[0].Actor != controllerapi.RootTokenName || r.Events[0].Source != "127.0.0.1" || r.Next != 2 {
		t.Errorf("events since 1 without wait = %+v, %v; want the registration by root from 127.0.0.1, next 2", r, err)
	}
}

func TestUnknownMACEventsAreRateLimited(t *testing.T) {
	c := newTestController(t, "10.9.0.0/24")
	mac, _ := net.ParseMAC("52:54:00:aa:bb:cc")
	for range 50 {
		c.UnknownMAC(mac, "br0")
	}
	evs, err := c.Registry().Events(0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Type != controllerapi.EventUnknownMAC || !strings.Contains(evs[0].Message, "unknown MAC 52:54:00:aa:bb:cc asked to boot on br0") {
		t.Errorf("events after 50 DHCP tries from one unknown MAC: %+v", evs)
	}
}

// TestWriteJSONList: a list written in chunks on several cores is the
// same text as the list encoded whole, compact and indented.
func TestWriteJSONList(t *testing.T) {
	for _, n := range []int{0, 1, 255, 256, 257, 1000} {
		items := make([]controllerapi.NodeSummary, n)
		for i := range items {
			items[i] = controllerapi.NodeSummary{Name: fmt.Sprintf("n%d", i), IP: "10.0.0.1", Agent: &controllerapi.AgentSummary{Instances: i % 3}}
		}
		for _, pretty := range []bool{false, true} {
			rec := httptest.NewRecorder()
			writeJSONList(rec, items, pretty)
			var want bytes.Buffer
			enc := json.NewEncoder(&want)
			if pretty {
				enc.SetIndent("", "  ")
			}
			if err := enc.Encode(items); err != nil {
				t.Fatal(err)
			}
			if got := rec.Body.String(); got != want.String() {
				t.Errorf("%d items, pretty %v: got %d bytes, want %d\n%.300s", n, pretty, len(got), want.Len(), got)
			}
		}
	}
}
