package controller

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

func TestDecideEnroll(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	started := now.Add(-time.Hour)
	ok := enrollFacts{Known: true, Role: "hwnode", TokenMatched: true, Started: started, Now: now, AgentTimeout: 6 * time.Second}
	with := func(fn func(*enrollFacts)) enrollFacts { f := ok; fn(&f); return f }
	for _, tc := range []struct {
		name  string
		f     enrollFacts
		kind  error // nil: granted
		words string
	}{
		{"first enrollment", ok, nil, ""},
		{"storage node", with(func(f *enrollFacts) { f.Role = "storage" }), nil, ""},
		{"unknown node", with(func(f *enrollFacts) { f.Known, f.TokenMatched = false, false }), ErrUnauthorized, "wrong or already used"},
		{"wrong or used token", with(func(f *enrollFacts) { f.TokenMatched = false }), ErrUnauthorized, "wrong or already used"},
		// A caller without the token learns nothing of the node's state.
		{"wrong token, live agent", with(func(f *enrollFacts) { f.TokenMatched, f.Enrolled, f.LastSeen = false, true, now }), ErrUnauthorized, "wrong or already used"},
		{"expired token", with(func(f *enrollFacts) { f.TokenExpired = true }), ErrUnauthorized, "expired"},
		{"unknown role", with(func(f *enrollFacts) { f.Role = "toaster" }), ErrInvalid, "runs no agent"},
		{"live agent", with(func(f *enrollFacts) { f.Enrolled, f.LastSeen = true, now.Add(-2*time.Second) }), ErrConflict, "fabric node reset"},
		{"agent silent past the timeout", with(func(f *enrollFacts) { f.Enrolled, f.LastSeen = true, now.Add(-7*time.Second) }), nil, ""},
		{"controller just restarted", with(func(f *enrollFacts) { f.Enrolled, f.Started = true, now.Add(-2*time.Second) }), ErrConflict, "restarted"},
		{"controller restarted long ago, agent never called", with(func(f *enrollFacts) { f.Enrolled = true }), nil, ""},
		{"reset (not enrolled) while the old agent ran", with(func(f *enrollFacts) { f.Enrolled, f.LastSeen = false, now }), nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := decideEnroll(tc.f)
			switch {
			case tc.kind == nil && err != nil:
				t.Errorf("refused: %v; want granted", err)
			case tc.kind != nil && !errors.Is(err, tc.kind):
				t.Errorf("got %v; want %v", err, tc.kind)
			case tc.kind != nil && !strings.Contains(err.Error(), tc.words):
				t.Errorf("message %q lacks %q", err, tc.words)
			}
		})
	}
}

func TestDecideBootToken(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	node, other := netip.MustParseAddr("10.233.0.10"), netip.MustParseAddr("10.233.0.66")
	w := bootWindow{IP: node, Opened: now.Add(-3 * time.Second)}
	for _, tc := range []struct {
		name  string
		w     bootWindow
		open  bool
		from  netip.Addr
		serve bool
		words string
	}{
		{"the booting node", w, true, node, true, ""},
		{"no DHCP exchange", bootWindow{}, false, node, false, "no DHCP exchange"},
		{"another address", w, true, other, false, "not from 10.233.0.10"},
		{"after the window", bootWindow{IP: node, Opened: now.Add(-2 * time.Minute)}, true, node, false, "has closed"},
		{"second fetch", bootWindow{IP: node, Opened: w.Opened, Served: true}, true, node, false, "already served"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			serve, why := decideBootToken(tc.w, tc.open, tc.from, now, time.Minute)
			if serve != tc.serve || !strings.Contains(why, tc.words) {
				t.Errorf("decideBootToken = %v, %q; want %v, %q", serve, why, tc.serve, tc.words)
			}
		})
	}
}

// FuzzEnroll: no enrollment body grants a certificate without the node's
// token, none makes the controller fail (5xx), and every refusal keeps the
// store consistent.
func FuzzEnroll(f *testing.F) {
	c, err := New(Config{StateDir: f.TempDir(), BootSubnet: netip.MustParsePrefix("10.9.0.0/24")})
	if err != nil {
		f.Fatal(err)
	}
	defer c.Close()
	if _, err := c.reg.Register(controllerapi.RegisterRequest{Name: "hn1", MAC: "52:54:00:00:00:01", Role: "hwnode"}); err != nil {
		f.Fatal(err)
	}
	if _, err := c.reg.IssueToken("hn1", "test", time.Hour); err != nil {
		f.Fatal(err)
	}
	h := c.Handler()
	f.Add([]byte(`{"node":"hn1","token":"guess","csr":"MIIB"}`))
	f.Add([]byte(`{"node":"hn1","token":"","csr":null}`))
	f.Add([]byte(`{"node":"nobody","token":"x"}`))
	f.Add([]byte(`{"node":"hn1"`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("POST", "/v1/agent/enroll", bytes.NewReader(body))
		h.ServeHTTP(rec, req)
		if rec.Code == http.StatusOK || rec.Code >= 500 {
			t.Fatalf("body %q: status %d: %s", body, rec.Code, rec.Body)
		}
	})
	if err := c.reg.CheckInvariants(); err != nil {
		f.Error(err)
	}
}
