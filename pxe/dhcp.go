package pxe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Backend is what the boot services need from the controller: who a MAC
// is, its last lease, and a place to report events. Implementations must be
// safe for concurrent use; registry changes take effect on the next packet.
type Backend interface {
	Host(mac net.HardwareAddr) (Host, bool, error)
	Lease(mac net.HardwareAddr) (Lease, bool, error)
	SaveLease(Lease) error
	// Renew takes a bound lease without waiting for it to be stored if it
	// renews the lease the MAC holds (bound, same address); false: it
	// does not, and SaveLease must store it.
	Renew(Lease) bool
	Report(Event)
	// BootToken returns a new one-time enrollment token for the boot
	// script of mac fetched from the address from, or why it may not.
	BootToken(mac net.HardwareAddr, from netip.Addr) (string, error)
	// BootScript is told that mac's machine fetches its boot script (it
	// is booting); a non-empty answer is why it must wait: its script
	// says so and asks again in 5 seconds.
	BootScript(mac net.HardwareAddr) (hold string)
}

// DHCPStats counts what the DHCP server saw. Overflow counts requests
// dropped unread because every worker was busy and the queue full.
type DHCPStats struct {
	Received, Malformed, Replied, Unknown, Dropped, Errors, Overflow atomic.Uint64
}

// DHCPServer answers DHCPv4 on one PacketConn (port 67).
type DHCPServer struct {
	Conn net.PacketConn
	// Broadcast, if set, sends the replies addressed to 255.255.255.255
	// (ListenDHCPBroadcast); the rest leave by Conn.
	Broadcast net.PacketConn
	Backend   Backend
	Network   Network
	Logger    *slog.Logger
	Stats     DHCPStats
}

// DHCPWorkers answer the requests whose answer waits on the store: a
// REQUEST that binds an address anew, a DECLINE or a RELEASE changes a
// lease, which is on disk before the answer, and a decision with an event
// records it. Each waits for the store's group commit, so enough of them
// keep the commits full. Everything else (a DISCOVER: offers live in
// memory; a REQUEST that renews the bound lease, Backend.Renew) is
// answered by the goroutine that reads the socket, with no hand-over to
// another goroutine (the scheduler's part of a hand-over was about 10% of
// the server's profile at 8000 exchanges/s; an A/B showed the same CPU
// and fewer lost offers, docs/benchmarks.md). Long-lived workers keep
// their grown stacks, and a flood fills the queue, not memory: a request
// that finds it full is dropped (Stats.Overflow), and its client asks
// again.
const (
	DHCPWorkers = 256
	DHCPQueue   = 4096
)

// job is a decided request whose answer waits on the store.
type job struct {
	req *dhcpv4.DHCPv4
	d   Decision
}

// Serve answers requests until ctx ends or the conn fails (it closes the
// conn when ctx ends). Each packet is parsed once; one that does not parse
// is counted (Stats.Malformed) and dropped.
func (s *DHCPServer) Serve(ctx context.Context) error {
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	stop := context.AfterFunc(ctx, func() {
		s.Conn.Close()
		if s.Broadcast != nil {
			s.Broadcast.Close()
		}
	})
	defer stop()
	// A socket buffer for bursts: the kernel's default (208 KiB) holds
	// about 600 requests, 75 ms at 8000/s. Raised as far as the system
	// allows; nothing fails if it allows less.
	if rb, ok := s.Conn.(interface{ SetReadBuffer(int) error }); ok {
		_ = rb.SetReadBuffer(4 << 20)
	}
	jobs := make(chan job, DHCPQueue)
	var wg sync.WaitGroup
	for range DHCPWorkers {
		wg.Go(func() {
			for j := range jobs {
				s.finish(log, j.req, j.d)
			}
		})
	}
	defer func() {
		close(jobs)
		wg.Wait()
	}()
	// One buffer for every packet: dhcpv4.FromBytes copies what it keeps
	// (addresses, options), so the request outlives it.
	buf := make([]byte, 4096)
	for {
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
		d, ok := s.decide(log, req)
		if !ok {
			continue
		}
		if d.Event == nil {
			switch {
			case d.Lease == nil || d.Lease.State == LeaseOffered:
				s.finish(log, req, d)
				continue
			case d.Lease.State == LeaseBound && s.Backend.Renew(*d.Lease):
				s.send(log, req, d)
				continue
			}
		}
		select {
		case jobs <- job{req, d}:
		default:
			s.Stats.Overflow.Add(1)
		}
	}
}

