package pxe

import (
	"net"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// BenchmarkExchange is the DHCP server's own work for one DORA exchange
// of a registered client, as perfdhcp sends it (scripts/bench-boot.sh):
// parse the DISCOVER, decide, encode the OFFER, then the same for the
// REQUEST and its ACK. No sockets, no store.
func BenchmarkExchange(b *testing.B) {
	disc, err := dhcpv4.NewDiscovery(testMAC, dhcpv4.WithBroadcast(true))
	if err != nil {
		b.Fatal(err)
	}
	req, err := dhcpv4.New(dhcpv4.WithHwAddr(testMAC), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithBroadcast(true),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 233, 0, 1))),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 233, 0, 10))))
	if err != nil {
		b.Fatal(err)
	}
	wire := [][]byte{disc.ToBytes(), req.ToBytes()}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, w := range wire {
			m, err := dhcpv4.FromBytes(w)
			if err != nil {
				b.Fatal(err)
			}
			d := Decide(m, testHost, true, Lease{}, false, testNet)
			if d.Reply == nil {
				b.Fatal("no reply")
			}
			_ = d.Reply.ToBytes()
		}
	}
}
