package controller

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fabric-project/fabric/aoe/initiator"
	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/internal/netns"
	"github.com/fabric-project/fabric/internal/pairlab"
	"github.com/fabric-project/fabric/storagenode"
)

// TestRemoteVolumes: a controller without a pool of its own drives a real
// storage node (fabricd storage --controller, in a namespace) through its
// desired state. An image is copied to the storage node on first use and
// cloned there; the clone is served at its address to the allowed MAC
// only, with the image's bytes; an allow-list change is in force when
// Allow returns; a second clone does not fetch the image again; a deleted
// volume goes; a volume made by hand on the node is never touched; and a
// restarted storage node keeps what it holds.
func TestRemoteVolumes(t *testing.T) {
	netns.Skip(t)
	bin := pairlab.Fabricd(t, "..")
	sto, ini := netns.New(t, "fvsto"), netns.New(t, "fvini")
	netns.Veth(t, sto, "sto0", "10.76.0.5/24", ini, "ini0", "10.76.0.1/24")
	iniMAC := strings.TrimSpace(ini.Must(t, "cat", "/sys/class/net/ini0/address"))
	stoMAC := strings.TrimSpace(sto.Must(t, "cat", "/sys/class/net/sto0/address"))

	c, err := New(Config{StateDir: t.TempDir(), BootSubnet: netip.MustParsePrefix("10.76.0.0/24"), ServerIP: netip.MustParseAddr("10.76.0.1"),
		APIHosts: []string{"10.76.0.1"}, AgentTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rv := c.vols
	var ln net.Listener
	if err := ini.Do(func() (err error) { ln, err = net.Listen("tcp", "10.76.0.1:8443"); return err }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- c.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-served })
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, c.CACertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Registry().Register(controllerapi.RegisterRequest{Name: "sn1", MAC: stoMAC, Role: controllerapi.RoleStorage}); err != nil {
		t.Fatal(err)
	}
	tok, err := c.Registry().IssueToken("sn1", "test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	// A volume made by hand before the node joins.
	data := t.TempDir()
	pool, err := storagenode.OpenPool(data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Create("handmade", 1<<20, storagenode.VolumeOptions{Addr: "e9.9"}); err != nil {
		t.Fatal(err)
	}
	var proc *os.Process
	start := func() {
		proc = startLogged(t, sto.Cmd(bin, "storage", "--iface", "sto0", "--data-dir", data, "--controller", "https://10.76.0.1:8443", "--ca", ca, "--name", "sn1", "--token", tok),
			filepath.Join(data, "..", "storage.log"))
	}
	start()
	t.Cleanup(func() { _ = proc.Signal(syscall.SIGKILL) })
	logs := func() string {
		b, _ := os.ReadFile(filepath.Join(data, "..", "storage.log"))
		return string(b)
	}
	waitFor := func(what string, d time.Duration, ok func() bool) {
		t.Helper()
		for end := time.Now().Add(d); !ok(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("%s: not within %v\n%s", what, d, logs())
			}
		}
	}
	waitFor("sn1 reports", 20*time.Second, func() bool {
		sns, _ := c.StorageNodes()
		return len(sns) == 1 && sns[0].Alive
	})

	img := make([]byte, 4<<20)
	for i := range img {
		img[i] = byte(i / 512)
	}
	if _, err := c.ImportImage("tiny", int64(len(img)), func(f *os.File) error { _, err := f.Write(img); return err }); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	how, err := rv.Clone("tiny", "inst-a", "e5.1", []string{iniMAC}, "")
	if err != nil {
		t.Fatalf("clone: %v\n%s", err, logs())
	}
	first := time.Since(t0)
	t0 = time.Now()
	if _, err := rv.Clone("tiny", "inst-b", "e5.2", []string{iniMAC}, ""); err != nil {
		t.Fatal(err)
	}
	second := time.Since(t0)
	t.Logf("clone %s: %v with the image fetched first, %v for a second clone", how, first.Round(time.Millisecond), second.Round(time.Millisecond))
	if !strings.Contains(how, "sn1") {
		t.Errorf("clone placed %q", how)
	}
	if n := strings.Count(logs(), "volume imported"); n > 1 {
		t.Errorf("the image was fetched %d times", n)
	}

	var in *initiator.Initiator
	if err := ini.Do(func() (err error) {
		in, err = initiator.New("ini0", initiator.Config{Window: 8, Timeout: 200 * time.Millisecond, Retries: 3})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	readAll := func(slot uint8) ([]byte, error) {
		octx, ocancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer ocancel()
		d, err := in.Open(octx, 5, slot, 300*time.Millisecond)
		if err != nil {
			return nil, err
		}
		defer d.Close()
		buf := make([]byte, len(img))
		_, err = d.ReadAt(buf, 0)
		return buf, err
	}
	got, err := readAll(1)
	if err != nil || !bytes.Equal(got, img) {
		t.Fatalf("e5.1 through the initiator: %v (%d bytes, equal %v)", err, len(got), bytes.Equal(got, img))
	}

	// The allow list moves to another MAC: in force when Allow returns.
	if err := rv.Allow("inst-a", []string{"02:00:00:00:00:99"}); err != nil {
		t.Fatal(err)
	}
	if _, err := readAll(1); err == nil {
		t.Error("e5.1 still answers the MAC taken off its allow list")
	}
	if err := rv.Allow("inst-a", []string{iniMAC}); err != nil {
		t.Fatal(err)
	}
	if _, err := readAll(1); err != nil {
		t.Errorf("e5.1 after the allow list came back: %v", err)
	}

	// An I/O cap is in force when Limit returns: reads at about the cap.
	rate := func() float64 {
		octx, ocancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer ocancel()
		d, err := in.Open(octx, 5, 1, 300*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		// 1 KiB: one AoE command at this MTU (1500); the cap counts
		// commands.
		buf := make([]byte, 1024)
		n, t0 := 0, time.Now()
		for time.Since(t0) < 1500*time.Millisecond {
			if _, err := d.ReadAt(buf, int64(n%1000)*1024); err != nil {
				t.Fatal(err)
			}
			n++
		}
		return float64(n) / time.Since(t0).Seconds()
	}
	if err := rv.Limit("inst-a", 200, 0); err != nil {
		t.Fatal(err)
	}
	capped := rate()
	if err := rv.Limit("inst-a", 0, 0); err != nil {
		t.Fatal(err)
	}
	free := rate()
	t.Logf("reads of e5.1: %.0f/s capped at 200 IOPS, %.0f/s with the cap removed", capped, free)
	if capped < 160 || capped > 240 || free < 2*capped {
		t.Errorf("reads %.0f/s under a 200 IOPS cap and %.0f/s without", capped, free)
	}

	vl, err := c.VolumeList()
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]string{}
	for _, v := range vl {
		states[v.Name] = v.Kind + " on " + v.Storage + ": " + v.State
	}
	for name, want := range map[string]string{"inst-a": "instance on sn1: served", "inst-b": "instance on sn1: served", "img-tiny": "image on sn1: served"} {
		if states[name] != want {
			t.Errorf("fabric volume list: %s is %q, want %q", name, states[name], want)
		}
	}
	if _, err := c.RemoveNode("sn1", true, "test"); err == nil || !strings.Contains(err.Error(), "holds the only copy of inst-a, inst-b") {
		t.Errorf("removing sn1, which holds the only copies: %v", err)
	}
	if err := rv.Delete("inst-b"); err != nil {
		t.Fatal(err)
	}
	waitFor("inst-b deleted", 10*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(data, "volumes", "inst-b.img"))
		return os.IsNotExist(err)
	})

	// Restarted, the node keeps what it holds and fetches nothing again.
	_ = proc.Signal(syscall.SIGTERM)
	time.Sleep(time.Second)
	start()
	waitFor("sn1 back with inst-a", 20*time.Second, func() bool {
		sns, _ := c.StorageNodes()
		if len(sns) != 1 || !sns[0].Alive || sns[0].Report == nil {
			return false
		}
		for _, v := range sns[0].Report.Volumes {
			if v.Name == "inst-a" && v.Addr == "e5.1" {
				return true
			}
		}
		return false
	})
	if got, err := readAll(1); err != nil || !bytes.Equal(got, img) {
		t.Errorf("e5.1 after the storage node's restart: %v", err)
	}
	vols, _ := pool.List()
	var names []string
	for _, v := range vols {
		names = append(names, v.Name+"@"+v.Addr())
	}
	if strings.Join(names, " ") != "handmade@e9.9 img-tiny@ inst-a@e5.1" {
		t.Errorf("the pool holds %v; want the hand-made volume, the image and inst-a", names)
	}
	if n := strings.Count(logs(), "volume imported"); n != 1 {
		t.Errorf("the image was fetched %d times", n)
	}
}

// TestLocalStorage: `fabricd controller --storage-dir --storage-iface`, a
// one-machine fabric in one command, runs a storage node in its process
// that is a member like any other: it registers as sn0, enrolls, reports,
// and holds the volumes the controller places on it (here a hardware
// node's root, cloned at registration and served over AoE to that node
// only); restarted, it is still enrolled and serves them again.
func TestLocalStorage(t *testing.T) {
	netns.Skip(t)
	bin := pairlab.Fabricd(t, "..")
	sto, ini := netns.New(t, "flsto"), netns.New(t, "flini")
	netns.Veth(t, sto, "sto0", "10.77.0.1/24", ini, "ini0", "10.77.0.9/24")
	iniMAC := strings.TrimSpace(ini.Must(t, "cat", "/sys/class/net/ini0/address"))
	state, data := t.TempDir(), t.TempDir()
	logPath := filepath.Join(t.TempDir(), "controller.log")
	logs := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	var proc *os.Process
	start := func() {
		proc = startLogged(t, sto.Cmd(bin, "controller", "--state-dir", state, "--api-addr", "10.77.0.1:8443", "--boot-subnet", "10.77.0.0/24",
			"--storage-dir", data, "--storage-iface", "sto0", "--hwnode-root-image", "tiny"), logPath)
	}
	stop := func() {
		_ = proc.Signal(syscall.SIGTERM)
		for end := time.Now().Add(10 * time.Second); syscall.Kill(proc.Pid, 0) == nil; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(end) {
				_ = proc.Signal(syscall.SIGKILL)
			}
		}
	}
	start()
	t.Cleanup(func() { _ = proc.Signal(syscall.SIGKILL) })
	waitFor := func(what string, d time.Duration, ok func() bool) {
		t.Helper()
		for end := time.Now().Add(d); !ok(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("%s: not within %v\n%s", what, d, logs())
			}
		}
	}
	// The CLI's client, in the other namespace, as on a workstation.
	var admin *controllerapi.Client
	waitFor("the controller's CA and credential", 20*time.Second, func() bool {
		caPEM, err1 := os.ReadFile(filepath.Join(state, CADir, "ca.crt"))
		tok, err2 := os.ReadFile(filepath.Join(state, AdminTokenFile))
		if err1 != nil || err2 != nil {
			return false
		}
		admin, err1 = controllerapi.NewClient("https://10.77.0.1:8443", strings.TrimSpace(string(tok)), caPEM)
		return err1 == nil
	})
	tr := admin.HTTP.Transport.(*http.Transport)
	tr.DialContext = nsHTTPClient(ini, "").Transport.(*http.Transport).DialContext
	ctx := context.Background()
	alive := func() bool {
		sns, err := admin.StorageNodes(ctx)
		return err == nil && len(sns) == 1 && sns[0].Name == "sn0" && sns[0].Alive
	}
	waitFor("sn0 registers and reports", 30*time.Second, alive)
	n, err := admin.Node(ctx, "sn0")
	if stoMAC := strings.TrimSpace(sto.Must(t, "cat", "/sys/class/net/sto0/address")); err != nil || n.Role != controllerapi.RoleStorage || n.MAC != stoMAC {
		t.Fatalf("sn0 registered as %+v (%v); want role storage, MAC %s", n, err, stoMAC)
	}

	img := make([]byte, 2<<20)
	for i := range img {
		img[i] = byte(i / 512)
	}
	if _, err := admin.ImportImage(ctx, "tiny", bytes.NewReader(img), int64(len(img))); err != nil {
		t.Fatal(err)
	}
	hn, err := admin.RegisterNode(ctx, controllerapi.RegisterRequest{Name: "hn1", MAC: iniMAC, Role: controllerapi.RoleHWNode})
	if err != nil {
		t.Fatalf("registering hn1 (its root is cloned on sn0): %v\n%s", err, logs())
	}
	vols, err := admin.Volumes(ctx)
	var root controllerapi.Volume
	for _, v := range vols {
		if v.Name == "root-hn1" {
			root = v
		}
	}
	if err != nil || root.Storage != "sn0" || root.State != "served" || root.Addr != hn.RootVolume {
		t.Fatalf("volumes %+v (%v); want root-hn1 served by sn0 at %s", vols, err, hn.RootVolume)
	}
	shelf, slot, err := ParseAoE(hn.RootVolume)
	if err != nil {
		t.Fatal(err)
	}
	read := func() error {
		var in *initiator.Initiator
		if err := ini.Do(func() (err error) {
			in, err = initiator.New("ini0", initiator.Config{Window: 8, Timeout: 200 * time.Millisecond, Retries: 3})
			return err
		}); err != nil {
			return err
		}
		defer in.Close()
		octx, ocancel := context.WithTimeout(ctx, 3*time.Second)
		defer ocancel()
		d, err := in.Open(octx, shelf, uint8(slot), 300*time.Millisecond)
		if err != nil {
			return err
		}
		defer d.Close()
		buf := make([]byte, len(img))
		if _, err := d.ReadAt(buf, 0); err != nil {
			return err
		}
		if !bytes.Equal(buf, img) {
			return errors.New("the root volume does not hold the image's bytes")
		}
		return nil
	}
	if err := read(); err != nil {
		t.Fatalf("hn1's root %s over AoE: %v", hn.RootVolume, err)
	}

	// Restarted: enrolled already (no new token), the volume served again.
	stop()
	tokens := strings.Count(logs(), `"msg":"enrolled with the controller"`)
	start()
	waitFor("sn0 reports after the restart", 30*time.Second, alive)
	if got := strings.Count(logs(), `"msg":"enrolled with the controller"`); got != tokens || tokens != 1 {
		t.Errorf("sn0 enrolled %d times before the restart and %d after; want once, at the first start", tokens, got-tokens)
	}
	waitFor("hn1's root served again", 10*time.Second, func() bool { return read() == nil })
	t.Logf("sn0 beside the controller: registered, enrolled once, serves root-hn1 at %s before and after a restart", hn.RootVolume)
}

// startLogged starts cmd with its output appended to logPath.
func startLogged(t *testing.T, cmd *exec.Cmd, logPath string) *os.Process {
	t.Helper()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); logf.Close() }()
	return cmd.Process
}