// decide looks the client up and decides the answer; false: the lookup
// failed (counted and logged).
func (s *DHCPServer) decide(log *slog.Logger, req *dhcpv4.DHCPv4) (Decision, bool) {
	s.Stats.Received.Add(1)
	mac := req.ClientHWAddr
	host, known, err := s.Backend.Host(mac)
	if err != nil {
		s.Stats.Errors.Add(1)
		log.Error("dhcp: registry lookup", "mac", mac.String(), "err", err)
		return Decision{}, false
	}
	var lease Lease
	var hasLease bool
	if known {
		if lease, hasLease, err = s.Backend.Lease(mac); err != nil {
			s.Stats.Errors.Add(1)
			log.Error("dhcp: lease lookup", "mac", mac.String(), "err", err)
			return Decision{}, false
		}
	}
	if !known {
		s.Stats.Unknown.Add(1)
	}
	return Decide(req, host, known, lease, hasLease, s.Network), true
}

// finish carries a decision out: reports its event, saves its lease, and
// sends its reply.
func (s *DHCPServer) finish(log *slog.Logger, req *dhcpv4.DHCPv4, d Decision) {
	mac := req.ClientHWAddr
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
	s.send(log, req, d)
}

// send sends a decision's reply (if any).
func (s *DHCPServer) send(log *slog.Logger, req *dhcpv4.DHCPv4, d Decision) {
	mac := req.ClientHWAddr
	if d.Reply == nil {
		s.Stats.Dropped.Add(1)
		log.Debug("dhcp: no reply", "mac", mac.String(), "type", req.MessageType().String())
		return
	}
	dst := ReplyAddr(req, d.Reply)
	conn := s.Conn
	if s.Broadcast != nil && dst.IP.Equal(net.IPv4bcast) {
		conn = s.Broadcast
	}
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

// ListenDHCPBroadcast opens a socket for the replies broadcast on iface:
// a packet socket that sends each as an IPv4 frame to ff:ff:ff:ff:ff:ff,
// from src and port, and receives nothing (a BPF filter that drops every
// frame is set before it binds). The kernel also delivers every broadcast
// sent through a UDP socket to the sending host itself, where it is routed
// and dropped; a server that answers clients without an address (every
// DISCOVER, and every REQUEST with the broadcast flag) paid for that with
// each reply. The frames bypass the host's IP output path (routing and
// netfilter), as those of kea's raw socket mode do.
func ListenDHCPBroadcast(iface string, src netip.Addr, port int) (net.PacketConn, error) {
	if !src.Is4() {
		return nil, fmt.Errorf("pxe: broadcast replies need an IPv4 source address, not %v", src)
	}
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("pxe: broadcast replies on %q: %w", iface, err)
	}
	drop, err := bpf.Assemble([]bpf.Instruction{bpf.RetConstant{Val: 0}})
	if err != nil {
		return nil, err
	}
	pc, err := packet.Listen(ifi, packet.Datagram, unix.ETH_P_IP, &packet.Config{Filter: drop})
	if err != nil {
		return nil, fmt.Errorf("pxe: packet socket on %s: %w", iface, err)
	}
	return nclient4.NewBroadcastUDPConn(pc, &net.UDPAddr{IP: src.AsSlice(), Port: port}), nil
}
