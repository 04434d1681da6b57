package controllerapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/fabric-project/fabric/internal/atomicfile"
	"github.com/fabric-project/fabric/internal/backoff"
)

// Identity is a node agent's private key and certificate, kept together
// in one PEM file (written atomically, mode 0600) so that a crash never
// leaves a key beside another key's certificate.
type Identity struct {
	path string
	mu   sync.Mutex
	cert *tls.Certificate // nil: not enrolled
	// got is when the certificate was received (the file's time after a
	// restart): its NotBefore is backdated for clock skew, so it does
	// not say when the lifetime began.
	got time.Time
}

// LoadIdentity reads the identity at path; a missing file is an identity
// that has not enrolled yet.
func LoadIdentity(path string) (*Identity, error) {
	id := &Identity{path: path}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return id, nil
	}
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if fi, err := os.Stat(path); err == nil {
		id.got = fi.ModTime()
	}
	cert, err := tls.X509KeyPair(b, b)
	if err != nil {
		return nil, fmt.Errorf("identity %s: %w; delete it and enroll again with a new token", path, err)
	}
	id.cert = &cert
	return id, nil
}

// Enrolled reports whether the identity holds a certificate.
func (id *Identity) Enrolled() bool {
	id.mu.Lock()
	defer id.mu.Unlock()
	return id.cert != nil
}

// Leaf returns the current certificate, or nil.
func (id *Identity) Leaf() *x509.Certificate {
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.cert == nil {
		return nil
	}
	return id.cert.Leaf
}

// TLSCertificate returns the current key and certificate chain, or nil.
func (id *Identity) TLSCertificate() *tls.Certificate {
	id.mu.Lock()
	defer id.mu.Unlock()
	return id.cert
}

// PEM returns the private key and the certificate chain, PEM-encoded,
// for programs that need them as files (libvirtd's TLS); nil before
// enrollment.
func (id *Identity) PEM() (key, chain []byte) {
	cert := id.TLSCertificate()
	if cert == nil {
		return nil, nil
	}
	if k, ok := cert.PrivateKey.(*ecdsa.PrivateKey); ok {
		der, _ := x509.MarshalECPrivateKey(k)
		key = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	} else if der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey); err == nil {
		key = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return key, chain
}

// RenewDue reports whether half of the certificate's lifetime, counted
// from when it was received, has passed.
func (id *Identity) RenewDue(now time.Time) bool {
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.cert == nil {
		return false
	}
	start := id.got
	if start.IsZero() || start.Before(id.cert.Leaf.NotBefore) {
		start = id.cert.Leaf.NotBefore
	}
	return now.After(start.Add(id.cert.Leaf.NotAfter.Sub(start) / 2))
}

// clientCertificate hands TLS the current certificate at each handshake.
func (id *Identity) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.cert == nil || time.Now().After(id.cert.Leaf.NotAfter) {
		// None, or an expired one the server would refuse in the
		// handshake: present nothing and let the server decide (an
		// enrollment needs no certificate).
		return &tls.Certificate{}, nil
	}
	return id.cert, nil
}

// newRequest makes a fresh key and a certificate request for it.
func newRequest(node string) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: node}}, key)
	return key, csr, err
}

// install checks the issued chain against key and saves both.
func (id *Identity) install(key *ecdsa.PrivateKey, chainPEM string) error {
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	b := append(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), chainPEM...)
	cert, err := tls.X509KeyPair(b, b)
	if err != nil {
		return fmt.Errorf("identity: the controller's certificate does not match our key: %w", err)
	}
	if err := atomicfile.Write(id.path, b, 0o600); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	id.mu.Lock()
	id.cert, id.got = &cert, time.Now()
	id.mu.Unlock()
	return nil
}

// NewAgentClient returns a client that trusts only the fabric CA and
// authenticates with id's certificate.
func NewAgentClient(baseURL string, caPEM []byte, id *Identity) (*Client, error) {
	c, err := NewClient(baseURL, "", caPEM)
	if err != nil {
		return nil, err
	}
	c.id = id
	c.HTTP = c.agentHTTP()
	return c, nil
}

// AgentHTTP returns a new HTTP client that presents the agent's
// certificate (the current one at each new connection), for calls outside
// this client's API, like a pair's witness at the controller.
func (c *Client) AgentHTTP(timeout time.Duration) *http.Client {
	h := c.agentHTTP()
	h.Timeout = timeout
	return h
}

func (c *Client) agentHTTP() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: c.roots, MinVersion: tls.VersionTLS12, GetClientCertificate: c.id.clientCertificate}
	return &http.Client{Transport: tr}
}

// Identity returns an agent client's identity (nil for an admin client).
func (c *Client) Identity() *Identity { return c.id }

// reconnect drops the client's connections so that the next call makes a
// new TLS handshake with the identity's new certificate.
func (c *Client) reconnect() {
	old := c.HTTP
	c.HTTP = c.agentHTTP()
	old.CloseIdleConnections()
}

// Enroll exchanges a one-time enrollment token for a certificate for a
// fresh key, and saves both in the client's identity.
func (c *Client) Enroll(ctx context.Context, node, token string) (EnrollResponse, error) {
	return c.certify(ctx, node, "/v1/agent/enroll", func(csr []byte) any { return EnrollRequest{Node: node, Token: token, CSR: csr} })
}

// Renew replaces the identity's key and certificate before it expires,
// authenticated by the current one. Not safe to call concurrently with
// other calls of the same client.
// EnrollRetrying enrolls like Enroll, but waits out a controller it
// cannot reach (it may be starting too), with capped exponential backoff
// and jitter; an answer that refuses the token is final.
func (c *Client) EnrollRetrying(ctx context.Context, node, token string, log *slog.Logger) (EnrollResponse, error) {
	b := backoff.New(time.Second, 30*time.Second, 0.2)
	for {
		r, err := c.Enroll(ctx, node, token)
		if err == nil {
			return r, nil
		}
		var ae *APIError
		if errors.As(err, &ae) || ctx.Err() != nil {
			return r, fmt.Errorf("enrolling %s: %w", node, err)
		}
		d := b.Next()
		log.Warn("controller unreachable; retrying enrollment", "err", err, "retry_in", d.Round(time.Millisecond), "attempt", b.Failures())
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return r, ctx.Err()
		}
	}
}

func (c *Client) Renew(ctx context.Context, node string) (EnrollResponse, error) {
	return c.certify(ctx, node, "/v1/agent/renew", func(csr []byte) any { return RenewRequest{CSR: csr} })
}

// certify makes a fresh key, sends its certificate request in the body
// that req builds, and installs the certificate the controller answers
// with; the client's next calls use it.
func (c *Client) certify(ctx context.Context, node, path string, req func(csr []byte) any) (EnrollResponse, error) {
	var r EnrollResponse
	if c.id == nil {
		return r, errors.New("controllerapi: an agent call needs an agent client (NewAgentClient)")
	}
	key, csr, err := newRequest(node)
	if err != nil {
		return r, err
	}
	if err := c.do(ctx, http.MethodPost, path, req(csr), &r); err != nil {
		return r, err
	}
	if err := c.id.install(key, r.Certificate); err != nil {
		return r, err
	}
	c.reconnect()
	return r, nil
}

// IsRevoked reports whether err is the controller refusing a revoked node
// certificate.
func IsRevoked(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Code == CodeRevoked
}

// KernelArg is key's value on the kernel command line (fabric.token=,
// fabric.name=: what the config node's boot script gives a PXE-booted
// node), or "".
func KernelArg(key string) string {
	b, _ := os.ReadFile("/proc/cmdline")
	for _, f := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}
