package controller

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"golang.org/x/sync/errgroup"
)

// BenchmarkListNodes is the controller's side of `fabric node list` with
// 10,000 hardware nodes: GET /v1/nodes through the API handler (no TLS).
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
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req := httptest.NewRequest("GET", "/v1/nodes", nil)
		req.Header.Set("Authorization", "Bearer "+c.AdminToken())
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("status %d", rec.Code)
		}
		b.SetBytes(int64(rec.Body.Len()))
	}
}
