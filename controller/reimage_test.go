package controller

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/storagenode"
)

// TestReimage: a reimage waits for the node's next boot script; then the
// script holds iPXE while a fresh clone is made at the same address, the
// old root stops being exported and is kept until --confirm deletes it.
func TestReimage(t *testing.T) {
	c := newTestControllerWith(t, Config{BootSubnet: netip.MustParsePrefix("10.9.0.0/24"), ServerIP: netip.MustParseAddr("10.9.0.1"),
		HWNodeRootImage: "root"})
	admin := serveAPI(t, c)
	ctx := context.Background()
	sto := startFakeStorage(t, c, admin, "st1", "52:54:00:00:03:09")
	img := bytes.Repeat([]byte{0xcd}, 1<<20)
	if _, err := admin.ImportImage(ctx, "root", bytes.NewReader(img), int64(len(img))); err != nil {
		t.Fatal(err)
	}
	const mac = "52:54:00:00:03:01"
	n, err := admin.RegisterNode(ctx, controllerapi.RegisterRequest{Name: "hn1", MAC: mac, Role: controllerapi.RoleHWNode})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RegisterNode(ctx, controllerapi.RegisterRequest{Name: "sn9", MAC: "52:54:00:00:03:02", Role: controllerapi.RoleStorage}); err != nil {
		t.Fatal(err)
	}
	if v, ok := sto.volume("root-hn1"); !ok || v.Addr != n.RootVolume {
		t.Fatalf("root-hn1 at registration: %+v %v, want it at %s", v, ok, n.RootVolume)
	}
	b := &bootBackend{c: c}
	hw, _ := net.ParseMAC(mac)
	if hold := b.BootScript(hw); hold != "" {
		t.Fatalf("no reimage asked: the boot script holds: %q", hold)
	}
	for _, tc := range []struct {
		name    string
		confirm bool
		want    string
	}{
		{"sn9", false, "only PXE-booted hardware nodes"},
		{"nosuch", false, "no node named"},
		{"hn1", true, "nothing to confirm"},
	} {
		if _, err := admin.ReimageNode(ctx, tc.name, tc.confirm); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("reimage %s (confirm %v): %v, want %q", tc.name, tc.confirm, err, tc.want)
		}
	}
	st, err := admin.ReimageNode(ctx, "hn1", false)
	if err != nil || !st.Pending || st.Volume != "root-hn1" {
		t.Fatalf("reimage hn1: %+v, %v", st, err)
	}
	if _, err := admin.ReimageNode(ctx, "hn1", false); err == nil || !strings.Contains(err.Error(), "already") {
		t.Errorf("a second reimage: %v, want already asked", err)
	}
	if _, err := admin.ReimageNode(ctx, "hn1", true); err == nil || !strings.Contains(err.Error(), "not booted since") {
		t.Errorf("confirm before the boot: %v, want refused", err)
	}
	// Nothing changes until the node boots.
	if v, ok := sto.volume("root-hn1"); !ok || v.Addr != n.RootVolume {
		t.Fatalf("root-hn1 changed before the boot: %+v %v", v, ok)
	}
	// The boot: the script holds while the clone is made, then boots.
	if hold := b.BootScript(hw); !strings.Contains(hold, "reimaging hn1") {
		t.Fatalf("boot script during the reimage: %q, want a hold", hold)
	}
	deadline := time.Now().Add(20 * time.Second)
	for b.BootScript(hw) != "" {
		if time.Now().After(deadline) {
			t.Fatal("the reimage did not finish")
		}
		time.Sleep(20 * time.Millisecond)
	}
	var fresh string
	for name, v := range sto.snapshot() {
		if strings.HasPrefix(name, "root-hn1-") {
			fresh = name
			if v.Addr != n.RootVolume || len(v.MACs) != 1 || v.MACs[0] != mac {
				t.Errorf("fresh root %s: %+v, want it at %s for %s only", name, v, n.RootVolume, mac)
			}
		}
	}
	if old, ok := sto.volume("root-hn1"); !ok || old.Addr != "" {
		t.Errorf("old root after the reimage: %+v %v, want it kept and not exported", old, ok)
	}
	if !storagenode.ValidVolumeName(fresh) {
		t.Errorf("fresh root %q: not a name a storage node takes", fresh)
	}
	if fresh == "" || c.rootVolume("hn1") != fresh {
		t.Fatalf("fresh root %q, the controller says %q", fresh, c.rootVolume("hn1"))
	}
	st, err = admin.ReimageNode(ctx, "hn1", true)
	if err != nil || st.Volume != fresh || len(st.Kept) != 0 {
		t.Fatalf("confirm: %+v, %v", st, err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		if _, ok := sto.volume("root-hn1"); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the old root is still there after --confirm")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
