package controllerapi

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestEachNode: a list is decoded node by node; an answer that is not a
// list, or breaks off, is an error that says so, and a callback's error
// ends the walk.
func TestEachNode(t *testing.T) {
	body := ""
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(body))
	}))
	defer srv.Close()
	cl := &Client{BaseURL: srv.URL}
	ctx := context.Background()

	body = `[{"name":"hn1","ip":"10.0.0.1","status":{"alive":true}},` + "\n" + `{"name":"hn2"}]`
	ns, err := cl.Nodes(ctx)
	if err != nil || len(ns) != 2 || ns[0].Name != "hn1" || ns[1].Name != "hn2" {
		t.Fatalf("Nodes: %v %+v", err, ns)
	}
	// Each node is decoded into a zeroed value: hn2 carries no status
	// of hn1's.
	if ns[0].Status == nil || !ns[0].Status.Alive || ns[1].Status != nil || ns[1].IP != "" {
		t.Errorf("a node kept fields of the one before: %+v / %+v", ns[0], ns[1])
	}
	body = `[{"name":"hn1","agent":{"alive":true,"instances":2}},{"name":"hn2"}]`
	var got []string
	if err := cl.EachNodeSummary(ctx, func(s NodeSummary) error {
		got = append(got, fmt.Sprintf("%s %v", s.Name, s.Agent))
		return nil
	}); err != nil || fmt.Sprint(got) != "[hn1 &{true false false    0001-01-01 00:00:00 +0000 UTC 2} hn2 <nil>]" {
		t.Errorf("EachNodeSummary: %v %q", err, got)
	}
	var out strings.Builder
	if err := cl.NodesJSON(ctx, &out); err != nil || out.String() != body {
		t.Errorf("NodesJSON: %v %q", err, out.String())
	}
	body = "[]"
	if ns, err := cl.Nodes(ctx); err != nil || ns == nil || len(ns) != 0 {
		t.Errorf("empty list: %v %#v", err, ns)
	}
	for b, want := range map[string]string{
		`{"name":"hn1"}`:     "not a list",
		`[{"name":"hn1"},`:   "decoding controller answer to GET /v1/nodes",
		`[{"name":1}]`:       "decoding controller answer to GET /v1/nodes",
		``:                   "decoding controller answer to GET /v1/nodes",
		`[{"name":"a"}] [1]`: "", // what follows the list is not read
	} {
		body = b
		_, err := cl.Nodes(ctx)
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("answer %q: error %v, want %q", b, err, want)
		}
	}
	body = `[{"name":"hn1"},{"name":"hn2"}]`
	calls := 0
	stop := errorString("stop")
	if err := cl.EachNodeSummary(ctx, func(NodeSummary) error { calls++; return stop }); err != stop || calls != 1 {
		t.Errorf("callback error: %v after %d calls", err, calls)
	}
	var n Node
	if err := cl.each(ctx, "/v1/nodes", n, func() error { return nil }); err == nil {
		t.Error("each took a non-pointer")
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }
