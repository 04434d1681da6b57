package controllerapi_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/ca"
	"github.com/fabric-project/fabric/controller/controllerapi"
)

// pinnedServer is an HTTPS server with a certificate of a new CA for
// 127.0.0.1, sending the CA in its chain as the controller does.
func pinnedServer(t *testing.T) (*httptest.Server, *ca.CA) {
	t.Helper()
	c, err := ca.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := c.IssueServer([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, c
}

func TestFetchPinnedCA(t *testing.T) {
	srv, c := pinnedServer(t)
	pin, err := controllerapi.CAPin(c.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(pin, "sha256:") || len(pin) != len("sha256:")+64 {
		t.Fatalf("pin %q: want sha256: and 64 hex digits", pin)
	}
	got, err := controllerapi.FetchPinnedCA(context.Background(), srv.URL, pin)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(c.CertPEM) {
		t.Errorf("fetched CA differs from the server's:\n%s\nwant\n%s", got, c.CertPEM)
	}

	// Another fabric's CA: refused, and final (no retry).
	_, other := pinnedServer(t)
	otherPin, _ := controllerapi.CAPin(other.CertPEM)
	_, err = controllerapi.FetchPinnedCARetrying(context.Background(), srv.URL, otherPin, nil)
	if !errors.Is(err, controllerapi.ErrCAPin) {
		t.Errorf("a CA not matching the pin: got %v, want ErrCAPin", err)
	}
	// A host name the certificate does not carry: refused.
	if _, err := controllerapi.FetchPinnedCA(context.Background(), strings.Replace(srv.URL, "127.0.0.1", "localhost", 1), pin); !errors.Is(err, controllerapi.ErrCAPin) {
		t.Errorf("a certificate for another host: got %v, want ErrCAPin", err)
	}
	for _, bad := range []string{"", "abc", "sha256:xyz", "sha256:" + strings.Repeat("0", 62), "md5:" + strings.Repeat("0", 64)} {
		if _, err := controllerapi.FetchPinnedCA(context.Background(), srv.URL, bad); err == nil || !strings.Contains(err.Error(), "want sha256:") {
			t.Errorf("pin %q: got %v, want a format error", bad, err)
		}
	}
	if _, err := controllerapi.FetchPinnedCA(context.Background(), "http://127.0.0.1:1", pin); err == nil || !strings.Contains(err.Error(), "https://") {
		t.Errorf("http URL: got %v, want an https error", err)
	}
}

// An unreachable controller is waited out until the context ends.
func TestFetchPinnedCARetryingWaits(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err = controllerapi.FetchPinnedCARetrying(ctx, "https://"+addr, "sha256:"+strings.Repeat("ab", 32), nil)
	if err == nil || time.Since(t0) < time.Second {
		t.Errorf("unreachable controller: got %v after %v, want a retry until the context ends", err, time.Since(t0))
	}
}
