package pxe

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

var (
	testMAC  = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	testHost = Host{Name: "hn1", Role: "hwnode", MAC: testMAC, IP: netip.MustParseAddr("10.233.0.10"), RootVolume: "e1.0"}
	testNet  = Network{
		ServerIP: netip.MustParseAddr("10.233.0.1"),
		Subnets:  []Subnet{{Prefix: netip.MustParsePrefix("10.233.0.0/24"), Router: netip.MustParseAddr("10.233.0.1")}},
		HTTPURL:  "http://10.233.0.1:8080", Iface: "br0", LeaseTime: time.Hour,
		Now: func() time.Time { return time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC) },
	}
)

func request(t *testing.T, typ dhcpv4.MessageType, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(testMAC), dhcpv4.WithMessageType(typ)}, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// PXE firmware as QEMU's ROM sends it (see ../shared/LAB.md).
func pxeFirmware(arch iana.Arch) dhcpv4.Modifier {
	return func(m *dhcpv4.DHCPv4) {
		m.UpdateOption(dhcpv4.OptClientArch(arch))
		m.UpdateOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001"))
	}
}

func ipxe(m *dhcpv4.DHCPv4) {
	pxeFirmware(iana.INTEL_X86PC)(m)
	m.UpdateOption(dhcpv4.OptUserClass("iPXE"))
	m.UpdateOption(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(175), []byte{18, 1, 1, 19, 1, 1}))
}

func TestDecideBootFiles(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  dhcpv4.Modifier
		want string
		opt  bool // option 175.176 expected
	}{
		{"BIOS firmware", pxeFirmware(iana.INTEL_X86PC), "undionly.kpxe", false},
		{"UEFI x86-64 (7)", pxeFirmware(iana.EFI_X86_64), "ipxe.efi", false},
		{"UEFI BC (9)", pxeFirmware(iana.EFI_BC), "ipxe.efi", false},
		{"iPXE", ipxe, "http://10.233.0.1:8080/boot/52-54-00-12-34-56.ipxe", true},
		{"OS client", func(*dhcpv4.DHCPv4) {}, "", false},
		{"ARM64 UEFI", pxeFirmware(iana.EFI_ARM64), "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Decide(request(t, dhcpv4.MessageTypeDiscover, tc.mod), testHost, true, Lease{}, false, testNet)
			if d.Reply == nil {
				t.Fatal("no offer")
			}
			r := d.Reply
			got := map[string]string{
				"type": r.MessageType().String(), "yiaddr": r.YourIPAddr.String(), "file": r.BootFileName,
				"opt67": r.BootFileNameOption(), "server": r.ServerIdentifier().String(),
				"mask": net.IP(r.SubnetMask()).String(), "lease": r.IPAddressLeaseTime(0).String(),
			}
			want := map[string]string{
				"type": "OFFER", "yiaddr": "10.233.0.10", "file": tc.want, "opt67": tc.want, "server": "10.233.0.1",
				"mask": "255.255.255.0", "lease": "1h0m0s",
			}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("offer (-want +got):\n%s", d)
			}
			if tc.want != "" && !r.ServerIPAddr.Equal(net.IPv4(10, 233, 0, 1)) {
				t.Errorf("next-server %s", r.ServerIPAddr)
			}
			if got := r.Options.Get(dhcpv4.GenericOptionCode(175)); tc.opt != (got != nil) || (got != nil && string(got) != "\xb0\x01\x01") {
				t.Errorf("option 175 = %x; want present=%v with 176=1", got, tc.opt)
			}
			if d.Lease == nil || d.Lease.State != LeaseOffered || d.Lease.IP != testHost.IP {
				t.Errorf("lease %+v", d.Lease)
			}
		})
	}
}

func TestDecideUnknownMAC(t *testing.T) {
	for _, typ := range []dhcpv4.MessageType{dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeInform} {
		d := Decide(request(t, typ, ipxe), Host{}, false, Lease{}, false, testNet)
		if d.Reply != nil || d.Lease != nil {
			t.Errorf("%s from unknown MAC answered: %v", typ, d.Reply)
		}
		if d.Event == nil || d.Event.Kind != EventUnknownMAC || d.Event.Message != "unknown MAC 52:54:00:12:34:56 asked to boot on br0" {
			t.Errorf("%s: event %+v", typ, d.Event)
		}
	}
}

