package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func testCA(t testing.TB) *CA {
	t.Helper()
	c, err := LoadOrCreate(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func csrFor(t testing.TB, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// The certificate carries the registry's facts only: whatever names the
// request asks for are ignored.
func TestSignNodeBindsRegistryFacts(t *testing.T) {
	c := testCA(t)
	evil, _ := url.Parse(nodeURIPrefix + "someone-else")
	csr := csrFor(t, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "hn2"}, DNSNames: []string{"hn2", "controller"},
		IPAddresses: []net.IP{net.ParseIP("10.0.0.2")}, URIs: []*url.URL{evil}})
	now := time.Now()
	der, err := c.SignNode(csr, NodeIdentity{Name: "hn1", ID: "abc123", MAC: "52:54:00:00:00:01", Role: "hwnode", IPs: []net.IP{net.ParseIP("10.0.0.1")}}, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if id, ok := NodeID(cert); !ok || id != "abc123" || len(cert.URIs) != 1 {
		t.Errorf("node ID %q %v, URIs %v; want only abc123", id, ok, cert.URIs)
	}
	if cert.Subject.CommonName != "hn1" || len(cert.DNSNames) != 1 || cert.DNSNames[0] != "hn1" || len(cert.IPAddresses) != 1 || !cert.IPAddresses[0].Equal(net.ParseIP("10.0.0.1")) {
		t.Errorf("names %q %v %v; want hn1 and 10.0.0.1 only", cert.Subject.CommonName, cert.DNSNames, cert.IPAddresses)
	}
	if cert.NotAfter.Sub(now) > time.Hour || cert.IsCA {
		t.Errorf("not after %s, CA %v", cert.NotAfter, cert.IsCA)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: c.Pool(), KeyUsages: []x509.ExtKeyUsage{usage}, DNSName: "hn1"}); err != nil {
			t.Errorf("verify for %v: %v", usage, err)
		}
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: testCA(t).Pool()}); err == nil {
		t.Error("verified against another CA")
	}
}

func TestSignNodeRefuses(t *testing.T) {
	c := testCA(t)
	good := csrFor(t, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "hn1"}})
	forged := append([]byte(nil), good...)
	forged[len(forged)-5] ^= 0xff // the signature
	id := NodeIdentity{Name: "hn1", ID: "abc", Role: "hwnode"}
	for name, tc := range map[string]struct {
		csr []byte
		id  NodeIdentity
	}{
		"not a request": {[]byte("hello"), id},
		"bad signature": {forged, id},
		"no node ID":    {good, NodeIdentity{Name: "hn1"}},
		"empty":         {nil, id},
		"a certificate": {c.Cert.Raw, id},
	} {
		if _, err := c.SignNode(tc.csr, tc.id, time.Hour, time.Now()); err == nil {
			t.Errorf("%s: signed", name)
		}
	}
}

func TestLoadKeepsTheCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	a, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadOrCreate(dir)
	if err != nil || !a.Cert.Equal(b.Cert) {
		t.Fatalf("reloaded CA differs: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, KeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("CA key mode %v, %v; want 0600", fi.Mode(), err)
	}
}

// FuzzSignNode: no request bytes make the CA panic, and whatever it signs
// carries the registry's identity and nothing of the request but its key.
func FuzzSignNode(f *testing.F) {
	c := testCA(f)
	f.Add(csrFor(f, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "hn1"}}))
	f.Add([]byte("0\x82"))
	f.Fuzz(func(t *testing.T, csr []byte) {
		der, err := c.SignNode(csr, NodeIdentity{Name: "hn1", ID: "abc", Role: "hwnode"}, time.Hour, time.Now())
		if err != nil {
			return
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatalf("signed something unparseable: %v", err)
		}
		if id, ok := NodeID(cert); !ok || id != "abc" || cert.Subject.CommonName != "hn1" || len(cert.DNSNames) != 1 || len(cert.URIs) != 1 {
			t.Fatalf("signed certificate names %q %v %v", cert.Subject.CommonName, cert.DNSNames, cert.URIs)
		}
	})
}
