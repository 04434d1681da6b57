package controllerapi

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzLoadIdentity: whatever the identity file holds, loading it never
// panics, and an identity that loads hands out a key and chain that form a
// working pair (what libvirt's TLS files are written from).
func FuzzLoadIdentity(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "identity.pem")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		id, err := LoadIdentity(path)
		if err != nil {
			return
		}
		if len(b) == 0 {
			return // os.WriteFile made an empty file: LoadIdentity found it
		}
		if !id.Enrolled() {
			t.Fatal("loaded without error but not enrolled")
		}
		key, chain := id.PEM()
		if _, err := tls.X509KeyPair(chain, key); err != nil {
			t.Fatalf("loaded identity's key and chain do not pair: %v", err)
		}
		_ = id.RenewDue(time.Now())
	})
}
