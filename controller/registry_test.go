package controller

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/pxe"
)

// newTestController opens a controller on a fresh state directory; its
// cleanup checks the store's invariants before closing it.
func newTestController(t testing.TB, subnet string) *Controller {
	t.Helper()
	return newTestControllerWith(t, Config{BootSubnet: netip.MustParsePrefix(subnet), ServerIP: netip.MustParsePrefix(subnet).Addr().Next()})
}

// newTestControllerWith opens a controller on a fresh state directory and
// checks the store's invariants when the test ends.
func newTestControllerWith(t testing.TB, cfg Config) *Controller {
	t.Helper()
	cfg.StateDir = t.TempDir()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.reg.CheckInvariants(); err != nil {
			t.Errorf("store invariants: %v", err)
		}
		c.Close()
	})
	return c
}

func TestParseMAC(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		err      bool
	}{
		{in: "52:54:00:12:34:56", want: "52:54:00:12:34:56"},
		{in: "52-54-00-AB-CD-EF", want: "52:54:00:ab:cd:ef"},
		{in: " 5254.00ab.cdef ", want: "52:54:00:ab:cd:ef"},
		{in: "01:00:5e:00:00:01", err: true}, // multicast
		{in: "ff:ff:ff:ff:ff:ff", err: true}, // broadcast
		{in: "00:00:00:00:00:00", err: true},
		{in: "52:54:00:12:34", err: true},
		{in: "52:54:00:12:34:56:78:9a", err: true}, // EUI-64
		{in: "hello", err: true},
		{in: "", err: true},
	} {
		hw, err := ParseMAC(tc.in)
		if tc.err {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseMAC(%q) = %v, %v; want ErrInvalid", tc.in, hw, err)
			}
			continue
		}
		if err != nil || hw.String() != tc.want {
			t.Errorf("ParseMAC(%q) = %v, %v; want %s", tc.in, hw, err, tc.want)
		}
	}
}

func TestRegisterAssignsLowestFreeAddress(t *testing.T) {
	c := newTestController(t, "10.9.0.0/24")
	r := c.Registry()
	var got, roots []string
	for i := range 3 {
		n, err := r.Register(controllerapi.RegisterRequest{Name: fmt.Sprintf("hn%d", i), MAC: fmt.Sprintf("52:54:00:00:00:%02x", i), Role: "hwnode"})
		if err != nil {
			t.Fatal(err)
		}
		got, roots = append(got, n.IP), append(roots, n.RootVolume)
	}
	if d := cmp.Diff([]string{"10.9.0.10", "10.9.0.11", "10.9.0.12"}, got); d != "" {
		t.Fatalf("addresses (-want +got):\n%s", d)
	}
	if _, err := r.Remove("hn1"); err != nil {
		t.Fatal(err)
	}
	n, err := r.Register(controllerapi.RegisterRequest{Name: "hn9", MAC: "52:54:00:00:00:99", Role: "storage"})
	if err != nil {
		t.Fatal(err)
	}
	if n.IP != "10.9.0.11" {
		t.Errorf("after removing hn1, next address = %s; want the freed 10.9.0.11", n.IP)
	}
	if roots[1] == "" {
		t.Fatalf("no root volume addresses: %v", roots)
	}
	// Its root volume address is handed out again too, to the next
	// hardware node.
	if n, err := r.Register(controllerapi.RegisterRequest{Name: "hn8", MAC: "52:54:00:00:00:98", Role: "hwnode"}); err != nil || n.RootVolume != roots[1] {
		t.Errorf("after removing hn1 (root %s of %v), the next hardware node's root is %s, %v", roots[1], roots, n.RootVolume, err)
	}
	if _, err := r.Remove("hn8"); err != nil {
		t.Fatal(err)
	}
	// A fixed address above the allocator's cursor is skipped later.
	if _, err := r.Register(controllerapi.RegisterRequest{Name: "fixed", MAC: "52:54:00:00:01:00", Role: "hwnode", IP: "10.9.0.13"}); err != nil {
		t.Fatal(err)
	}
	n, err = r.Register(controllerapi.RegisterRequest{Name: "after", MAC: "52:54:00:00:01:01", Role: "hwnode"})
	if err != nil || n.IP != "10.9.0.14" {
		t.Errorf("next address = %s, %v; want 10.9.0.14", n.IP, err)
	}
}

