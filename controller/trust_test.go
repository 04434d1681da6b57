package controller

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/ca"
	"github.com/fabric-project/fabric/controller/controllerapi"
)

// enrolled registers a hardware node and enrolls an agent client for it.
func enrolled(t *testing.T, c *Controller, admin *controllerapi.Client, name, mac string) *controllerapi.Client {
	t.Helper()
	if _, err := admin.RegisterNode(context.Background(), controllerapi.RegisterRequest{Name: name, MAC: mac, Role: controllerapi.RoleHWNode}); err != nil {
		t.Fatal(err)
	}
	return enrollAgent(t, c, admin, name)
}

// enrollAgent enrolls an agent client for a registered node with a new
// token, and checks that the token cannot be used twice.
func enrollAgent(t *testing.T, c *Controller, admin *controllerapi.Client, name string) *controllerapi.Client {
	t.Helper()
	ctx := context.Background()
	tok, err := admin.NodeToken(ctx, name, 0)
	if err != nil {
		t.Fatal(err)
	}
	cl := newAgentClient(t, c, admin)
	if _, err := cl.Enroll(ctx, name, tok); err != nil {
		t.Fatal(err)
	}
	if _, err := newAgentClient(t, c, admin).Enroll(ctx, name, tok); apiStatus(err) != http.StatusUnauthorized {
		t.Errorf("enrollment token used twice: %v", err)
	}
	return cl
}

// rawCertClient calls the API presenting cert (any certificate at all).
func rawCertClient(admin *controllerapi.Client, caPEM []byte, cert tls.Certificate) *controllerapi.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &controllerapi.Client{BaseURL: admin.BaseURL, HTTP: &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}}
}

// nodeCert issues a certificate for a node's identity from fca, valid
// from now-ttl... as given.
func nodeCert(t *testing.T, fca *ca.CA, id ca.NodeIdentity, now time.Time, ttl time.Duration) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id.Name}}, key)
	der, err := fca.SignNode(csr, id, ttl, now)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestAgentMutualTLS(t *testing.T) {
	c := newTestControllerWith(t, Config{BootSubnet: netip.MustParsePrefix("10.9.0.0/24"), AgentTimeout: time.Second})
	admin := serveAPI(t, c)
	ctx := context.Background()
	hn1 := enrolled(t, c, admin, "hn1", "52:54:00:00:00:01")
	hn2 := enrolled(t, c, admin, "hn2", "52:54:00:00:00:02")
	if _, err := hn1.Heartbeat(ctx, controllerapi.Heartbeat{Node: "hn1"}, 0); err != nil {
		t.Fatalf("hn1 with its own certificate: %v", err)
	}
	n1, _ := c.reg.Node("hn1")
	other := newTestController(t, "10.9.0.0/24")

	for _, tc := range []struct {
		name   string
		call   func() error
		status int // 0: the TLS handshake itself fails
	}{
		{"no client certificate", func() error {
			_, err := newAgentClient(t, c, admin).Heartbeat(ctx, controllerapi.Heartbeat{}, 0)
			return err
		}, http.StatusUnauthorized},
		{"another node's certificate", func() error {
			_, err := hn2.Heartbeat(ctx, controllerapi.Heartbeat{Node: "hn1"}, 0)
			return err
		}, http.StatusForbidden},
		{"expired certificate", func() error {
			cert := nodeCert(t, c.ca, nodeIdentity(n1), time.Now().Add(-2*time.Hour), time.Hour)
			_, err := rawCertClient(admin, c.CACertPEM(), cert).Heartbeat(ctx, controllerapi.Heartbeat{}, 0)
			return err
		}, 0},
		{"another CA's certificate for hn1", func() error {
			cert := nodeCert(t, other.ca, nodeIdentity(n1), time.Now(), time.Hour)
			_, err := rawCertClient(admin, c.CACertPEM(), cert).Heartbeat(ctx, controllerapi.Heartbeat{}, 0)
			return err
		}, 0},
		{"a certificate the fabric CA issued but the controller never recorded", func() error {
			cert := nodeCert(t, c.ca, nodeIdentity(n1), time.Now(), time.Hour)
			_, err := rawCertClient(admin, c.CACertPEM(), cert).Heartbeat(ctx, controllerapi.Heartbeat{}, 0)
			return err
		}, http.StatusForbidden},
		{"the admin token instead of a certificate", func() error {
			cl := *newAgentClient(t, c, admin)
			cl.Token = admin.Token
			_, err := cl.Heartbeat(ctx, controllerapi.Heartbeat{}, 0)
			return err
		}, http.StatusUnauthorized},
		{"an agent certificate on the admin API", func() error {
			_, err := hn1.Nodes(ctx)
			return err
		}, http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if err == nil {
				t.Fatal("accepted")
			}
			if got := apiStatus(err); got != tc.status {
				t.Errorf("%v: status %d; want %d", err, got, tc.status)
			}
		})
	}
	// hn2 only ever called claiming to be hn1: nothing of it was taken.
	if seen := c.agents.lastSeen("hn2"); !seen.IsZero() {
		t.Errorf("hn2's refused heartbeat was recorded at %v", seen)
	}
}

