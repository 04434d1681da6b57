package controller

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"golang.org/x/sync/errgroup"
)

// BenchmarkListNodes is `fabric node list` with 10,000 hardware nodes:
// GET /v1/nodes through the API handler, and the client's two ways of
// reading it (scripts/bench-controller.sh times the whole CLI process).
func BenchmarkListNodes(b *testing.B) {
	c, err := New(Config{StateDir: b.TempDir(), BootSubnet: netip.MustParsePrefix("10.20.0.0/16")})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	// Registered concurrently, so that the store batches the commits.
	var g errgroup.Group
	g.SetLimit(64)
	for i := 0; i < 10000; i++ {
		g.Go(func() error {
			mac := fmt.Sprintf("52:54:%02x:%02x:%02x:%02x", i>>24&0xff, i>>16&0xff, i>>8&0xff, i&0xff)
			_, err := c.reg.Register(controllerapi.RegisterRequest{Name: fmt.Sprintf("hn%d", i), MAC: mac, Role: controllerapi.RoleHWNode})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	h := c.Handler()
	for name, path := range map[string]string{"handler": "/v1/nodes", "handler-summary": "/v1/nodes?view=summary"} {
		b.Run(name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				req := httptest.NewRequest("GET", path, nil)
				req.Header.Set("Authorization", "Bearer "+c.AdminToken())
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("status %d", rec.Code)
				}
				b.SetBytes(int64(rec.Body.Len()))
			}
		})
	}
	// What `fabric node list` does, over HTTP on loopback (no TLS): the
	// table's summaries, and the JSON copied out as the controller
	// indents it.
	srv := httptest.NewServer(h)
	defer srv.Close()
	cl := &controllerapi.Client{BaseURL: srv.URL, Token: c.AdminToken()}
	b.Run("client-summary", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			n := 0
			if err := cl.EachNodeSummary(context.Background(), func(controllerapi.NodeSummary) error { n++; return nil }); err != nil || n != 10000 {
				b.Fatalf("%d nodes: %v", n, err)
			}
		}
	})
	b.Run("client-json", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			var w countWriter
			if err := cl.NodesJSON(context.Background(), &w); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(w))
		}
	})
}

type countWriter int

func (w *countWriter) Write(p []byte) (int, error) {
	*w += countWriter(len(p))
	return len(p), nil
}