func TestDecideRequest(t *testing.T) {
	ours := dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 233, 0, 1)))
	for _, tc := range []struct {
		name  string
		mods  []dhcpv4.Modifier
		want  string // reply type, "" for none
		state string
	}{
		{"selecting", []dhcpv4.Modifier{ours, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 233, 0, 10)))}, "ACK", LeaseBound},
		{"selecting other server", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 233, 0, 2))), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 233, 0, 10)))}, "", ""},
		{"init-reboot wrong address", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 233, 0, 99)))}, "NAK", ""},
		{"renewing", []dhcpv4.Modifier{dhcpv4.WithClientIP(net.IPv4(10, 233, 0, 10))}, "ACK", LeaseBound},
		{"renewing wrong address", []dhcpv4.Modifier{dhcpv4.WithClientIP(net.IPv4(10, 233, 0, 11))}, "NAK", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Decide(request(t, dhcpv4.MessageTypeRequest, tc.mods...), testHost, true, Lease{}, false, testNet)
			got := ""
			if d.Reply != nil {
				got = d.Reply.MessageType().String()
			}
			if got != tc.want {
				t.Fatalf("reply %q; want %q", got, tc.want)
			}
			st := ""
			if d.Lease != nil {
				st = d.Lease.State
			}
			if st != tc.state {
				t.Errorf("lease state %q; want %q", st, tc.state)
			}
		})
	}
}

func TestDecideDeclineReleaseInform(t *testing.T) {
	decl := request(t, dhcpv4.MessageTypeDecline, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 233, 0, 10))))
	d := Decide(decl, testHost, true, Lease{}, false, testNet)
	if d.Reply != nil || d.Lease == nil || d.Lease.State != LeaseDeclined || d.Event == nil || d.Event.Kind != EventConflict {
		t.Fatalf("decline: %+v", d)
	}
	// While declined, the address is withheld; after the hold it is offered again.
	held := *d.Lease
	if d := Decide(request(t, dhcpv4.MessageTypeDiscover, ipxe), testHost, true, held, true, testNet); d.Reply != nil {
		t.Error("offered a declined address during the hold")
	}
	later := testNet
	later.Now = func() time.Time { return testNet.Now().Add(6 * time.Minute) }
	if d := Decide(request(t, dhcpv4.MessageTypeDiscover, ipxe), testHost, true, held, true, later); d.Reply == nil {
		t.Error("declined address still withheld after the hold")
	}
	rel := request(t, dhcpv4.MessageTypeRelease, dhcpv4.WithClientIP(net.IPv4(10, 233, 0, 10)))
	if d := Decide(rel, testHost, true, Lease{}, false, testNet); d.Reply != nil || d.Lease == nil || d.Lease.State != LeaseReleased {
		t.Errorf("release: %+v", d)
	}
	inf := request(t, dhcpv4.MessageTypeInform, dhcpv4.WithClientIP(net.IPv4(10, 233, 0, 10)))
	d = Decide(inf, testHost, true, Lease{}, false, testNet)
	if d.Reply == nil || d.Reply.MessageType() != dhcpv4.MessageTypeAck || !d.Reply.YourIPAddr.IsUnspecified() || d.Reply.Options.Has(dhcpv4.OptionIPAddressLeaseTime) || d.Lease != nil {
		t.Errorf("inform: %v", d.Reply)
	}
	if a := ReplyAddr(inf, d.Reply); a.String() != "10.233.0.10:68" {
		t.Errorf("inform reply to %s; want the client's address", a)
	}
}

