package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/storagenode/witness"
)

// TestPairWitnessAccess: the controller's witness answers a pair node for
// itself in its own pair only: not for its peer, not a node outside the
// pair, not the admin credential; a storage agent with a wrong enrollment
// token gets no certificate at all. And a node that joined no pair is
// told of none in its desired state, while the paired ones learn their
// peer's replication address.
func TestPairWitnessAccess(t *testing.T) {
	c := newTestControllerWith(t, Config{BootSubnet: netip.MustParsePrefix("10.9.0.0/24"), ServerIP: netip.MustParseAddr("10.9.0.1"), AgentTimeout: 2 * time.Second})
	admin := serveAPI(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	agents := map[string]*controllerapi.Client{}
	desired := make(chan controllerapi.StorageDesired, 100)
	for i, name := range []string{"sn1", "sn2", "sn3"} {
		if _, err := admin.RegisterNode(ctx, controllerapi.RegisterRequest{Name: name, MAC: "52:54:00:00:0b:0" + string(rune('1'+i)), Role: controllerapi.RoleStorage}); err != nil {
			t.Fatal(err)
		}
		tok, _ := admin.NodeToken(ctx, name, 0)
		cl := newAgentClient(t, c, admin)
		if _, err := cl.Enroll(ctx, name, tok); err != nil {
			t.Fatal(err)
		}
		agents[name] = cl
		addr := "10.0.9." + string(rune('1'+i)) + ":7410"
		go func() {
			for ctx.Err() == nil {
				r := controllerapi.StorageReport{Node: name, Replication: addr, Capacity: controllerapi.StorageCapacity{FreeBytes: 1 << 40}}
				if ps, _ := c.Pairs(); len(ps) > 0 && name != "sn3" {
					r.Pair = &controllerapi.StoragePair{Pair: "sn1-sn2", Role: map[string]string{"sn1": "owner", "sn2": "follower"}[name], State: "in sync", Serving: true}
				}
				d, err := cl.StorageReport(ctx, r, 0)
				if err == nil && name != "sn3" {
					select {
					case desired <- d:
					default:
					}
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if sns, _ := c.StorageNodes(); len(sns) == 3 && sns[0].Alive && sns[1].Alive && sns[2].Alive {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the storage nodes do not report")
		}
	}
	info, err := admin.CreatePair(ctx, controllerapi.PairRequest{Nodes: []string{"sn1", "sn2"}})
	if err != nil || info.Owner != "sn1" || info.State != "in sync" {
		t.Fatalf("pair create: %+v %v", info, err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		d := <-desired
		if d.Pair != nil && d.Pair.Name == "sn1-sn2" && (d.Pair.Peer == "sn2" && d.Pair.PeerAddr == "10.0.9.2:7410" || d.Pair.Peer == "sn1" && d.Pair.PeerAddr == "10.0.9.1:7410") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no desired state names the pair: %+v", d.Pair)
		}
	}

	ask := func(hc *http.Client, req witness.Request) (int, string) {
		b, _ := json.Marshal(req)
		resp, err := hc.Post(admin.BaseURL+"/v1/storage/witness/v1/lease", "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out bytes.Buffer
		_, _ = out.ReadFrom(resp.Body)
		return resp.StatusCode, out.String()
	}
	sn1 := agents["sn1"].AgentHTTP(time.Second)
	if code, body := ask(sn1, witness.Request{Pair: "sn1-sn2", Node: "sn1", Op: witness.OpAcquire}); code != http.StatusOK || !strings.Contains(body, `"granted":true`) {
		t.Errorf("sn1 acquiring in its pair: %d %s", code, body)
	}
	for _, bad := range []struct {
		who  string
		hc   *http.Client
		req  witness.Request
		code int
	}{
		{"sn1 asking as sn2", sn1, witness.Request{Pair: "sn1-sn2", Node: "sn2", Op: witness.OpAcquire}, http.StatusForbidden},
		{"sn1 naming another pair", sn1, witness.Request{Pair: "other", Node: "sn1", Op: witness.OpAcquire}, http.StatusForbidden},
		{"sn3, in no pair", agents["sn3"].AgentHTTP(time.Second), witness.Request{Pair: "sn1-sn2", Node: "sn3", Op: witness.OpAcquire}, http.StatusForbidden},
		{"the admin client", admin.HTTP, witness.Request{Pair: "sn1-sn2", Node: "sn1", Op: witness.OpAcquire}, http.StatusUnauthorized},
	} {
		if code, body := ask(bad.hc, bad.req); code != bad.code {
			t.Errorf("%s: %d %s, want %d", bad.who, code, body, bad.code)
		}
	}
	if code, body := ask(sn1, witness.Request{Pair: "sn1-sn2", Node: "sn1", Op: "bogus"}); code != http.StatusBadRequest || !strings.Contains(body, "unknown operation") {
		t.Errorf("a bogus operation: %d %s", code, body)
	}

	// A storage agent with a wrong token gets no certificate.
	if _, err := admin.RegisterNode(ctx, controllerapi.RegisterRequest{Name: "sn4", MAC: "52:54:00:00:0b:09", Role: controllerapi.RoleStorage}); err != nil {
		t.Fatal(err)
	}
	if _, err := newAgentClient(t, c, admin).Enroll(ctx, "sn4", strings.Repeat("0", 64)); err == nil {
		t.Error("sn4 enrolled with a wrong token")
	}
}