func TestAgentRenewal(t *testing.T) {
	c := newTestControllerWith(t, Config{BootSubnet: netip.MustParsePrefix("10.9.0.0/24"), CertTTL: 4 * time.Second})
	admin := serveAPI(t, c)
	ctx := context.Background()
	hn1 := enrolled(t, c, admin, "hn1", "52:54:00:00:00:01")
	id := hn1Identity(t, hn1)
	first := id.Leaf()
	if first.NotAfter.Sub(time.Now()) > 5*time.Second {
		t.Fatalf("certificate valid until %s; want the 4 s lifetime", first.NotAfter)
	}
	// Keep renewing at half-life across several lifetimes, calling all
	// the while: the agent never stops being accepted.
	renewals := 0
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if id.RenewDue(time.Now()) {
			if _, err := hn1.Renew(ctx, "hn1"); err != nil {
				t.Fatalf("renewal %d: %v", renewals+1, err)
			}
			renewals++
		}
		if _, err := hn1.Heartbeat(ctx, controllerapi.Heartbeat{Node: "hn1"}, 0); err != nil {
			t.Fatalf("heartbeat after %d renewals: %v", renewals, err)
		}
	}
	// At half-life: one renewal every 2 s.
	if renewals < 4 || renewals > 6 {
		t.Errorf("%d renewals in 10 s of 4 s certificates; want 4 to 6 (every 2 s)", renewals)
	}
	if !time.Now().After(first.NotAfter) {
		t.Fatal("test ended before the first certificate expired")
	}
	// A superseded certificate (two renewals ago) is refused even while
	// it is still valid.
	n1, _ := c.reg.Node("hn1")
	old := nodeCert(t, c.ca, nodeIdentity(n1), time.Now(), time.Hour)
	if _, err := rawCertClient(admin, c.CACertPEM(), old).Heartbeat(ctx, controllerapi.Heartbeat{}, 0); !controllerapi.IsRevoked(err) {
		t.Errorf("unrecorded certificate: %v; want revoked", err)
	}
}

// hn1Identity digs the identity out of an agent client made by
// newAgentClient (its certificate is what the client presents).
func hn1Identity(t *testing.T, cl *controllerapi.Client) *controllerapi.Identity {
	t.Helper()
	id := cl.Identity()
	if id == nil || id.Leaf() == nil {
		t.Fatal("agent client has no certificate")
	}
	return id
}

