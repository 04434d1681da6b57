package controller

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/pin/tftp/v3"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/internal/netns"
	"github.com/fabric-project/fabric/pxe"
)

// bootLab is a config node namespace (boot0 = 10.233.0.1/24) joined by a
// veth to a client namespace (eth0), with the controller's boot services
// listening in the config node namespace.
type bootLab struct {
	srv, cli *netns.NS
	c        *Controller
	svc      *pxe.Services
	bootDir  string
}

func newBootLab(t *testing.T, opts ...func(*Config)) *bootLab {
	t.Helper()
	netns.Skip(t)
	l := &bootLab{srv: netns.New(t, "fsrv"), cli: netns.New(t, "fcli"), bootDir: t.TempDir()}
	netns.Veth(t, l.srv, "boot0", "10.233.0.1/24", l.cli, "eth0", "")
	for name, body := range map[string]string{"undionly.kpxe": strings.Repeat("iPXE BIOS ", 30000), "vmlinuz": "kernel", "initrd.img": "initrd"} {
		if err := os.WriteFile(filepath.Join(l.bootDir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/etc/hostname", filepath.Join(l.bootDir, "escape")); err != nil {
		t.Fatal(err)
	}
	cfg := Config{StateDir: t.TempDir(), BootSubnet: netip.MustParsePrefix("10.233.0.0/24"), ServerIP: netip.MustParseAddr("10.233.0.1"),
		Boot: pxe.Config{Iface: "boot0", BootDir: l.bootDir, RA: true, TFTPSinglePort: true, // in-process: one thread in the namespace
			Profiles: map[string]pxe.Profile{"hwnode": {Kernel: "vmlinuz", Initrd: "initrd.img"}}}}
	for _, o := range opts {
		o(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l.c = c
	if err := l.srv.Do(func() (err error) {
		l.svc, err = pxe.Listen(c.BootConfig("https://10.233.0.1:8443"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.svc.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("boot services: %v", err)
		}
		if err := c.reg.CheckInvariants(); err != nil {
			t.Errorf("store invariants: %v", err)
		}
		c.Close()
	})
	return l
}

// dhcpClient is a real DHCP client (nclient4, raw socket) in the client
// namespace.
func (l *bootLab) dhcpClient(t *testing.T, mac net.HardwareAddr) *nclient4.Client {
	t.Helper()
	var cl *nclient4.Client
	if err := l.cli.Do(func() (err error) {
		cl, err = nclient4.New("eth0", nclient4.WithHWAddr(mac), nclient4.WithTimeout(time.Second), nclient4.WithRetry(2))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func pxeBIOS(m *dhcpv4.DHCPv4) {
	m.UpdateOption(dhcpv4.OptClientArch(iana.INTEL_X86PC))
	m.UpdateOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001"))
}

func TestBootServicesFollowRegistry(t *testing.T) {
	l := newBootLab(t)
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	cl := l.dhcpClient(t, mac)
	ctx := context.Background()

	// Before registration: no offer, and the controller records why.
	if offer, err := cl.DiscoverOffer(ctx, pxeBIOS); err == nil {
		t.Fatalf("unknown MAC got an offer: %v", offer)
	}
	evs, _ := l.c.reg.Events(0, 100)
	if len(evs) != 1 || evs[0].Type != controllerapi.EventUnknownMAC || !strings.Contains(evs[0].Message, "unknown MAC 52:54:00:12:34:56 asked to boot on boot0") {
		t.Errorf("events after an unknown MAC's discover: %+v", evs)
	}

	// Register, no restart: the next DISCOVER is answered.
	if _, err := l.c.reg.Register(controllerapi.RegisterRequest{Name: "hn1", MAC: mac.String(), Role: "hwnode"}); err != nil {
		t.Fatal(err)
	}
	udpOut := func() int {
		t.Helper()
		var n int
		if err := l.srv.Do(func() error {
			b, err := os.ReadFile("/proc/thread-self/net/snmp")
			if err != nil {
				return err
			}
			var head []string
			for _, line := range strings.Split(string(b), "\n") {
				f := strings.Fields(line)
				if len(f) == 0 || f[0] != "Udp:" {
					continue
				}
				if head == nil {
					head = f
					continue
				}
				for i := range head {
					if head[i] == "OutDatagrams" {
						n, err = strconv.Atoi(f[i])
						return err
					}
				}
			}
			return errors.New("no Udp OutDatagrams in /proc/net/snmp")
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	out0 := udpOut()
	offer, err := cl.DiscoverOffer(ctx, pxeBIOS)
	if err != nil {
		t.Fatalf("registered MAC got no offer: %v", err)
	}
	// The offer, broadcast, left by the packet socket (ListenDHCPBroadcast),
	// not the UDP socket.
	if out := udpOut() - out0; out != 0 {
		t.Errorf("the broadcast offer left by the UDP socket (%d datagrams sent); want the packet socket", out)
	}
	if offer.YourIPAddr.String() != "10.233.0.10" || offer.BootFileName != "undionly.kpxe" || !offer.ServerIPAddr.Equal(net.IPv4(10, 233, 0, 1)) {
		t.Errorf("offer: yiaddr %s file %q next-server %s", offer.YourIPAddr, offer.BootFileName, offer.ServerIPAddr)
	}
	lease, err := cl.RequestFromOffer(ctx, offer, pxeBIOS)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	if lease.ACK.YourIPAddr.String() != "10.233.0.10" {
		t.Errorf("ACK for %s", lease.ACK.YourIPAddr)
	}
	n, err := l.c.reg.Node("hn1")
	if err != nil || n.Lease == nil || n.Lease.State != pxe.LeaseBound {
		t.Errorf("node after ACK: %+v, %v; want a bound lease", n.Lease, err)
	}

	// The same exchange again renews the bound lease: answered before the
	// write (Backend.Renew), which the node's view shows at once.
	time.Sleep(10 * time.Millisecond)
	offer2, err := cl.DiscoverOffer(ctx, pxeBIOS)
	if err != nil {
		t.Fatal(err)
	}
	lease2, err := cl.RequestFromOffer(ctx, offer2, pxeBIOS)
	if err != nil || lease2.ACK.YourIPAddr.String() != "10.233.0.10" {
		t.Fatalf("renewal: %v %v", lease2, err)
	}
	l.c.reg.leaseMu.Lock()
	_, queued := l.c.reg.pending[mac.String()]
	l.c.reg.leaseMu.Unlock()
	if !queued {
		t.Errorf("the renewal's lease is not waiting for the lease writer after its ACK: it was written first (write-behind %v)", leaseWriteBehind)
	}
	n2, err := l.c.reg.Node("hn1")
	if err != nil || n2.Lease == nil || n2.Lease.State != pxe.LeaseBound || !n2.Lease.Updated.After(n.Lease.Updated) {
		t.Errorf("node after the renewal's ACK: %+v, %v; want a bound lease updated after %v", n2.Lease, err, n.Lease.Updated)
	}

	// iPXE asks again and is sent to its HTTP script.
	ipxeOffer, err := cl.DiscoverOffer(ctx, pxeBIOS, dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")))
	if err != nil {
		t.Fatal(err)
	}
	url := ipxeOffer.BootFileName
	if url != "http://10.233.0.1:8080/boot/52-54-00-12-34-56.ipxe" {
		t.Fatalf("iPXE boot file %q", url)
	}
	if got := ipxeOffer.Options.Get(dhcpv4.GenericOptionCode(175)); !bytes.Equal(got, []byte{176, 1, 1}) {
		t.Errorf("option 175 = %x; want b00101", got)
	}
	script := l.httpGet(t, url)
	for _, want := range []string{"#!ipxe", "kernel http://10.233.0.1:8080/files/vmlinuz", "fabric.root=e1.0", "fabric.controller=https://10.233.0.1:8443", "fabric.token=", "initrd --name initrd.img http://10.233.0.1:8080/files/initrd.img", "boot"} {
		if !strings.Contains(script, want) {
			t.Errorf("script lacks %q:\n%s", want, script)
		}
	}
	if got := l.httpGet(t, "http://10.233.0.1:8080/boot/52-54-00-99-99-99.ipxe"); !strings.Contains(got, "is not registered") || !strings.Contains(got, "chain --replace") {
		t.Errorf("unknown MAC's script:\n%s", got)
	}

	// Removal takes effect at once too.
	if _, err := l.c.reg.Remove("hn1"); err != nil {
		t.Fatal(err)
	}
	if offer, err := cl.DiscoverOffer(ctx, pxeBIOS); err == nil {
		t.Errorf("removed MAC still gets offers: %v", offer)
	}
}

// httpGet fetches url from inside the config node namespace.
func (l *bootLab) httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := nsHTTPClient(l.srv, "").Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// nsHTTPClient is an HTTP client whose connections start in ns, from the
// source address src ("" for any).
func nsHTTPClient(ns *netns.NS, src string) *http.Client {
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = ns.Do(func() (err error) {
			var d net.Dialer
			if src != "" {
				d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
			}
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}}
}

func TestBootServicesRelayAndMalformed(t *testing.T) {
	l := newBootLab(t)
	l.cli.Must(t, "ip", "addr", "add", "10.233.0.254/24", "dev", "eth0")
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0x00, 0x00, 0x07}
	if _, err := l.c.reg.Register(controllerapi.RegisterRequest{Name: "hn7", MAC: mac.String(), Role: "hwnode", IP: "10.233.0.77"}); err != nil {
		t.Fatal(err)
	}
	var conn net.PacketConn
	if err := l.cli.Do(func() (err error) {
		// A relay agent listens on the server port at its giaddr.
		conn, err = net.ListenPacket("udp4", "10.233.0.254:67")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	srv := &net.UDPAddr{IP: net.IPv4(10, 233, 0, 1), Port: 67}
	// Garbage first: it must be counted and dropped, and the server must
	// keep answering.
	for _, junk := range [][]byte{{}, {1}, bytes.Repeat([]byte{0xff}, 300), append(make([]byte, 236), 99, 130, 83, 99, 53, 200)} {
		if _, err := conn.WriteTo(junk, srv); err != nil {
			t.Fatal(err)
		}
	}
	req, _ := dhcpv4.NewDiscovery(mac, dhcpv4.WithGatewayIP(net.IPv4(10, 233, 0, 254)))
	req.HopCount = 1
	if _, err := conn.WriteTo(req.ToBytes(), srv); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, from, err := conn.ReadFrom(buf)
	if err != nil {
		t.Fatalf("relay got no answer: %v", err)
	}
	resp, err := dhcpv4.FromBytes(buf[:n])
	if err != nil {
		t.Fatal(err)
	}
	if resp.MessageType() != dhcpv4.MessageTypeOffer || resp.YourIPAddr.String() != "10.233.0.77" || resp.TransactionID != req.TransactionID {
		t.Errorf("relay answer from %s: %v", from, resp)
	}
	if m := l.svc.DHCP.Stats.Malformed.Load(); m < 3 {
		t.Errorf("malformed packets counted: %d; want at least 3", m)
	}
}

func TestTFTPServesBootDirOnly(t *testing.T) {
	l := newBootLab(t)
	l.cli.Must(t, "ip", "addr", "add", "10.233.0.50/24", "dev", "eth0")
	get := func(name string, blksize int) ([]byte, int64, error) {
		var buf bytes.Buffer
		var size int64
		err := l.cli.Do(func() error {
			c, err := tftp.NewClient("10.233.0.1:69")
			if err != nil {
				return err
			}
			c.SetTimeout(time.Second)
			c.SetRetries(2)
			if blksize > 0 {
				c.SetBlockSize(blksize)
			}
			c.RequestTSize(true)
			wt, err := c.Receive(name, "octet")
			if err != nil {
				return err
			}
			size, _ = wt.(tftp.IncomingTransfer).Size()
			_, err = wt.WriteTo(&buf)
			return err
		})
		return buf.Bytes(), size, err
	}
	want, _ := os.ReadFile(filepath.Join(l.bootDir, "undionly.kpxe"))
	for _, bs := range []int{0, 1468} {
		got, size, err := get("undionly.kpxe", bs)
		if err != nil || !bytes.Equal(got, want) || size != int64(len(want)) {
			t.Errorf("blksize %d: %d bytes (tsize %d), %v; want %d bytes", bs, len(got), size, err, len(want))
		}
	}
	for _, name := range []string{"../etc/passwd", "/etc/passwd", "escape", "a/../../etc/passwd", "missing"} {
		if got, _, err := get(name, 0); err == nil {
			t.Errorf("TFTP served %q (%d bytes)", name, len(got))
		}
	}
	err := l.cli.Do(func() error {
		c, err := tftp.NewClient("10.233.0.1:69")
		if err != nil {
			return err
		}
		c.SetTimeout(time.Second)
		rf, err := c.Send("upload", "octet")
		if err != nil {
			return err
		}
		_, err = rf.ReadFrom(strings.NewReader("x"))
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "does not support write") {
		t.Errorf("TFTP write: %v; want refused", err)
	}
	if _, err := os.Stat(filepath.Join(l.bootDir, "upload")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("write request created a file: %v", err)
	}
}
