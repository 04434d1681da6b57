package pxe

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// Host is what the registry knows of a machine allowed to boot.
type Host struct {
	Name       string
	Role       string
	MAC        net.HardwareAddr
	IP         netip.Addr
	RootVolume string // AoE address of the root volume, "e<shelf>.<slot>"
}

// Lease states.
const (
	LeaseOffered  = "offered"
	LeaseBound    = "bound"
	LeaseReleased = "released"
	LeaseDeclined = "declined"
)

// Lease is the DHCP server's record of one client's address.
type Lease struct {
	MAC     string     `json:"mac"`
	IP      netip.Addr `json:"ip"`
	State   string     `json:"state"`
	Expires time.Time  `json:"expires"`
	Updated time.Time  `json:"updated"`
	// Boot is set when the exchange was a network boot's (PXE firmware
	// or iPXE), not an operating system renewing its address: only those
	// open a boot window for the enrollment token.
	Boot bool `json:"boot,omitempty"`
}

// Subnet is a network the DHCP server hands addresses in.
type Subnet struct {
	Prefix netip.Prefix
	Router netip.Addr // optional
}

// Network is the DHCP server's fixed configuration.
type Network struct {
	ServerIP  netip.Addr   // our address: server identifier, next-server
	Subnets   []Subnet     // the boot subnet first, then subnets reached through relays
	DNS       []netip.Addr // optional
	LeaseTime time.Duration
	HTTPURL   string // base URL of the HTTP boot service, e.g. http://10.233.0.1:8080
	Iface     string // for messages
	Now       func() time.Time
	// DeclineHold is how long an address a client declined (someone else
	// answers ARP for it) is withheld from that client.
	DeclineHold time.Duration
}

// Event kinds reported by the boot services.
const (
	EventUnknownMAC = "unknown_mac"
	EventBooting    = "booting"
	EventConflict   = "address_conflict"
	EventScript     = "boot_script"
	EventRelay      = "relay_mismatch"
)

// Event is something the controller should record.
type Event struct {
	Kind    string
	MAC     net.HardwareAddr
	Host    string
	Message string
}

// Decision is what the DHCP policy decided for one request.
type Decision struct {
	Reply *dhcpv4.DHCPv4 // nil: send nothing
	Lease *Lease         // non-nil: save this lease
	Event *Event         // non-nil: report this
}

// Boot program file names served over TFTP, from Debian's ipxe package.
const (
	BIOSBootFile = "undionly.kpxe"
	EFIBootFile  = "ipxe.efi"
)

// Option 175 is iPXE's encapsulated option space; sub-option 176 set to 1
// ("no ProxyDHCP") spares iPXE its wait for a ProxyDHCP offer.
var optIPXE = dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(175), []byte{176, 1, 1})

// IsIPXE reports whether the request comes from iPXE (user class "iPXE").
func IsIPXE(req *dhcpv4.DHCPv4) bool {
	return slices.Contains(req.UserClass(), "iPXE")
}

// BootFile chooses the boot program for a request: an http:// URL to the
// per-MAC script for iPXE, the iPXE binary matching the firmware's
// architecture (option 93) for PXE firmware, and "" for everything else (an
// operating system's own DHCP client, or an architecture we cannot boot).
func BootFile(req *dhcpv4.DHCPv4, httpURL string) string {
	if IsIPXE(req) {
		return fmt.Sprintf("%s/boot/%s.ipxe", strings.TrimRight(httpURL, "/"), strings.ReplaceAll(req.ClientHWAddr.String(), ":", "-"))
	}
	archs := req.ClientArch()
	if len(archs) == 0 {
		if strings.HasPrefix(req.ClassIdentifier(), "PXEClient") {
			return BIOSBootFile
		}
		return ""
	}
	switch archs[0] {
	case iana.INTEL_X86PC:
		return BIOSBootFile
	case iana.EFI_X86_64, iana.EFI_BC:
		return EFIBootFile
	}
	return ""
}

func (n *Network) subnetOf(a netip.Addr) (Subnet, bool) {
	for _, s := range n.Subnets {
		if s.Prefix.Contains(a) {
			return s, true
		}
	}
	return Subnet{}, false
}

func addr4(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip.To4())
	if !ok {
		return netip.Addr{}
	}
	return a
}