func TestRemoveRevokesAndReregisterIsNewIdentity(t *testing.T) {
	c := newTestControllerWith(t, Config{BootSubnet: netip.MustParsePrefix("10.9.0.0/24"), ServerIP: netip.MustParseAddr("10.9.0.1"),
		AgentTimeout: time.Second})
	admin := serveAPI(t, c)
	ctx := context.Background()
	if _, err := admin.RegisterNode(ctx, controllerapi.RegisterRequest{Name: "hn1", MAC: "52:54:00:00:00:01", Role: controllerapi.RoleHWNode}); err != nil {
		t.Fatal(err)
	}
	a := startFakeAgent(t, c, admin, "hn1", 1024)
	startFakeStorage(t, c, admin, "st1", "52:54:00:00:0c:09")
	waitAlive(t, c, "hn1")
	img := make([]byte, 1<<20)
	if _, err := admin.ImportImage(ctx, "tiny", strings.NewReader(string(img)), int64(len(img))); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateInstance(ctx, controllerapi.CreateInstanceRequest{Name: "web", Image: "tiny", VCPUs: 1, MemoryMiB: 128, Node: "hn1"}); err != nil {
		t.Fatal(err)
	}
	// A node with an instance is not removed silently.
	err := admin.RemoveNode(ctx, "hn1", false)
	if apiStatus(err) != http.StatusConflict || !strings.Contains(err.Error(), "web") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("remove a node holding web: %v; want 409 naming web and --force", err)
	}
	// Renamed, the node keeps its instance and its agent keeps working.
	nn := "hn9"
	if _, err := admin.UpdateNode(ctx, "hn1", controllerapi.UpdateRequest{Name: &nn}); err != nil {
		t.Fatal(err)
	}
	in, err := admin.Instance(ctx, "web")
	if err != nil || in.Node != "hn9" {
		t.Fatalf("instance after the rename: %+v, %v; want on hn9", in, err)
	}
	waitAlive(t, c, "hn9")
	old, _ := c.reg.Node("hn9")

	// Forced removal deletes the instance through the node, then revokes.
	if err := admin.RemoveNode(ctx, "hn9", true); err != nil {
		t.Fatalf("forced remove: %v", err)
	}
	if _, err := admin.Instance(ctx, "web"); apiStatus(err) != http.StatusNotFound {
		t.Errorf("instance after forced remove: %v; want gone", err)
	}
	if err := a.waitRefused(5 * time.Second); !controllerapi.IsRevoked(err) {
		t.Errorf("removed node's agent: %v; want revoked", err)
	}
	// The name registered again is another identity: the old agent stays
	// refused.
	if _, err := admin.RegisterNode(ctx, controllerapi.RegisterRequest{Name: "hn9", MAC: "52:54:00:00:00:01", Role: controllerapi.RoleHWNode}); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.reg.Node("hn9"); n.ID == old.ID || n.ID == "" {
		t.Errorf("re-registered hn9 has ID %q, the old one %q", n.ID, old.ID)
	}
	if _, err := a.cl.Heartbeat(ctx, controllerapi.Heartbeat{}, 0); !controllerapi.IsRevoked(err) {
		t.Errorf("old agent after re-registration: %v; want revoked", err)
	}
	if _, _, alive := c.agents.get("hn9", time.Now()); alive {
		t.Error("re-registered hn9 counts as alive through the old agent")
	}
	if err := c.reg.CheckInvariants(); err != nil {
		t.Error(err)
	}
}

