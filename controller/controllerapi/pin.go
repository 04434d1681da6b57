package controllerapi

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/fabric-project/fabric/internal/backoff"
)

// CAPin is the pin of a CA certificate (PEM): "sha256:" and the hex
// SHA-256 of its DER form. The config node puts it on a PXE-booted
// node's kernel command line (fabric.ca=), so that the node can take the
// CA from the controller itself and trust nothing else.
func CAPin(caPEM []byte) (string, error) {
	b, _ := pem.Decode(caPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return "", errors.New("controllerapi: no PEM certificate to pin")
	}
	sum := sha256.Sum256(b.Bytes)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

func parsePin(pin string) ([]byte, error) {
	h, ok := strings.CutPrefix(pin, "sha256:")
	if !ok {
		return nil, fmt.Errorf("CA pin %q: want sha256:HEX (fabric.ca= on the kernel command line)", pin)
	}
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("CA pin %q: want sha256: and 64 hex digits", pin)
	}
	return b, nil
}

// ErrCAPin is a controller whose CA does not match the pin.
var ErrCAPin = errors.New("the controller's CA does not match the pin")

// FetchPinnedCA takes the fabric CA certificate from the TLS handshake of
// the controller at baseURL (the controller sends its certificate with
// the CA's) and returns it as PEM, if the CA matches pin and has signed
// the controller's certificate for that host. Nothing is trusted before
// the pin matches.
func FetchPinnedCA(ctx context.Context, baseURL, pin string) ([]byte, error) {
	want, err := parsePin(pin)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(baseURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("controller URL %q: want https://HOST:PORT", baseURL)
	}
	host, addr := u.Hostname(), u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(host, "443")
	}
	var ca *x509.Certificate
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Checked below against the pin instead of a root store.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the controller sent no certificate")
			}
			for _, c := range cs.PeerCertificates[1:] {
				if sum := sha256.Sum256(c.Raw); string(sum[:]) == string(want) && c.IsCA {
					ca = c
				}
			}
			if ca == nil {
				return fmt.Errorf("%w: none matches %s in the chain of %s: a different fabric, or someone else answering there", ErrCAPin, pin, addr)
			}
			roots := x509.NewCertPool()
			roots.AddCert(ca)
			if _, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, DNSName: host}); err != nil {
				return fmt.Errorf("%w: the controller's certificate: %v", ErrCAPin, err)
			}
			return nil
		},
	}
	d := tls.Dialer{Config: cfg, NetDialer: &net.Dialer{Timeout: 5 * time.Second}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("fetching the fabric CA from %s: %w", addr, err)
	}
	conn.Close()
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}), nil
}

// FetchPinnedCARetrying is FetchPinnedCA waiting out a controller it
// cannot reach, with capped exponential backoff; a CA that does not match
// the pin is final.
func FetchPinnedCARetrying(ctx context.Context, baseURL, pin string, log *slog.Logger) ([]byte, error) {
	b := backoff.New(time.Second, 30*time.Second, 0.2)
	for {
		ca, err := FetchPinnedCA(ctx, baseURL, pin)
		if err == nil || ctx.Err() != nil {
			return ca, err
		}
		if errors.Is(err, ErrCAPin) {
			return nil, err
		}
		d := b.Next()
		if log != nil {
			log.Warn("controller unreachable; retrying the CA fetch", "err", err, "retry_in", d.Round(time.Millisecond), "attempt", b.Failures())
		}
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