func TestDecideRelay(t *testing.T) {
	relayed := request(t, dhcpv4.MessageTypeDiscover, dhcpv4.WithGatewayIP(net.IPv4(10, 233, 0, 254)))
	d := Decide(relayed, testHost, true, Lease{}, false, testNet)
	if d.Reply == nil {
		t.Fatal("relayed discover not answered")
	}
	if a := ReplyAddr(relayed, d.Reply); a.String() != "10.233.0.254:67" {
		t.Errorf("relayed reply to %s; want the relay 10.233.0.254:67", a)
	}
	if !d.Reply.GatewayIPAddr.Equal(net.IPv4(10, 233, 0, 254)) {
		t.Errorf("giaddr not copied: %s", d.Reply.GatewayIPAddr)
	}
	foreign := request(t, dhcpv4.MessageTypeDiscover, dhcpv4.WithGatewayIP(net.IPv4(192, 0, 2, 1)))
	if d := Decide(foreign, testHost, true, Lease{}, false, testNet); d.Reply != nil || d.Event == nil || d.Event.Kind != EventRelay {
		t.Errorf("relay on a foreign subnet: %+v", d)
	}
	if a := ReplyAddr(request(t, dhcpv4.MessageTypeDiscover), d.Reply); a.String() != "255.255.255.255:68" {
		t.Errorf("direct reply to %s; want broadcast", a)
	}
}

func TestDecideIgnoresNonRequests(t *testing.T) {
	m := request(t, dhcpv4.MessageTypeDiscover)
	m.OpCode = dhcpv4.OpcodeBootReply
	if d := Decide(m, testHost, true, Lease{}, false, testNet); d.Reply != nil || d.Event != nil {
		t.Errorf("a BOOTREPLY was answered: %+v", d)
	}
	m = request(t, dhcpv4.MessageTypeDiscover)
	m.ClientHWAddr = net.HardwareAddr{1, 2, 3}
	if d := Decide(m, testHost, true, Lease{}, false, testNet); d.Reply != nil {
		t.Errorf("a 3-byte hardware address was answered")
	}
}

// FuzzDecide feeds arbitrary bytes through the parser and the policy: no
// panic, and every reply is itself a well-formed packet for the same client.
func FuzzDecide(f *testing.F) {
	for _, typ := range []dhcpv4.MessageType{dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeDecline} {
		m, _ := dhcpv4.New(dhcpv4.WithHwAddr(testMAC), dhcpv4.WithMessageType(typ), ipxe)
		f.Add(m.ToBytes())
	}
	f.Add([]byte{1, 1, 6, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := dhcpv4.FromBytes(b)
		if err != nil {
			return
		}
		d := Decide(req, testHost, true, Lease{}, false, testNet)
		if d.Reply == nil {
			return
		}
		back, err := dhcpv4.FromBytes(d.Reply.ToBytes())
		if err != nil {
			t.Fatalf("reply does not parse: %v", err)
		}
		if back.TransactionID != req.TransactionID || back.ClientHWAddr.String() != req.ClientHWAddr.String() || back.OpCode != dhcpv4.OpcodeBootReply {
			t.Fatalf("reply %v does not answer %v", back, req)
		}
		_ = ReplyAddr(req, d.Reply)
	})
}

// TestReplyToMatchesLibrary: replyTo builds the same reply as the
// library's NewReplyFromRequest, for a direct and a relayed request with a
// client identifier and relay agent information.
func TestReplyToMatchesLibrary(t *testing.T) {
	relayed := func(m *dhcpv4.DHCPv4) {
		m.GatewayIPAddr = net.IPv4(10, 233, 5, 1)
		m.Flags = 0x8000
		m.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionRelayAgentInformation, []byte{1, 3, 'e', 't', '0'}))
		m.UpdateOption(dhcpv4.OptClientIdentifier([]byte{1, 0x52, 0x54, 0, 0x12, 0x34, 0x56}))
	}
	for name, req := range map[string]*dhcpv4.DHCPv4{
		"direct":  request(t, dhcpv4.MessageTypeDiscover, pxeFirmware(iana.INTEL_X86PC)),
		"relayed": request(t, dhcpv4.MessageTypeRequest, relayed),
	} {
		want, err := dhcpv4.NewReplyFromRequest(req)
		if err != nil {
			t.Fatal(err)
		}
		got := replyTo(req)
		if got.TransactionID != req.TransactionID {
			t.Errorf("%s: transaction ID %v, want the request's %v", name, got.TransactionID, req.TransactionID)
		}
		if diff := cmp.Diff(want.ToBytes(), got.ToBytes()); diff != "" {
			t.Errorf("%s: reply differs from NewReplyFromRequest's (-want +got):\n%s", name, diff)
		}
	}
}