func TestResetAllowsReenrollment(t *testing.T) {
	c := newTestControllerWith(t, Config{BootSubnet: netip.MustParsePrefix("10.9.0.0/24"), AgentTimeout: 2 * time.Second})
	admin := serveAPI(t, c)
	ctx := context.Background()
	hn1 := enrolled(t, c, admin, "hn1", "52:54:00:00:00:01")
	if _, err := hn1.Heartbeat(ctx, controllerapi.Heartbeat{}, 0); err != nil {
		t.Fatal(err)
	}
	// A second enrollment while the agent is alive is refused and
	// recorded, and spends the token.
	tok, _ := admin.NodeToken(ctx, "hn1", 0)
	thief := newAgentClient(t, c, admin)
	if _, err := thief.Enroll(ctx, "hn1", tok); apiStatus(err) != http.StatusConflict || !strings.Contains(err.Error(), "fabric node reset") {
		t.Fatalf("enrollment over a live agent: %v; want 409 pointing at reset", err)
	}
	if _, err := thief.Enroll(ctx, "hn1", tok); apiStatus(err) != http.StatusUnauthorized {
		t.Errorf("the refused token again: %v; want 401 (spent)", err)
	}
	if _, err := hn1.Heartbeat(ctx, controllerapi.Heartbeat{}, 0); err != nil {
		t.Errorf("real agent after the refused enrollment: %v", err)
	}
	evs, _ := c.reg.Events(0, 1000)
	refused := 0
	for _, ev := range evs {
		if ev.Type == controllerapi.EventEnrollRefused && ev.Source == "127.0.0.1" {
			refused++
		}
	}
	// enrollAgent's own reuse check, then the two attempts above.
	if refused != 3 {
		t.Errorf("%d enroll_refused events with a source; want 3", refused)
	}
	// The admin resets: the old agent is refused, a new one may enroll.
	spare, _ := admin.NodeToken(ctx, "hn1", 0)
	if err := admin.ResetNode(ctx, "hn1"); err != nil {
		t.Fatal(err)
	}
	if _, err := newAgentClient(t, c, admin).Enroll(ctx, "hn1", spare); apiStatus(err) != http.StatusUnauthorized {
		t.Errorf("a token issued before the reset: %v; want 401 (spent by the reset)", err)
	}
	if _, err := hn1.Heartbeat(ctx, controllerapi.Heartbeat{}, 0); !controllerapi.IsRevoked(err) {
		t.Errorf("agent after reset: %v; want revoked", err)
	}
	tok, _ = admin.NodeToken(ctx, "hn1", 0)
	fresh := newAgentClient(t, c, admin)
	if _, err := fresh.Enroll(ctx, "hn1", tok); err != nil {
		t.Fatalf("enrollment after reset: %v", err)
	}
	if _, err := fresh.Heartbeat(ctx, controllerapi.Heartbeat{}, 0); err != nil {
		t.Errorf("new agent: %v", err)
	}
	// An expired token is refused.
	c.reg.now = func() time.Time { return time.Now().Add(-2 * time.Hour) }
	tok, _ = admin.NodeToken(ctx, "hn1", time.Hour)
	c.reg.now = time.Now
	if _, err := newAgentClient(t, c, admin).Enroll(ctx, "hn1", tok); apiStatus(err) != http.StatusUnauthorized || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired token: %v; want 401 expired", err)
	}
}