// Decide is the DHCP reply policy: a pure function of the request, what the
// registry knows of its MAC, the client's last lease and the configuration.
// Only registered MACs are answered, each with its reserved address.
func Decide(req *dhcpv4.DHCPv4, host Host, known bool, lease Lease, hasLease bool, n Network) Decision {
	if req.OpCode != dhcpv4.OpcodeBootRequest || req.HWType != iana.HWTypeEthernet || len(req.ClientHWAddr) != 6 {
		return Decision{}
	}
	mt := req.MessageType()
	mac := req.ClientHWAddr
	if !known {
		switch mt {
		case dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeInform:
			return Decision{Event: &Event{Kind: EventUnknownMAC, MAC: mac,
				Message: fmt.Sprintf("unknown MAC %s asked to boot on %s", mac, n.Iface)}}
		}
		return Decision{}
	}
	now := time.Now
	if n.Now != nil {
		now = n.Now
	}
	t := now()
	sub, ok := n.subnetOf(host.IP)
	if !ok {
		return Decision{Event: &Event{Kind: EventRelay, MAC: mac, Host: host.Name,
			Message: fmt.Sprintf("%s (%s) has address %s, outside every subnet this server serves", host.Name, mac, host.IP)}}
	}
	if gi := addr4(req.GatewayIPAddr); gi.IsValid() && !gi.IsUnspecified() && !sub.Prefix.Contains(gi) {
		return Decision{Event: &Event{Kind: EventRelay, MAC: mac, Host: host.Name,
			Message: fmt.Sprintf("%s (%s) asked through relay %s, which is not on its subnet %s", host.Name, mac, gi, sub.Prefix)}}
	}
	lt := n.LeaseTime
	if lt <= 0 {
		lt = time.Hour
	}
	newLease := func(state string) *Lease {
		return &Lease{MAC: mac.String(), IP: host.IP, State: state, Expires: t.Add(lt), Updated: t, Boot: BootFile(req, n.HTTPURL) != ""}
	}
	ack := func(typ dhcpv4.MessageType, withAddr bool) *dhcpv4.DHCPv4 {
		resp := replyTo(req)
		resp.UpdateOption(dhcpv4.OptMessageType(typ))
		resp.UpdateOption(dhcpv4.OptServerIdentifier(n.ServerIP.AsSlice()))
		if withAddr {
			resp.YourIPAddr = host.IP.AsSlice()
			resp.UpdateOption(dhcpv4.OptIPAddressLeaseTime(lt))
		}
		resp.UpdateOption(dhcpv4.OptSubnetMask(net.CIDRMask(sub.Prefix.Bits(), 32)))
		if sub.Router.IsValid() {
			resp.UpdateOption(dhcpv4.OptRouter(sub.Router.AsSlice()))
		}
		if len(n.DNS) > 0 {
			var ips []net.IP
			for _, d := range n.DNS {
				ips = append(ips, d.AsSlice())
			}
			resp.UpdateOption(dhcpv4.OptDNS(ips...))
		}
		if host.Name != "" {
			resp.UpdateOption(dhcpv4.OptHostName(host.Name))
		}
		if bf := BootFile(req, n.HTTPURL); bf != "" {
			resp.ServerIPAddr = n.ServerIP.AsSlice()
			resp.BootFileName = bf
			resp.UpdateOption(dhcpv4.OptBootFileName(bf))
			resp.UpdateOption(dhcpv4.OptTFTPServerName(n.ServerIP.String()))
		}
		if IsIPXE(req) || req.Options.Has(dhcpv4.GenericOptionCode(175)) {
			resp.UpdateOption(optIPXE)
		}
		return resp
	}
	nak := func(why string) Decision {
		resp := replyTo(req)
		resp.UpdateOption(dhcpv4.OptMessageType(dhcpv4.MessageTypeNak))
		resp.UpdateOption(dhcpv4.OptServerIdentifier(n.ServerIP.AsSlice()))
		resp.UpdateOption(dhcpv4.OptMessage(why))
		return Decision{Reply: resp}
	}
	declined := hasLease && lease.State == LeaseDeclined && lease.IP == host.IP && t.Sub(lease.Updated) < n.declineHold()

	switch mt {
	case dhcpv4.MessageTypeDiscover:
		if declined {
			return Decision{}
		}
		d := Decision{Reply: ack(dhcpv4.MessageTypeOffer, true), Lease: newLease(LeaseOffered)}
		if bf := BootFile(req, n.HTTPURL); bf != "" {
			d.Event = &Event{Kind: EventBooting, MAC: mac, Host: host.Name,
				Message: fmt.Sprintf("%s (%s) is booting: offered %s, boot program %s", host.Name, mac, host.IP, bf)}
		}
		return d
	case dhcpv4.MessageTypeRequest:
		if sid := addr4(req.ServerIdentifier()); sid.IsValid() && sid != n.ServerIP {
			return Decision{} // the client chose another server's offer
		}
		want := addr4(req.RequestedIPAddress())
		if !want.IsValid() || want.IsUnspecified() {
			want = addr4(req.ClientIPAddr)
		}
		if want != host.IP {
			return nak(fmt.Sprintf("%s is not reserved for %s; its address is %s", want, mac, host.IP))
		}
		if declined {
			return Decision{}
		}
		return Decision{Reply: ack(dhcpv4.MessageTypeAck, true), Lease: newLease(LeaseBound)}
	case dhcpv4.MessageTypeInform:
		return Decision{Reply: ack(dhcpv4.MessageTypeAck, false)}
	case dhcpv4.MessageTypeDecline:
		if addr4(req.RequestedIPAddress()) != host.IP {
			return Decision{}
		}
		l := newLease(LeaseDeclined)
		l.Expires = t
		return Decision{Lease: l, Event: &Event{Kind: EventConflict, MAC: mac, Host: host.Name,
			Message: fmt.Sprintf("%s (%s) declined %s: another machine answers for that address; withheld for %s (change it with `fabric node update %s --ip ...`)",
				host.Name, mac, host.IP, n.declineHold(), host.Name)}}
	case dhcpv4.MessageTypeRelease:
		if addr4(req.ClientIPAddr) != host.IP {
			return Decision{}
		}
		l := newLease(LeaseReleased)
		l.Expires = t
		return Decision{Lease: l}
	}
	return Decision{}
}

