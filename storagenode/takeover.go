package storagenode

import (
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strings"
)

// takeover is this node answering for its absent pair peer's AoE MAC on
// one of its interfaces. The port goes promiscuous (a real NIC drops
// frames to other addresses otherwise), the target answers frames sent to
// that MAC from the same sockets as its own, so requests to both
// addresses stay in one arrival order, and every volume is announced from
// the peer's MAC, which teaches the switch the new port. The Linux aoe
// driver's resends to the dead target then reach us at its next 100 ms
// tick, instead of after its 10 s scorn (../shared/STORAGE-HA.md).
type takeover struct {
	iface string
	mac   [6]byte
	t     *Target
}

// takeOver starts answering for each of the peer's MACs, one per AoE
// interface in order, unless ownership changed meanwhile.
func (p *Pair) takeOver(epoch uint64, macs []string) {
	for i, mac := range macs {
		if i >= len(p.ifaces) {
			break
		}
		hw, err := net.ParseMAC(mac)
		if err != nil || len(hw) != 6 {
			continue
		}
		owns := func() bool { return p.role == roleOwner && p.st.Epoch == epoch && p.link == nil }
		p.mu.Lock()
		ok := owns()
		p.mu.Unlock()
		if !ok {
			return
		}
		// ip runs outside p.mu: writes go on meanwhile.
		if err := ipLink("set", p.ifaces[i], "promisc", "on"); err != nil {
			p.log.Warn("cannot take over the peer's MAC", "mac", mac, "iface", p.ifaces[i], "err", err)
			continue
		}
		p.mu.Lock()
		if !owns() {
			p.mu.Unlock()
			_ = ipLink("set", p.ifaces[i], "promisc", "off")
			return
		}
		tk := &takeover{iface: p.ifaces[i], mac: [6]byte(hw), t: p.t}
		p.t.addAlso(tk.mac)
		p.takeovers = append(p.takeovers, tk)
		p.event("answering for the peer's MAC %s on %s", mac, tk.iface)
		p.mu.Unlock()
		p.t.announceFrom(tk.iface, tk.mac)
	}
}

func ipLink(args ...string) error {
	out, err := exec.Command("ip", append([]string{"link"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip link %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// release stops answering for the peer's MAC.
func (tk *takeover) release() {
	tk.t.removeAlso(tk.mac)
	_ = ipLink("set", tk.iface, "promisc", "off")
}

func (t *Target) addAlso(mac [6]byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var l [][6]byte
	if a := t.also.Load(); a != nil {
		l = slices.Clone(*a)
	}
	if !slices.Contains(l, mac) {
		l = append(l, mac)
	}
	t.also.Store(&l)
}

func (t *Target) removeAlso(mac [6]byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if a := t.also.Load(); a != nil {
		l := slices.DeleteFunc(slices.Clone(*a), func(m [6]byte) bool { return m == mac })
		t.also.Store(&l)
	}
}

// announceFrom announces every volume on the named interface's port from
// mac.
func (t *Target) announceFrom(iface string, mac [6]byte) {
	t.mu.Lock()
	ports := slices.Clone(t.ports)
	vols := t.tab.Load().list
	t.mu.Unlock()
	for _, p := range ports {
		if p.ifi.Name != iface {
			continue
		}
		for _, v := range vols {
			p.announceAs(t, v, mac)
		}
	}
}
