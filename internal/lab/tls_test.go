package lab

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/ca"
	"github.com/fabric-project/fabric/controller/controllerapi"
)

// TestLibvirtTLSMigration: the hardware nodes' libvirtd daemons listen
// only for TLS, with the node certificates the fabric issued; a live
// migration goes over it, and again after the first certificates have
// expired (the agents renewed them and had libvirtd reload them). A client
// whose certificate comes from another CA is refused, and plain TCP is
// closed.
func TestLibvirtTLSMigration(t *testing.T) {
	images := skipUnlessLab(t)
	bin := buildBinaries(t)
	l := upLab(t, Config{Bin: bin, Images: images, LibvirtTLS: true, CertTTL: "20s"})
	up := time.Now()
	if _, err := l.Fabric("image", "import", "tiny", filepath.Join(images, "instance-template.img")); err != nil {
		t.Fatal(err)
	}
	var in controllerapi.Instance
	fabricJSON(t, l, &in, "instance", "create", "web", "--image", "tiny", "--vcpus", "1", "--memory", "128MiB", "--node", "hn1", "--start")
	ip, _, _ := strings.Cut(in.IP, "/")
	if err := waitFor(90*time.Second, func() bool { _, err := In(l.ClientNS, "ping", "-c1", "-W1", ip); return err == nil }); err != nil {
		t.Fatalf("web never answered ping: %v", err)
	}
	hn1, hn2 := l.Hosts[0], l.Hosts[1]

	// From the client namespace: hn1's credentials open hn2's libvirtd
	// over TLS; another CA's do not; TCP is not served.
	if out, err := In(l.ClientNS, "virsh", "-c", "qemu+tls://"+hn2.IP+"/system?pkipath="+flatPKI(t, hn1.pkiDir()), "uri"); err != nil {
		t.Errorf("hn1's certificate against hn2's libvirtd: %v\n%s", err, out)
	}
	foreign := foreignPKI(t, l, hn1.IP)
	if out, err := In(l.ClientNS, "virsh", "-c", "qemu+tls://"+hn2.IP+"/system?pkipath="+foreign, "uri"); err == nil {
		t.Errorf("a certificate from another CA opened hn2's libvirtd:\n%s", out)
	}
	if out, err := In(l.ClientNS, "virsh", "-c", "qemu+tcp://"+hn2.IP+"/system", "uri"); err == nil {
		t.Errorf("hn2's libvirtd still answers plain TCP:\n%s", out)
	}

	migrate := func(to string) {
		t.Helper()
		var r controllerapi.MigrateResult
		fabricJSON(t, l, &r, "instance", "migrate", "web", "--to", to)
		if r.To != to || r.DowntimeMS <= 0 {
			t.Errorf("migration to %s: %+v; want it there with the downtime read over TLS", to, r)
		}
		t.Logf("migrated web to %s over TLS: wall %.0f ms, downtime %.0f ms", to, r.WallMS, r.DowntimeMS)
		if _, err := In(l.ClientNS, "ping", "-c2", "-W1", ip); err != nil {
			t.Errorf("web stopped answering ping after the migration to %s: %v", to, err)
		}
	}
	migrate("hn2")
	b, _ := os.ReadFile(filepath.Join(l.Dir, "agent-hn1.log"))
	if !strings.Contains(string(b), "qemu+tls://"+hn2.IP+"/system") {
		t.Errorf("hn1's agent did not migrate over qemu+tls:\n%s", b)
	}
	// Past the lifetime of every certificate libvirtd started with.
	time.Sleep(time.Until(up.Add(25 * time.Second)))
	migrate("hn1")
	for _, h := range []Host{hn1, hn2} {
		b, _ := os.ReadFile(filepath.Join(l.Dir, "agent-"+h.Name+".log"))
		if strings.Count(string(b), "libvirtd reloaded its TLS certificate") == 0 || strings.Contains(string(b), "reloading libvirtd failed") {
			t.Errorf("%s's agent: no renewal, or libvirtd did not reload:\n%s", h.Name, b)
		}
	}
}

// flatPKI copies a node's libvirt credentials (the /etc/pki layout) into
// the one-directory layout of a client's pkipath.
func flatPKI(t *testing.T, dir string) string {
	t.Helper()
	out := t.TempDir()
	for from, to := range map[string]string{"CA/cacert.pem": "cacert.pem", "libvirt/clientcert.pem": "clientcert.pem", "libvirt/private/clientkey.pem": "clientkey.pem"} {
		b, err := os.ReadFile(filepath.Join(dir, from))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(out, to), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// foreignPKI writes a libvirt pkipath directory that trusts the fabric CA
// (so the client accepts the server) but holds a client certificate from
// another CA, with hn1's names: only the server can refuse it.
func foreignPKI(t *testing.T, l *Lab, ip string) string {
	t.Helper()
	dir := t.TempDir()
	other, err := ca.LoadOrCreate(filepath.Join(dir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "hn1"}}, key)
	der, err := other.SignNode(csr, ca.NodeIdentity{Name: "hn1", ID: "impostor", Role: "hwnode", IPs: []net.IP{net.ParseIP(ip)}}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	fabricCA, err := os.ReadFile(filepath.Join(l.StateDir, "ca", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"cacert.pem":     fabricCA,
		"clientcert.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"clientkey.pem":  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