func TestRegisterRefusesBadInput(t *testing.T) {
	c := newTestController(t, "10.9.0.0/24")
	r := c.Registry()
	if _, err := r.Register(controllerapi.RegisterRequest{Name: "hn1", MAC: "52:54:00:12:34:56", Role: "hwnode", IP: "10.9.0.50"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		req  controllerapi.RegisterRequest
		kind error
		msg  string
	}{
		{"duplicate MAC", controllerapi.RegisterRequest{Name: "hn2", MAC: "52:54:00:12:34:56", Role: "hwnode"}, ErrConflict,
			"52:54:00:12:34:56 is already registered as hn1; see `fabric node show hn1`"},
		{"duplicate MAC other spelling", controllerapi.RegisterRequest{Name: "hn2", MAC: "52-54-00-12-34-56", Role: "hwnode"}, ErrConflict,
			"52:54:00:12:34:56 is already registered as hn1; see `fabric node show hn1`"},
		{"duplicate name", controllerapi.RegisterRequest{Name: "hn1", MAC: "52:54:00:12:34:57", Role: "hwnode"}, ErrConflict,
			`a node named "hn1" is already registered; choose another name or see ` + "`fabric node show hn1`"},
		{"address taken", controllerapi.RegisterRequest{Name: "hn2", MAC: "52:54:00:12:34:57", Role: "hwnode", IP: "10.9.0.50"}, ErrConflict,
			"10.9.0.50 is already assigned to hn1; leave --ip out to get a free address"},
		{"multicast MAC", controllerapi.RegisterRequest{Name: "hn2", MAC: "33:33:00:00:00:01", Role: "hwnode"}, ErrInvalid, ""},
		{"bad role", controllerapi.RegisterRequest{Name: "hn2", MAC: "52:54:00:12:34:57", Role: "db"}, ErrInvalid, ""},
		{"uppercase name", controllerapi.RegisterRequest{Name: "HN2", MAC: "52:54:00:12:34:57", Role: "hwnode"}, ErrInvalid, ""},
		{"name with dot", controllerapi.RegisterRequest{Name: "hn.2", MAC: "52:54:00:12:34:57", Role: "hwnode"}, ErrInvalid, ""},
		{"leading dash", controllerapi.RegisterRequest{Name: "-hn", MAC: "52:54:00:12:34:57", Role: "hwnode"}, ErrInvalid, ""},
		{"outside subnet", controllerapi.RegisterRequest{Name: "hn2", MAC: "52:54:00:12:34:57", Role: "hwnode", IP: "10.8.0.5"}, ErrInvalid, ""},
		{"server address", controllerapi.RegisterRequest{Name: "hn2", MAC: "52:54:00:12:34:57", Role: "hwnode", IP: "10.9.0.1"}, ErrInvalid, ""},
		{"broadcast address", controllerapi.RegisterRequest{Name: "hn2", MAC: "52:54:00:12:34:57", Role: "hwnode", IP: "10.9.0.255"}, ErrInvalid, ""},
		{"IPv6", controllerapi.RegisterRequest{Name: "hn2", MAC: "52:54:00:12:34:57", Role: "hwnode", IP: "fd00::5"}, ErrInvalid, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := r.Register(tc.req)
			if !errors.Is(err, tc.kind) {
				t.Fatalf("Register = %v; want %v", err, tc.kind)
			}
			if tc.msg != "" && err.Error() != tc.msg {
				t.Errorf("message %q; want %q", err, tc.msg)
			}
		})
	}
	ns, _ := r.Nodes()
	if len(ns) != 1 {
		t.Errorf("%d nodes after refused registrations; want 1", len(ns))
	}
}

