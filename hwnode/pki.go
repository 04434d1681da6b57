package hwnode

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"

	"github.com/fabric-project/fabric/internal/atomicfile"
)

// writeLibvirtPKI puts the node's certificate where libvirt looks for TLS
// credentials by default (with LibvirtPKIDir /etc/pki: CA/cacert.pem,
// libvirt/servercert.pem, libvirt/private/serverkey.pem and the client
// pair beside them). libvirtd serves TLS with the server pair and dials
// peer-to-peer migrations with the client pair; the node certificate
// serves both. Then libvirtd is told to reload them (virt-admin
// server-update-tls rereads exactly these default paths), so a renewed
// certificate takes effect without a restart.
func (a *Agent) writeLibvirtPKI(ctx context.Context) error {
	dir := a.cfg.LibvirtPKIDir
	if dir == "" {
		return nil
	}
	key, chain := a.id.PEM()
	if len(key) == 0 || len(chain) == 0 {
		return errors.New("hwnode: libvirt TLS: no certificate yet")
	}
	ca, err := os.ReadFile(a.cfg.CAFile)
	if err != nil {
		return fmt.Errorf("hwnode: libvirt TLS: %w", err)
	}
	for _, f := range []struct {
		name string
		b    []byte
		mode os.FileMode
	}{
		{"CA/cacert.pem", ca, 0o644},
		{"libvirt/servercert.pem", chain, 0o644},
		{"libvirt/clientcert.pem", chain, 0o644},
		{"libvirt/private/serverkey.pem", key, 0o600},
		{"libvirt/private/clientkey.pem", key, 0o600},
	} {
		path := filepath.Join(dir, f.name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return fmt.Errorf("hwnode: libvirt TLS: %w", err)
		}
		if err := atomicfile.Write(path, f.b, f.mode); err != nil {
			return fmt.Errorf("hwnode: libvirt TLS: %w", err)
		}
	}
	if a.cfg.LibvirtAdminURI == "" {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, "virt-admin", "-c", a.cfg.LibvirtAdminURI, "server-update-tls", "libvirtd").CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "no tls service") {
			return nil // libvirtd does not listen for TLS (yet): it reads the files when it starts
		}
		return fmt.Errorf("hwnode: libvirt TLS written to %s, but reloading libvirtd failed: %v: %s", dir, err, strings.TrimSpace(string(out)))
	}
	a.log.Info("libvirtd reloaded its TLS certificate", "dir", dir)
	return nil
}

// peerURI is the driver URI of a peer's libvirtd: the same as this node's.
func (a *Agent) peerURI() libvirt.ConnectURI {
	if a.uri == "" {
		return libvirt.QEMUSystem
	}
	return a.uri
}

// isTLS reports whether a libvirt URI uses TLS (qemu+tls://, xen+tls://,
// or the default transport of a remote URI, which is TLS).
func isTLS(u *url.URL) bool {
	scheme := u.Scheme
	_, transport, found := strings.Cut(scheme, "+")
	return transport == "tls" || !found && u.Host != ""
}

// dialLibvirt connects to a peer's libvirtd at a migration URI: over TLS
// with the node's own certificate for a TLS URI, else plain TCP. go-libvirt
// has a TLS dialer, but it reads the credentials from one flat directory
// and waits for libvirtd's verdict byte without a deadline; this uses the
// certificate in memory and bounds every step.
func (a *Agent) dialLibvirt(uri string) (*libvirt.Libvirt, error) {
	u, err := url.Parse(uri)
	if err != nil || u.Hostname() == "" {
		return nil, fmt.Errorf("migration URI %q has no host", uri)
	}
	if !isTLS(u) {
		port := u.Port()
		if port == "" {
			port = "16509"
		}
		l := libvirt.NewWithDialer(dialers.NewRemote(u.Hostname(), dialers.UsePort(port), dialers.WithRemoteTimeout(5*time.Second)))
		return l, l.ConnectToURI(a.peerURI())
	}
	port := u.Port()
	if port == "" {
		port = "16514"
	}
	ca, err := os.ReadFile(a.cfg.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	cert := a.id.TLSCertificate()
	if cert == nil {
		return nil, errors.New("no node certificate yet")
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second},
		Config: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{*cert}, ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}}
	conn, err := d.Dial("tcp", net.JoinHostPort(u.Hostname(), port))
	if err != nil {
		return nil, err
	}
	// After the handshake libvirtd sends one byte: 1 when it accepted our
	// certificate.
	b := make([]byte, 1)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(conn, b); err != nil || b[0] != 1 {
		conn.Close()
		return nil, fmt.Errorf("libvirtd at %s refused this node's certificate (status %v, %v)", u.Host, b[0], err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	l := libvirt.NewWithDialer(dialers.NewAlreadyConnected(conn))
	if err := l.ConnectToURI(a.peerURI()); err != nil {
		conn.Close()
		return nil, err
	}
	return l, nil
}
