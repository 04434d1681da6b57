package controller

import (
	"bytes"
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

func TestStatus(t *testing.T) {
	c := newTestControllerWith(t, Config{BootSubnet: netip.MustParsePrefix("10.9.0.0/24"), ServerIP: netip.MustParseAddr("10.9.0.1"),
		AgentTimeout: time.Second})
	admin := serveAPI(t, c)
	ctx := context.Background()
	for i, n := range []string{"hn1", "hn2"} {
		if _, err := admin.RegisterNode(ctx, controllerapi.RegisterRequest{Name: n, MAC: "52:54:00:00:00:0" + string(rune('1'+i)), Role: controllerapi.RoleHWNode}); err != nil {
			t.Fatal(err)
		}
	}
	startFakeAgent(t, c, admin, "hn1", 1024)
	startFakeStorage(t, c, admin, "st1", "52:54:00:00:00:03")
	waitAlive(t, c, "hn1")
	img := bytes.Repeat([]byte{1}, 1<<20)
	if _, err := admin.ImportImage(ctx, "tiny", bytes.NewReader(img), int64(len(img))); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateInstance(ctx, controllerapi.CreateInstanceRequest{Name: "web", Image: "tiny", VCPUs: 1, MemoryMiB: 128, Start: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateInstance(ctx, controllerapi.CreateInstanceRequest{Name: "db", Image: "tiny", VCPUs: 1, MemoryMiB: 256}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SetInstanceState(ctx, "web", "start", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := newAgentClient(t, c, admin).Enroll(ctx, "hn2", "stolen"); err == nil {
		t.Fatal("enrollment with a wrong token granted")
	}
	st, err := admin.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := st.Nodes
	if n.HWNodes != 2 || n.Alive != 1 || n.NotReported != 1 || n.Dead != 0 || n.Storage != 1 {
		t.Errorf("node counts %+v; want 2 hardware nodes (1 alive, 1 not reporting) and 1 storage", n)
	}
	// The fake agent offers 2 vCPUs (x4 overcommit) and 1024 MiB.
	if cp := st.Capacity; cp.VCPUs != 8 || cp.MemoryMiB != 1024 || cp.VCPUsUsed != 2 || cp.MemoryUsedMiB != 384 {
		t.Errorf("capacity %+v; want 2 of 8 vCPUs and 384 of 1024 MiB used", cp)
	}
	if st.Instances["running"] != 1 || st.Instances["shutoff"] != 1 {
		t.Errorf("instances by state %v; want 1 running, 1 shutoff", st.Instances)
	}
	// startFakeAgent's token-reuse check, then the stolen token.
	if len(st.Problems) != 2 || st.Problems[1].Type != controllerapi.EventEnrollRefused || st.Problems[1].Node != "hn2" || st.Controller.Events < 15 {
		t.Errorf("problems %+v (events %d); want the two refused enrollments, hn2's last", st.Problems, st.Controller.Events)
	}
}
