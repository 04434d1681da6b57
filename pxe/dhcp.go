package pxe

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
)

// Backend is what the boot services need from the controller: who a MAC
// is, its last lease, and a place to report events. Implementations must be
// safe for concurrent use; registry changes take effect on the next packet.
type Backend interface {
	Host(mac net.HardwareAddr) (Host, bool, error)
	Lease(mac net.HardwareAddr) (Lease, bool, error)
	SaveLease(Lease) error
	Report(Event)
	// BootToken returns a new one-time enrollment token for the boot
	// script of mac fetched from the address from, or why it may not.
	BootToken(mac net.HardwareAddr, from netip.Addr) (string, error)
}

// DHCPStats counts what the DHCP server saw.
type DHCPStats struct {
	Received, Malformed, Replied, Unknown, Dropped, Errors atomic.Uint64
}

// DHCPServer answers DHCPv4 on one PacketConn (port 67).
type DHCPServer struct {
	Conn    net.PacketConn
	Backend Backend
	Network Network
	Logger  *slog.Logger
	Stats   DHCPStats
}

// Serve answers requests until ctx ends or the conn fails (it closes the
// conn when ctx ends). Each packet is parsed once; one that does not parse
// is counted (Stats.Malformed) and dropped; each request is answered on
// its own goroutine, so a slow registry lookup holds up no other client.
func (s *DHCPServer) Serve(ctx context.Context) error {
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	stop := context.AfterFunc(ctx, func() { s.Conn.Close() })
	defer stop()
	for {
		// A buffer per packet: the parsed request keeps slices of it.
		buf := make([]byte, 4096)
		n, _, err := s.Conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		req, err := dhcpv4.FromBytes(buf[:n])
		if err != nil {
			s.Stats.Malformed.Add(1)
			continue
		}
		go s.handle(log, s.Conn, req)
	}
}

func (s *DHCPServer) handle(log *slog.Logger, conn net.PacketConn, req *dhcpv4.DHCPv4) {
	s.Stats.Received.Add(1)
	mac := req.ClientHWAddr
	host, known, err := s.Backend.Host(mac)
	if err != nil {
		s.Stats.Errors.Add(1)
		log.Error("dhcp: registry lookup", "mac", mac.String(), "err", err)
		return
	}
	var lease Lease
	var hasLease bool
	if known {
		if lease, hasLease, err = s.Backend.Lease(mac); err != nil {
			s.Stats.Errors.Add(1)
			log.Error("dhcp: lease lookup", "mac", mac.String(), "err", err)
			return
		}
	}
	d := Decide(req, host, known, lease, hasLease, s.Network)
	if !known {
		s.Stats.Unknown.Add(1)
	}
	if d.Event != nil {
		s.Backend.Report(*d.Event)
	}
	if d.Lease != nil {
		if err := s.Backend.SaveLease(*d.Lease); err != nil {
			s.Stats.Errors.Add(1)
			log.Error("dhcp: saving lease", "mac", mac.String(), "err", err)
			return // an unrecorded lease is not handed out
		}
	}
	if d.Reply == nil {
		s.Stats.Dropped.Add(1)
		log.Debug("dhcp: no reply", "mac", mac.String(), "type", req.MessageType().String(), "known", known)
		return
	}
	dst := ReplyAddr(req, d.Reply)
	if _, err := conn.WriteTo(d.Reply.ToBytes(), dst); err != nil {
		s.Stats.Errors.Add(1)
		log.Warn("dhcp: send reply", "mac", mac.String(), "dst", dst.String(), "err", err)
		return
	}
	s.Stats.Replied.Add(1)
	log.Debug("dhcp: reply", "mac", mac.String(), "type", d.Reply.MessageType().String(), "ip", d.Reply.YourIPAddr.String(), "dst", dst.String())
}

// ListenDHCP opens the DHCP server socket on iface (port 67, broadcast
// allowed, bound to the interface).
func ListenDHCP(iface string, port int) (net.PacketConn, error) {
	if iface == "" {
		return nil, errors.New("pxe: DHCP needs a boot interface")
	}
	return server4.NewIPv4UDPConn(iface, &net.UDPAddr{Port: port})
}
