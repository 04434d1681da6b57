package controller

import (
	"context"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

var tokenRE = regexp.MustCompile(`fabric\.token=(\S*)`)

// fetchScript gets a boot script over HTTP from the client namespace,
// from the source address src, and returns the token in it ("" if none).
func (l *bootLab) fetchScript(t *testing.T, src, url string) string {
	t.Helper()
	resp, err := nsHTTPClient(l.cli, src).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := tokenRE.FindStringSubmatch(string(b))
	if m == nil {
		t.Fatalf("script from %s has no fabric.token= at all:\n%s", src, b)
	}
	return m[1]
}

// TestBootTokenTheft plays an attacker on the boot network against a node
// that boots for real (DHCP from a real client, HTTP script, enrollment):
// the script fetched from another address, a second time, or after the
// boot window carries no token; a token obtained anyway (sniffed, or by
// spoofing the node's MAC and address through a whole new DHCP exchange)
// cannot take over the enrolled, live node; every attempt is an event with
// its source address.
func TestBootTokenTheft(t *testing.T) {
	l := newBootLab(t, func(c *Config) { c.BootWindow = 2 * time.Second; c.AgentTimeout = 3 * time.Second })
	l.cli.Must(t, "ip", "addr", "add", "10.233.0.10/24", "dev", "eth0")
	l.cli.Must(t, "ip", "addr", "add", "10.233.0.66/24", "dev", "eth0")
	admin := serveAPI(t, l.c)
	ctx := context.Background()
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	if _, err := l.c.reg.Register(controllerapi.RegisterRequest{Name: "hn1", MAC: mac.String(), Role: "hwnode"}); err != nil {
		t.Fatal(err)
	}
	const node, attacker = "10.233.0.10", "10.233.0.66"
	url := "http://10.233.0.1:8080/boot/52-54-00-12-34-56.ipxe"
	dhcp := func() {
		t.Helper()
		if _, err := l.dhcpClient(t, mac).Request(ctx, pxeBIOS); err != nil {
			t.Fatalf("DHCP: %v", err)
		}
	}

	// Before any DHCP exchange: no token for anyone.
	if tok := l.fetchScript(t, node, url); tok != "" {
		t.Errorf("script before DHCP carried token %q", tok)
	}
	dhcp()
	if tok := l.fetchScript(t, attacker, url); tok != "" {
		t.Errorf("script fetched from another address carried token %q", tok)
	}
	tok := l.fetchScript(t, node, url)
	if tok == "" {
		t.Fatal("the booting node's script carried no token")
	}
	if again := l.fetchScript(t, node, url); again != "" {
		t.Errorf("second fetch in the same boot window carried token %q", again)
	}
	// The real node enrolls and runs.
	real := newAgentClient(t, l.c, admin)
	if _, err := real.Enroll(ctx, "hn1", tok); err != nil {
		t.Fatalf("the real node's enrollment: %v", err)
	}
	ctxA, stop := context.WithCancel(ctx)
	alive := make(chan error, 1)
	go func() {
		for ctxA.Err() == nil {
			if _, err := real.Heartbeat(ctxA, controllerapi.Heartbeat{Node: "hn1"}, 0); err != nil && ctxA.Err() == nil {
				alive <- err
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		alive <- nil
	}()
	defer func() {
		stop()
		if err := <-alive; err != nil {
			t.Errorf("the real node's agent was refused: %v", err)
		}
	}()

	// The sniffed token is spent.
	thief := newAgentClient(t, l.c, admin)
	if _, err := thief.Enroll(ctx, "hn1", tok); apiStatus(err) != http.StatusUnauthorized {
		t.Errorf("enrollment with the spent token: %v; want 401", err)
	}
	// After the window closes, no token; an operating system renewing its
	// address (DHCP without PXE options) opens no window.
	dhcp()
	time.Sleep(2500 * time.Millisecond)
	if late := l.fetchScript(t, node, url); late != "" {
		t.Errorf("script after the boot window carried token %q", late)
	}
	if _, err := l.dhcpClient(t, mac).Request(ctx); err != nil {
		t.Fatalf("plain DHCP: %v", err)
	}
	if tok := l.fetchScript(t, node, url); tok != "" {
		t.Errorf("script after a plain (non-PXE) DHCP exchange carried token %q", tok)
	}
	// A full spoof (the node's MAC through DHCP, then its address): the
	// token is served, but enrolling over the live agent is refused.
	dhcp()
	stolen := l.fetchScript(t, node, url)
	if stolen == "" {
		t.Fatal("the spoofed boot got no token (the test's premise)")
	}
	if _, err := thief.Enroll(ctx, "hn1", stolen); apiStatus(err) != http.StatusConflict {
		t.Errorf("enrollment over the live node: %v; want 409", err)
	}
	if _, err := thief.Heartbeat(ctx, controllerapi.Heartbeat{Node: "hn1"}, 0); apiStatus(err) != http.StatusUnauthorized {
		t.Errorf("thief heartbeat: %v; want 401 (no certificate)", err)
	}

	evs, _ := l.c.reg.Events(0, 1000)
	var noToken, refused, enrolled int
	for _, ev := range evs {
		switch {
		case ev.Type == controllerapi.EventBootScript && strings.Contains(ev.Message, "without an enrollment token"):
			noToken++
		case ev.Type == controllerapi.EventEnrollRefused && ev.Source != "":
			refused++
		case ev.Type == controllerapi.EventAgentEnrolled:
			enrolled++
		}
	}
	if noToken != 5 || refused != 2 || enrolled != 1 {
		t.Errorf("events: %d scripts without a token (want 5), %d refused enrollments with a source (want 2), %d enrollments (want 1)", noToken, refused, enrolled)
		for _, ev := range evs {
			t.Logf("%s %s %s", ev.Type, ev.Source, ev.Message)
		}
	}
}
