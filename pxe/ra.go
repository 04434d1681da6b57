package pxe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
)

// routerAdvertisement is an ICMPv6 Router Advertisement (RFC 4861, section
// 4.2) with no M/O flags, router lifetime 0 and no options: it tells iPXE
// that there is no DHCPv6 and no IPv6 router, so iPXE stops waiting for
// IPv6 autoconfiguration (about 16 s otherwise).
var routerAdvertisement = []byte{
	134, 0, 0, 0, // type, code, checksum (the kernel fills it in)
	64, 0, 0, 0, // cur hop limit, flags (no M, no O), router lifetime 0
	0, 0, 0, 0, // reachable time
	0, 0, 0, 0, // retrans timer
}

// RAServer answers Router Solicitations on one interface and advertises
// periodically.
type RAServer struct {
	Iface    string
	Interval time.Duration // unsolicited advertisements; default 10 s
	Logger   *slog.Logger

	ifi *net.Interface
	c   *icmp.PacketConn
}

// Listen opens the ICMPv6 socket.
func (s *RAServer) Listen() error {
	ifi, err := net.InterfaceByName(s.Iface)
	if err != nil {
		return fmt.Errorf("pxe: router advertisements: %w", err)
	}
	c, err := icmp.ListenPacket("ip6:ipv6-icmp", "::")
	if err != nil {
		return fmt.Errorf("pxe: router advertisements: %w", err)
	}
	pc := c.IPv6PacketConn()
	err = errors.Join(pc.SetMulticastHopLimit(255), pc.SetHopLimit(255), pc.SetMulticastInterface(ifi),
		// Solicitations go to all-routers; a host that does not forward
		// is not in that group until it joins.
		pc.JoinGroup(ifi, &net.IPAddr{IP: net.ParseIP("ff02::2")}),
		pc.SetControlMessage(ipv6.FlagInterface, true))
	if err != nil {
		c.Close()
		return fmt.Errorf("pxe: router advertisements on %s: %w", s.Iface, err)
	}
	var f ipv6.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv6.ICMPTypeRouterSolicitation)
	_ = pc.SetICMPFilter(&f)
	s.ifi, s.c = ifi, c
	return nil
}

// Serve runs until ctx ends; Listen must have succeeded.
func (s *RAServer) Serve(ctx context.Context) error {
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, ifi := s.c, s.ifi
	defer c.Close()
	pc := c.IPv6PacketConn()

	allNodes := &net.IPAddr{IP: net.ParseIP("ff02::1"), Zone: s.Iface}
	send := func() {
		if _, err := pc.WriteTo(routerAdvertisement, &ipv6.ControlMessage{IfIndex: ifi.Index, HopLimit: 255}, allNodes); err != nil {
			log.Debug("ra: send", "iface", s.Iface, "err", err)
		}
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	interval := s.Interval
	if interval <= 0 {
		interval = 10 * time.Second
	}
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			send()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	buf := make([]byte, 1500)
	for {
		n, cm, src, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("pxe: router advertisements: %w", err)
		}
		if n < 1 || buf[0] != byte(ipv6.ICMPTypeRouterSolicitation) || cm == nil || cm.IfIndex != ifi.Index {
			continue
		}
		log.Debug("ra: solicitation", "iface", s.Iface, "src", src.String())
		send()
	}
}