func (n *Network) declineHold() time.Duration {
	if n.DeclineHold > 0 {
		return n.DeclineHold
	}
	return 5 * time.Minute
}

// replyTo is dhcpv4.NewReplyFromRequest(req) without its random
// transaction ID, which the request's replaces: reading crypto/rand for
// every reply was 5% of the server's time at 8000 exchanges/s.
func replyTo(req *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	op := dhcpv4.OpcodeBootReply
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		op = dhcpv4.OpcodeBootRequest
	}
	d := &dhcpv4.DHCPv4{
		OpCode:        op,
		HWType:        req.HWType,
		ClientHWAddr:  req.ClientHWAddr,
		TransactionID: req.TransactionID,
		Flags:         req.Flags,
		ClientIPAddr:  net.IPv4zero,
		YourIPAddr:    net.IPv4zero,
		ServerIPAddr:  net.IPv4zero,
		GatewayIPAddr: req.GatewayIPAddr,
		Options:       make(dhcpv4.Options),
	}
	// Copied as RFC 3046 (relay agent information) and RFC 6842 (client
	// identifier) ask.
	for _, o := range []dhcpv4.OptionCode{dhcpv4.OptionRelayAgentInformation, dhcpv4.OptionClientIdentifier} {
		if v := req.Options.Get(o); v != nil {
			d.UpdateOption(dhcpv4.OptGeneric(o, v))
		}
	}
	return d
}

// ReplyAddr is where a reply goes (RFC 2131, section 4.1): to the relay
// agent if there is one, to the client's address if it has one and is not
// being refused, else broadcast.
func ReplyAddr(req, resp *dhcpv4.DHCPv4) *net.UDPAddr {
	if gi := addr4(req.GatewayIPAddr); gi.IsValid() && !gi.IsUnspecified() {
		return &net.UDPAddr{IP: gi.AsSlice(), Port: dhcpv4.ServerPort}
	}
	if ci := addr4(req.ClientIPAddr); ci.IsValid() && !ci.IsUnspecified() && resp.MessageType() != dhcpv4.MessageTypeNak {
		return &net.UDPAddr{IP: ci.AsSlice(), Port: dhcpv4.ClientPort}
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}
}