func TestAdminTokens(t *testing.T) {
	c := newTestController(t, "10.9.0.0/24")
	admin := serveAPI(t, c)
	ctx := context.Background()
	ops, err := admin.CreateAdminToken(ctx, "ops", controllerapi.TokenAdmin)
	if err != nil {
		t.Fatal(err)
	}
	dash, err := admin.CreateAdminToken(ctx, "dash", controllerapi.TokenReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateAdminToken(ctx, "ops", controllerapi.TokenAdmin); apiStatus(err) != http.StatusConflict {
		t.Errorf("duplicate token name: %v", err)
	}
	if _, err := admin.CreateAdminToken(ctx, "x", "superuser"); apiStatus(err) != http.StatusBadRequest {
		t.Errorf("unknown kind: %v", err)
	}
	as := func(secret string) *controllerapi.Client { cl := *admin; cl.Token = secret; return &cl }
	if _, err := as(ops.Secret).RegisterNode(ctx, controllerapi.RegisterRequest{Name: "hn1", MAC: "52:54:00:00:00:01", Role: "hwnode"}); err != nil {
		t.Fatalf("ops registers: %v", err)
	}
	if ns, err := as(dash.Secret).Nodes(ctx); err != nil || len(ns) != 1 {
		t.Errorf("read-only lists: %v, %v", ns, err)
	}
	if _, err := as(dash.Secret).RegisterNode(ctx, controllerapi.RegisterRequest{Name: "hn2", MAC: "52:54:00:00:00:02", Role: "hwnode"}); apiStatus(err) != http.StatusForbidden {
		t.Errorf("read-only registers: %v; want 403", err)
	}
	if _, err := as(dash.Secret).NodeToken(ctx, "hn1", 0); apiStatus(err) != http.StatusForbidden {
		t.Errorf("read-only mints an enrollment token: %v; want 403", err)
	}
	ts, err := admin.AdminTokens(ctx)
	if err != nil || len(ts) != 3 {
		t.Fatalf("tokens %+v, %v; want root, ops, dash", ts, err)
	}
	for _, tk := range ts {
		if tk.Secret != "" {
			t.Errorf("token list shows %s's secret", tk.Name)
		}
	}
	if err := admin.RevokeAdminToken(ctx, "ops"); err != nil {
		t.Fatal(err)
	}
	if _, err := as(ops.Secret).Nodes(ctx); apiStatus(err) != http.StatusUnauthorized {
		t.Errorf("revoked token: %v; want 401", err)
	}
	if err := admin.RevokeAdminToken(ctx, controllerapi.RootTokenName); apiStatus(err) != http.StatusBadRequest {
		t.Errorf("revoking root over the API: %v", err)
	}
	// Every mutating call names its token; reads are not recorded.
	evs, _ := c.reg.Events(0, 1000)
	calls, registered := map[string]int{}, map[string]int{}
	for _, ev := range evs {
		if ev.Type == controllerapi.EventNodeRegistered {
			registered[ev.Actor]++
		}
		if ev.Type == controllerapi.EventAPICall {
			calls[ev.Actor]++
			if !strings.Contains(ev.Message, ev.Actor) || ev.Source == "" {
				t.Errorf("call event %+v lacks the token or the source", ev)
			}
		}
	}
	// root: 4 creates (2 refused) + 2 revokes; ops: 1 registration, in
	// its own event; dash: 2 refused writes.
	if calls["root"] != 6 || calls["ops"] != 0 || calls["dash"] != 2 || registered["ops"] != 1 {
		t.Errorf("recorded calls by token %v, registrations %v; want root 6, dash 2, one registration by ops", calls, registered)
	}
}

func waitAlive(t *testing.T, c *Controller, node string) {
	t.Helper()
	if !c.waitAgents(5*time.Second, func() bool { _, _, alive := c.agents.get(node, time.Now()); return alive }) {
		t.Fatalf("%s not alive", node)
	}
}

// A node down for longer than its certificate's lifetime comes back with a
// new token: its client stops presenting the expired certificate (which
// the TLS handshake would refuse) and enrolls.
func TestExpiredCertificateReenrolls(t *testing.T) {
	c := newTestControllerWith(t, Config{BootSubnet: netip.MustParsePrefix("10.9.0.0/24"), AgentTimeout: time.Second})
	admin := serveAPI(t, c)
	ctx := context.Background()
	if _, err := admin.RegisterNode(ctx, controllerapi.RegisterRequest{Name: "hn1", MAC: "52:54:00:00:00:01", Role: controllerapi.RoleHWNode}); err != nil {
		t.Fatal(err)
	}
	n1, _ := c.reg.Node("hn1")
	old := nodeCert(t, c.ca, nodeIdentity(n1), time.Now().Add(-2*time.Hour), time.Hour)
	key, _ := x509.MarshalECPrivateKey(old.PrivateKey.(*ecdsa.PrivateKey))
	path := filepath.Join(t.TempDir(), "identity.pem")
	file := append(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: key}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: old.Certificate[0]})...)
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}
	id, err := controllerapi.LoadIdentity(path)
	if err != nil || !id.Enrolled() {
		t.Fatalf("identity with an expired certificate: %v", err)
	}
	cl, _ := controllerapi.NewAgentClient(admin.BaseURL, c.CACertPEM(), id)
	if _, err := cl.Heartbeat(ctx, controllerapi.Heartbeat{}, 0); apiStatus(err) != http.StatusUnauthorized {
		t.Errorf("heartbeat with the expired certificate: %v; want 401 (none presented)", err)
	}
	tok, _ := admin.NodeToken(ctx, "hn1", 0)
	if _, err := cl.Enroll(ctx, "hn1", tok); err != nil {
		t.Fatalf("enrollment with an expired certificate on file: %v", err)
	}
	if _, err := cl.Heartbeat(ctx, controllerapi.Heartbeat{}, 0); err != nil {
		t.Errorf("heartbeat after enrolling again: %v", err)
	}
}