func TestSubnetExhausted(t *testing.T) {
	c, err := New(Config{StateDir: t.TempDir(), BootSubnet: netip.MustParsePrefix("10.7.0.0/29"), ServerIP: netip.MustParseAddr("10.7.0.1"), FirstIP: netip.MustParseAddr("10.7.0.2")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var got []string
	for i := 0; ; i++ {
		n, err := c.Registry().Register(controllerapi.RegisterRequest{Name: fmt.Sprintf("n%d", i), MAC: fmt.Sprintf("52:54:00:00:00:%02x", i), Role: "hwnode"})
		if errors.Is(err, ErrExhausted) {
			break
		}
		if err != nil || i > 10 {
			t.Fatalf("registration %d: %v", i, err)
		}
		got = append(got, n.IP)
	}
	want := []string{"10.7.0.2", "10.7.0.3", "10.7.0.4", "10.7.0.5", "10.7.0.6"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("addresses of a /29 (-want +got):\n%s", d)
	}
	if err := c.Registry().CheckInvariants(); err != nil {
		t.Error(err)
	}
}

func TestUpdateAndRemove(t *testing.T) {
	c := newTestController(t, "10.9.0.0/24")
	r := c.Registry()
	for i, name := range []string{"a", "b"} {
		if _, err := r.Register(controllerapi.RegisterRequest{Name: name, MAC: fmt.Sprintf("52:54:00:00:00:%02x", i), Role: "hwnode"}); err != nil {
			t.Fatal(err)
		}
	}
	newName, ip, role := "c", "10.9.0.100", "storage"
	n, err := r.Update("a", controllerapi.UpdateRequest{Name: &newName, IP: &ip, Role: &role})
	if err != nil {
		t.Fatal(err)
	}
	if n.Name != "c" || n.IP != ip || n.Role != role {
		t.Errorf("updated node = %+v", n)
	}
	if _, err := r.Node("a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("old name still resolves: %v", err)
	}
	byMAC, err := r.Node("52:54:00:00:00:00")
	if err != nil || byMAC.Name != "c" {
		t.Errorf("lookup by MAC = %+v, %v", byMAC, err)
	}
	taken := "b"
	if _, err := r.Update("c", controllerapi.UpdateRequest{Name: &taken}); !errors.Is(err, ErrConflict) {
		t.Errorf("rename onto an existing name = %v; want conflict", err)
	}
	bIP := "10.9.0.11"
	if _, err := r.Update("c", controllerapi.UpdateRequest{IP: &bIP}); !errors.Is(err, ErrConflict) {
		t.Errorf("address of another node = %v; want conflict", err)
	}
	if _, err := r.Remove("52:54:00:00:00:01"); err != nil {
		t.Errorf("remove by MAC: %v", err)
	}
	if _, err := r.Remove("b"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second remove = %v; want not found", err)
	}
	evs, err := r.Events(0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, ev := range evs {
		types = append(types, ev.Type)
	}
	want := []string{"node.registered", "node.registered", "node.updated", "node.removed"}
	if d := cmp.Diff(want, types); d != "" {
		t.Errorf("events (-want +got):\n%s", d)
	}
}

// Safety property: concurrent registrations never hand one address or MAC
// to two nodes.
func TestConcurrentRegistrationsAreDistinct(t *testing.T) {
	c := newTestController(t, "10.9.0.0/24")
	r := c.Registry()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Go(func() {
			_, err := r.Register(controllerapi.RegisterRequest{Name: fmt.Sprintf("n%03d", i), MAC: fmt.Sprintf("52:54:00:00:01:%02x", i), Role: "hwnode"})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	ns, err := r.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	ips, macs := map[string]bool{}, map[string]bool{}
	for _, n := range ns {
		ips[n.IP], macs[n.MAC] = true, true
	}
	if len(ns) != 100 || len(ips) != 100 || len(macs) != 100 {
		t.Errorf("%d nodes, %d distinct addresses, %d distinct MACs; want 100 each", len(ns), len(ips), len(macs))
	}
}

// TestLeaseCache: the DHCP server's lease lookups, served from memory,
// agree with the store after every write: a save, concurrent saves of one
// MAC (the newest commit wins in both), a node's removal and its MAC
// registered again.
func TestLeaseCache(t *testing.T) {
	c := newTestController(t, "10.9.0.0/24")
	r := c.Registry()
	const mac = "52:54:00:00:00:07"
	fromStore := func() (pxe.Lease, bool) {
		t.Helper()
		l, ok, err := r.storedLease(mac)
		if err != nil {
			t.Fatal(err)
		}
		return l, ok
	}
	check := func(what string, wantOK bool) {
		t.Helper()
		got, ok, err := r.lease(mac)
		if err != nil {
			t.Fatal(err)
		}
		stored, sok := fromStore()
		if ok != wantOK || sok != wantOK {
			t.Fatalf("%s: cached lease present %v, stored present %v; want %v", what, ok, sok, wantOK)
		}
		if got.IP != stored.IP || got.State != stored.State || !got.Updated.Equal(stored.Updated) {
			t.Fatalf("%s: cached lease %+v, the store has %+v", what, got, stored)
		}
	}
	check("unregistered", false)
	if _, err := r.Register(controllerapi.RegisterRequest{Name: "a", MAC: mac, Role: "hwnode"}); err != nil {
		t.Fatal(err)
	}
	check("registered, no lease yet", false)
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	lease := func(i int) pxe.Lease {
		return pxe.Lease{MAC: mac, IP: netip.MustParseAddr("10.9.0.10"), State: pxe.LeaseBound, Updated: t0.Add(time.Duration(i) * time.Second), Expires: t0.Add(time.Hour)}
	}
	if err := r.saveLease(lease(0)); err != nil {
		t.Fatal(err)
	}
	check("saved", true)
	var wg sync.WaitGroup
	for i := 1; i <= 32; i++ {
		wg.Go(func() {
			if err := r.saveLease(lease(i)); err != nil {
				t.Error(err)
			}
			if _, _, err := r.lease(mac); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	check("after 32 concurrent saves", true)
	if _, err := r.Remove(mac); err != nil {
		t.Fatal(err)
	}
	check("node removed", false)
	if err := r.saveLease(lease(99)); err != nil {
		t.Fatal(err)
	}
	check("saved for a removed MAC (not kept)", false)
	if _, err := r.Register(controllerapi.RegisterRequest{Name: "a", MAC: mac, Role: "hwnode"}); err != nil {
		t.Fatal(err)
	}
	check("registered again", false)
}

// TestLeaseRenewal: a renewal of a bound lease is answered from memory at
// once and committed by the lease writer within leaseWriteBehind; what is
// not a renewal is refused; a node removed while its renewal waits leaves
// no lease behind, even when its MAC is registered again before the
// writer runs; Close writes what still waits.
func TestLeaseRenewal(t *testing.T) {
	c := newTestController(t, "10.9.0.0/24")
	r := c.Registry()
	const mac = "52:54:00:00:00:08"
	stored := func() (pxe.Lease, bool) {
		t.Helper()
		l, ok, err := r.storedLease(mac)
		if err != nil {
			t.Fatal(err)
		}
		return l, ok
	}
	n, err := r.Register(controllerapi.RegisterRequest{Name: "a", MAC: mac, Role: "hwnode"})
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr(n.IP)
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	lease := func(i int, ip netip.Addr) pxe.Lease {
		return pxe.Lease{MAC: mac, IP: ip, State: pxe.LeaseBound, Updated: t0.Add(time.Duration(i) * time.Second), Expires: t0.Add(time.Hour + time.Duration(i)*time.Second)}
	}
	if r.renewLease(lease(1, ip)) {
		t.Fatal("a first bind was taken as a renewal")
	}
	if err := r.saveLease(lease(1, ip)); err != nil {
		t.Fatal(err)
	}
	if r.renewLease(lease(2, ip.Next())) {
		t.Fatal("a bound lease for another address was taken as a renewal")
	}
	if off := (pxe.Lease{MAC: mac, IP: ip, State: pxe.LeaseReleased}); r.renewLease(off) {
		t.Fatal("a release was taken as a renewal")
	}
	start := time.Now()
	if !r.renewLease(lease(3, ip)) {
		t.Fatal("a renewal of the bound lease was refused")
	}
	if got, ok, err := r.lease(mac); err != nil || !ok || !got.Updated.Equal(lease(3, ip).Updated) {
		t.Fatalf("after the renewal the lookup gives %+v %v %v; want the renewal", got, ok, err)
	}
	if s, _ := stored(); !s.Updated.Equal(lease(1, ip).Updated) {
		t.Fatalf("the store has %+v at once; want the bind before the renewal until the writer runs", s)
	}
	for {
		if s, _ := stored(); s.Updated.Equal(lease(3, ip).Updated) {
			break
		}
		if time.Since(start) > leaseWriteBehind+5*time.Second {
			t.Fatalf("the renewal was not written within %v", time.Since(start))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("renewal written %v after it was taken (write-behind %v)", time.Since(start).Round(time.Millisecond), leaseWriteBehind)

	// Removed while the renewal waits, then registered again.
	if !r.renewLease(lease(4, ip)) {
		t.Fatal("renewal refused")
	}
	if _, err := r.Remove(mac); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := r.lease(mac); ok {
		t.Fatal("the removed node's lease is still looked up")
	}
	if _, err := r.Register(controllerapi.RegisterRequest{Name: "a", MAC: mac, Role: "hwnode"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(leaseWriteBehind + 200*time.Millisecond)
	if s, ok := stored(); ok {
		t.Fatalf("the store holds %+v for a node registered anew after its removal", s)
	}
	if l, ok, _ := r.lease(mac); ok {
		t.Fatalf("lookup gives %+v for a node registered anew after its removal", l)
	}

	// A renewal of a bind that is not committed yet waits for it too.
	r.leaseFlushMu.Lock() // the writer cannot commit meanwhile
	saved := make(chan error, 1)
	go func() { saved <- r.saveLease(lease(5, ip)) }()
	for {
		r.leaseMu.Lock()
		q, queued := r.pending[mac]
		r.leaseMu.Unlock()
		if queued && len(q.waiters) > 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	renewed := r.renewLease(lease(6, ip))
	r.leaseFlushMu.Unlock()
	if err := <-saved; err != nil {
		t.Fatal(err)
	}
	if renewed {
		t.Fatal("a renewal was answered before the bind it renews was committed")
	}

	// Close writes the renewal still waiting.
	if err := r.saveLease(lease(5, ip)); err != nil {
		t.Fatal(err)
	}
	if !r.renewLease(lease(6, ip)) {
		t.Fatal("renewal refused")
	}
	r.flushLeases()
	if s, _ := stored(); !s.Updated.Equal(lease(6, ip).Updated) {
		t.Fatalf("after a flush the store has %+v; want the renewal", s)
	}
}
