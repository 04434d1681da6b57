package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/fabric-project/fabric/controller"
	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/internal/cliargs"
)

// startController runs a real controller on loopback and returns the path
// of a client config pointing at it.
func startController(t *testing.T) (cfgPath string, ctl *controller.Controller) {
	t.Helper()
	dir := t.TempDir()
	ctl, err := controller.New(controller.Config{StateDir: dir, BootSubnet: netip.MustParsePrefix("10.233.0.0/24"), ServerIP: netip.MustParseAddr("10.233.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctl.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if err := ctl.Registry().CheckInvariants(); err != nil {
			t.Errorf("store invariants: %v", err)
		}
		ctl.Close()
	})
	cfg := clientConfig{Controller: "https://" + ln.Addr().String(), CAFile: filepath.Join(dir, "ca", "ca.crt"), TokenFile: filepath.Join(dir, controller.AdminTokenFile)}
	b, _ := json.Marshal(cfg)
	cfgPath = filepath.Join(dir, "client.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return cfgPath, ctl
}

// fabric runs the CLI and returns its exit code, stdout and stderr.
func fabric(t *testing.T, cfg string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), append([]string{"fabric", "--config", cfg}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestCLINodeLifecycle(t *testing.T) {
	t.Setenv("FABRIC_TOKEN", "")
	cfg, _ := startController(t)
	if code, out, errs := fabric(t, cfg, "node", "list", "-o", "json"); code != 0 || out != "[]\n" {
		t.Errorf("node list -o json with no nodes: code %d out %q err %q", code, out, errs)
	}
	code, out, errs := fabric(t, cfg, "node", "register", "--mac", "52-54-00-12-34-56", "--role", "hwnode", "--name", "hn1")
	if code != 0 || out != "registered hwnode hn1 (52:54:00:12:34:56) at 10.233.0.10\n" {
		t.Fatalf("register: code %d out %q err %q", code, out, errs)
	}
	if code, _, errs = fabric(t, cfg, "node", "register", "--mac", "52:54:00:12:34:57", "--role", "storage", "--name", "st1", "--ip", "10.233.0.50"); code != 0 {
		t.Fatalf("register st1: %s", errs)
	}

	code, out, _ = fabric(t, cfg, "node", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME") ||
		!strings.Contains(lines[1], "hn1") || !strings.Contains(lines[1], "10.233.0.10") ||
		!strings.Contains(lines[2], "st1") || !strings.Contains(lines[2], "storage") {
		t.Errorf("node list: code %d\n%s", code, out)
	}

	code, out, _ = fabric(t, cfg, "node", "list", "-o", "json")
	var ns []controllerapi.Node
	if err := json.Unmarshal([]byte(out), &ns); err != nil || code != 0 {
		t.Fatalf("node list -o json: %v\n%s", err, out)
	}
	var names []string
	for _, n := range ns {
		names = append(names, n.Name+"="+n.IP)
	}
	if d := cmp.Diff([]string{"hn1=10.233.0.10", "st1=10.233.0.50"}, names); d != "" {
		t.Errorf("json list (-want +got):\n%s", d)
	}
	// The list is printed as read, node by node: the same text as
	// encoding the decoded list whole.
	var whole bytes.Buffer
	if err := printJSON(&whole, ns); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(whole.String(), out); d != "" {
		t.Errorf("node list -o json differs from the list encoded whole (-whole +got):\n%s", d)
	}

	code, out, _ = fabric(t, cfg, "node", "show", "52:54:00:12:34:57", "-o", "json")
	var n controllerapi.Node
	if err := json.Unmarshal([]byte(out), &n); err != nil || code != 0 || n.Name != "st1" {
		t.Errorf("show by MAC: %d %q", code, out)
	}
	if code, out, _ = fabric(t, cfg, "node", "update", "st1", "--name", "st2"); code != 0 || !strings.Contains(out, "updated st2") {
		t.Errorf("update: %d %q", code, out)
	}
	if code, _, _ = fabric(t, cfg, "node", "remove", "hn1"); code != 0 {
		t.Errorf("remove hn1: exit %d", code)
	}
	code, out, _ = fabric(t, cfg, "events", "-o", "jsonl")
	var types []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev controllerapi.Event
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("events line %q: %v", l, err)
		}
		types = append(types, ev.Type)
		if (ev.Type == controllerapi.EventAPICall || ev.Type == controllerapi.EventNodeRegistered) && ev.Actor != controllerapi.RootTokenName {
			t.Errorf("call recorded without the token that made it: %+v", ev)
		}
	}
	want := []string{"node.registered", "node.registered", "node.updated", "api.call", "node.removed", "api.call"}
	if d := cmp.Diff(want, types); d != "" || code != 0 {
		t.Errorf("events (-want +got):\n%s", d)
	}
	code, out, _ = fabric(t, cfg, "events")
	if code != 0 || !strings.Contains(out, "removed hwnode hn1 (52:54:00:12:34:56), 10.233.0.10 released") {
		t.Errorf("events table: %q", out)
	}
}

func TestCLIErrors(t *testing.T) {
	t.Setenv("FABRIC_TOKEN", "")
	cfg, _ := startController(t)
	if code, _, errs := fabric(t, cfg, "node", "register", "--mac", "52:54:00:12:34:56", "--role", "hwnode", "--name", "hn1"); code != 0 {
		t.Fatal(errs)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"node", "register", "--mac", "52:54:00:12:34:56", "--role", "hwnode", "--name", "hn2"},
			"fabric: 52:54:00:12:34:56 is already registered as hn1; see `fabric node show hn1`\n"},
		{[]string{"node", "register", "--mac", "01:00:5e:00:00:01", "--role", "hwnode", "--name", "hn2"},
			"fabric: 01:00:5e:00:00:01 is a multicast address; a node's MAC is unicast (lowest bit of the first octet clear)\n"},
		{[]string{"node", "register", "--mac", "52:54:00:12:34:99", "--role", "hwnode", "--name", "hn1"},
			"fabric: a node named \"hn1\" is already registered; choose another name or see `fabric node show hn1`\n"},
		{[]string{"node", "show", "nope"}, "fabric: no node named \"nope\"; see `fabric node list`\n"},
		{[]string{"node", "list", "-o", "yaml"}, "fabric: unknown output format \"yaml\": use table, json or jsonl\n"},
		{[]string{"--token", "bad", "node", "list"}, "fabric: missing or wrong admin credential; pass --token or set FABRIC_TOKEN (the controller wrote it to its state directory as admin.token)\n"},
		{[]string{"node", "register", "--mac", "52:54:00:12:34:99"}, "Required flags \"role, name\" not set"},
	} {
		code, _, errs := fabric(t, cfg, tc.args...)
		if code == 0 || !strings.Contains(errs, tc.want) {
			t.Errorf("fabric %s: exit %d, stderr %q; want non-zero and %q", strings.Join(tc.args, " "), code, errs, tc.want)
		}
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"fabric", "--config", "/nonexistent", "node", "list"}, &out, &errb); code == 0 || !strings.Contains(errb.String(), "reading client config") {
		t.Errorf("missing config: exit %d %q", code, errb.String())
	}
	t.Setenv("HOME", t.TempDir())
	if code := run(context.Background(), []string{"fabric", "node", "list"}, &out, &errb); code == 0 || !strings.Contains(errb.String(), "no controller configured") {
		t.Errorf("no config at all: exit %d %q", code, errb.String())
	}
}

func TestMain(m *testing.M) {
	// The completion test runs the CLI as its own process: urfave/cli reads
	// os.Args when completing.
	if os.Getenv("FABRIC_TEST_CLI_MAIN") == "1" {
		main()
	}
	os.Exit(m.Run())
}

func TestCLICompletion(t *testing.T) {
	code, out, _ := fabric(t, "unused", "completion", "bash")
	if code != 0 || !strings.Contains(out, "complete -o bashdefault -o default -F _fabric_complete fabric") {
		t.Errorf("completion: %d %q", code, out)
	}
	cmd := exec.Command(os.Args[0], "node", "--generate-bash-completion")
	cmd.Env = append(os.Environ(), "FABRIC_TEST_CLI_MAIN=1")
	b, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Fields(string(b))
	for _, sub := range []string{"register", "list", "show", "update", "remove"} {
		if !slices.Contains(got, sub) {
			t.Errorf("completion of `fabric node` lacks %s: %q", sub, got)
		}
	}
}

// TestCompletionShells: each completion script loads in its shell, and
// bash and fish, asking `fabric` (this test binary behind a `fabric` on
// PATH), complete commands and the names of registered nodes; zsh, which
// completes only interactively, is checked with zsh -n.
func TestCompletionShells(t *testing.T) {
	t.Setenv("FABRIC_TOKEN", "")
	cfg, ctl := startController(t)
	for _, n := range []controllerapi.RegisterRequest{{Name: "hn1", MAC: "52:54:00:ab:00:01", Role: controllerapi.RoleHWNode},
		{Name: "sn7", MAC: "52:54:00:ab:00:07", Role: controllerapi.RoleStorage}} {
		if _, err := ctl.Registry().Register(n); err != nil {
			t.Fatal(err)
		}
	}
	bin := t.TempDir()
	wrapper := "#!/bin/sh\nFABRIC_TEST_CLI_MAIN=1 exec " + os.Args[0] + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(bin, "fabric"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "FABRIC_CONFIG="+cfg)
	sh := func(name string, args ...string) (string, error) {
		cmd := exec.Command(name, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		if _, err := exec.LookPath(shell); err != nil {
			t.Errorf("%s is not installed (scripts/deps.sh installs it)", shell)
			continue
		}
		script := filepath.Join(t.TempDir(), "fabric."+shell)
		if out, err := sh(filepath.Join(bin, "fabric"), "completion", shell); err != nil {
			t.Fatalf("fabric completion %s: %v\n%s", shell, err, out)
		} else if err := os.WriteFile(script, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := sh(shell, "-n", script); err != nil {
			t.Errorf("%s -n on the completion script: %v\n%s", shell, err, out)
		}
	}
	bash := func(line string) []string {
		t.Helper()
		words := strings.Fields(line)
		if strings.HasSuffix(line, " ") {
			words = append(words, "")
		}
		q := make([]string, len(words))
		for i, w := range words {
			q[i] = "'" + w + "'"
		}
		out, err := sh("bash", "-c", fmt.Sprintf("source <(fabric completion bash); COMP_WORDS=(%s); COMP_CWORD=%d; _fabric_complete; printf '%%s\\n' \"${COMPREPLY[@]}\"",
			strings.Join(q, " "), len(words)-1))
		if err != nil {
			t.Fatalf("bash completion of %q: %v\n%s", line, err, out)
		}
		return strings.Fields(out)
	}
	fish := func(line string) []string {
		t.Helper()
		out, err := sh("fish", "-c", "fabric completion fish | source; complete -C'"+line+"'")
		if err != nil {
			t.Fatalf("fish completion of %q: %v\n%s", line, err, out)
		}
		var got []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			got = append(got, strings.Fields(l + " ")[0])
		}
		return got
	}
	for _, tc := range []struct {
		line string
		want []string
		not  []string
	}{
		{"fabric no", []string{"node"}, []string{"instance"}},
		{"fabric node show ", []string{"hn1", "sn7"}, nil},
		{"fabric storage drain ", []string{"sn7"}, []string{"hn1"}},
		{"fabric node sh", []string{"show"}, []string{"hn1"}},
	} {
		for name, complete := range map[string]func(string) []string{"bash": bash, "fish": fish} {
			got := complete(tc.line)
			for _, w := range tc.want {
				if !slices.Contains(got, w) {
					t.Errorf("%s completes %q to %q, without %s", name, tc.line, got, w)
				}
			}
			for _, w := range tc.not {
				if slices.Contains(got, w) {
					t.Errorf("%s completes %q to %q, with %s", name, tc.line, got, w)
				}
			}
		}
	}
}

func TestFlagsFirst(t *testing.T) {
	app := newApp(nil, nil)
	for _, tc := range []struct{ in, want string }{
		{"fabric node show hn1 -o json", "fabric node show -o json hn1"},
		{"fabric --token t node show hn1 --output=json", "fabric --token t node show --output=json hn1"},
		{"fabric node register --mac m --role hwnode --name n", "fabric node register --mac m --role hwnode --name n"},
		{"fabric events -f", "fabric events -f"},
		{"fabric node remove hn1 -- -x", "fabric node remove hn1 -- -x"},
	} {
		got := strings.Join(cliargs.FlagsFirst(app, strings.Fields(tc.in)), " ")
		if got != tc.want {
			t.Errorf("FlagsFirst(%q) = %q; want %q", tc.in, got, tc.want)
		}
	}
}

func TestCLIEventsFollow(t *testing.T) {
	t.Setenv("FABRIC_TOKEN", "")
	cfg, ctl := startController(t)
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"fabric", "--config", cfg, "events", "--follow"}, &out, &errb) }()
	time.Sleep(200 * time.Millisecond)
	if _, err := ctl.Registry().Register(controllerapi.RegisterRequest{Name: "late", MAC: "52:54:00:00:00:77", Role: "hwnode"}); err != nil {
		t.Fatal(err)
	}
	// Give the long poll time to deliver, then stop following like Ctrl-C.
	select {
	case code := <-done:
		t.Fatalf("follow ended by itself with exit %d: %s", code, errb.String())
	case <-time.After(500 * time.Millisecond):
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("follow exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "registered hwnode late (52:54:00:00:00:77)") {
		t.Errorf("follow printed:\n%s", out.String())
	}
}

// No controller is needed to ask for help or the version, and a mistyped
// command is named with the nearest real one.
func TestCLIHelpVersionAndTypos(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		code     int
		out, err string
	}{
		{[]string{"help"}, 0, "USAGE:", ""},
		{[]string{}, 0, "USAGE:", ""},
		{[]string{"version"}, 0, "fabric " + version, ""},
		{[]string{"--version"}, 0, version, ""},
		{[]string{"nod", "list"}, 1, "", `"nod" is not a fabric command; did you mean "node"?`},
		{[]string{"instanse"}, 1, "", `did you mean "instance"?`},
		{[]string{"bogus"}, 1, "", `"bogus" is not a fabric command; see`},
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), append([]string{"fabric"}, tc.args...), &out, &errb)
		if code != tc.code || !strings.Contains(out.String(), tc.out) || !strings.Contains(errb.String(), tc.err) {
			t.Errorf("fabric %v: exit %d, out %q, err %q; want exit %d, out with %q, err with %q", tc.args, code, out.String(), errb.String(), tc.code, tc.out, tc.err)
		}
	}
}

// Mistakes a newcomer makes get a message that says what to do.
func TestCLIMessagesSayWhatToDo(t *testing.T) {
	t.Setenv("FABRIC_TOKEN", "")
	cfg, _ := startController(t)
	dir := t.TempDir()
	otherCA := filepath.Join(dir, "other-ca.crt")
	other, _ := controller.New(controller.Config{StateDir: filepath.Join(dir, "other"), BootSubnet: netip.MustParsePrefix("10.9.0.0/24")})
	defer other.Close()
	if err := os.WriteFile(otherCA, other.CACertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	odd := filepath.Join(dir, "odd.img")
	if err := os.WriteFile(odd, make([]byte, 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--controller", "http://127.0.0.1:8443", "node", "list"}, "uses http; the controller serves HTTPS only: use https://127.0.0.1:8443"},
		{[]string{"--controller", "127.0.0.1:8443", "node", "list"}, "write it as https://HOST:PORT"},
		{[]string{"--controller", "localhost:8443", "node", "list"}, "write it as https://HOST:PORT"},
		{[]string{"--ca", otherCA, "node", "list"}, "not signed by the fabric CA you gave: pass --ca"},
		{[]string{"image", "import", "tiny", dir}, "is a directory; give the raw disk image file"},
		{[]string{"image", "import", "Bad_Name", odd}, `image name "Bad_Name" is not DNS-safe`},
		{[]string{"instance", "create", "Web", "--image", "tiny"}, `instance name "Web" is not DNS-safe`},
		{[]string{"instance", "create", "web", "--image", "tiny", "--memory", "100"}, "--memory 100 is 100 bytes; write a unit, e.g. 512MiB"},
	} {
		code, _, errs := fabric(t, cfg, tc.args...)
		if code == 0 || !strings.Contains(errs, tc.want) {
			t.Errorf("fabric %s: exit %d, stderr %q; want non-zero and %q", strings.Join(tc.args, " "), code, errs, tc.want)
		}
	}
	// An image that is not a whole number of sectors is padded, and the
	// CLI says so (the controller has no storage pool here, so the import
	// itself fails after the note).
	if _, _, errs := fabric(t, cfg, "image", "import", "odd", odd); !strings.Contains(errs, "1000 bytes, not a whole number of 512-byte sectors; the volume is padded with zeros to 1024") {
		t.Errorf("odd-sized image: stderr %q; want the padding note", errs)
	}
}

func TestCLIStatus(t *testing.T) {
	t.Setenv("FABRIC_TOKEN", "")
	cfg, _ := startController(t)
	for _, args := range [][]string{
		{"node", "register", "--mac", "52:54:00:12:34:56", "--role", "hwnode", "--name", "hn1"},
		{"node", "register", "--mac", "52:54:00:12:34:57", "--role", "storage", "--name", "st1"},
	} {
		if code, _, errs := fabric(t, cfg, args...); code != 0 {
			t.Fatal(errs)
		}
	}
	code, out, errs := fabric(t, cfg, "status")
	for _, want := range []string{"hardware nodes:   1: 0 alive, 0 dead, 1 not reporting, 0 drained", "storage nodes:    1", "instances:        none", "N+1 reserve:      met", "recent problems:  none"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("fabric status: exit %d, err %q, output lacks %q:\n%s", code, errs, want, out)
		}
	}
	code, out, _ = fabric(t, cfg, "status", "-o", "json")
	var st controllerapi.Status
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || st.Nodes.HWNodes != 1 || st.Nodes.Storage != 1 {
		t.Errorf("fabric status -o json: exit %d, %v, %+v", code, err, st.Nodes)
	}
}

// TestStatusTablePairs: fabric status shows each storage pair with its
// sync state and owner, and says when there is none.
func TestStatusTablePairs(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	st := controllerapi.Status{Controller: controllerapi.ControllerStatus{Started: now.Add(-time.Hour)}, Reserve: controllerapi.Reserve{Met: true}}
	var b bytes.Buffer
	statusTable(&b, st, now)
	if !strings.Contains(b.String(), "storage pairs:\tnone") {
		t.Errorf("no pairs: %q", b.String())
	}
	st.Pairs = []controllerapi.StoragePairInfo{
		{Name: "p1", Nodes: []string{"sn1", "sn2"}, Owner: "sn1", State: "in sync", FreeBytes: 60 << 30},
		{Name: "p2", Nodes: []string{"sn3", "sn4"}, State: "degraded: sn4 is down", FreeBytes: -1},
	}
	b.Reset()
	statusTable(&b, st, now)
	for _, want := range []string{"storage pairs:\tp1 (sn1+sn2): in sync, owner sn1, 60 GiB free", "\tp2 (sn3+sn4): degraded: sn4 is down, no owner, free space unknown"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("fabric status lacks %q:\n%s", want, b.String())
		}
	}
}

func TestCLIStorage(t *testing.T) {
	t.Setenv("FABRIC_TOKEN", "")
	cfg, ctl := startController(t)
	for _, args := range [][]string{
		{"node", "register", "--mac", "52:54:00:12:34:57", "--role", "storage", "--name", "st1"},
		{"node", "register", "--mac", "52:54:00:12:34:58", "--role", "storage", "--name", "st2"},
		{"node", "register", "--mac", "52:54:00:12:34:56", "--role", "hwnode", "--name", "hn1"},
	} {
		if code, _, errs := fabric(t, cfg, args...); code != 0 {
			t.Fatal(errs)
		}
	}
	if code, _, errs := fabric(t, cfg, "storage", "show", "hn1"); code == 0 || !strings.Contains(errs, "not a storage node") {
		t.Errorf("storage show of a hardware node: exit %d, %q", code, errs)
	}
	// st1's agent enrolls and reports as a pair owner.
	code, out, errs := fabric(t, cfg, "node", "token", "st1")
	if code != 0 {
		t.Fatal(errs)
	}
	tok := strings.TrimSpace(out[strings.LastIndex(strings.TrimSpace(out), " ")+1:])
	id, err := controllerapi.LoadIdentity(filepath.Join(t.TempDir(), "identity.pem"))
	if err != nil {
		t.Fatal(err)
	}
	var cc clientConfig
	b, _ := os.ReadFile(cfg)
	_ = json.Unmarshal(b, &cc)
	agent, err := controllerapi.NewAgentClient(cc.Controller, ctl.CACertPEM(), id)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := agent.Enroll(ctx, "st1", tok); err != nil {
		t.Fatalf("enroll with %q: %v", tok, err)
	}
	pct := 42.0
	if _, err := agent.StorageReport(ctx, controllerapi.StorageReport{Node: "st1", Capacity: controllerapi.StorageCapacity{TotalBytes: 100 << 30, FreeBytes: 60 << 30},
		Interfaces: []controllerapi.StorageIface{{Name: "eth1", MAC: "02:00:00:00:00:01"}},
		Volumes:    []controllerapi.StorageVolume{{Name: "hn1-root", Addr: "e1.0", Size: 20 << 30, IOPS: 2000, ResyncPercent: &pct}},
		Pair:       &controllerapi.StoragePair{Pair: "p1", Peer: "st2", Role: "owner", Epoch: 3, PeerConnected: true, State: "resyncing", Serving: true}}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := agent.StorageReport(ctx, controllerapi.StorageReport{Node: "st2"}, 0); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("st1's certificate reporting for st2: %v", err)
	}
	code, out, errs = fabric(t, cfg, "storage", "list")
	for _, want := range []string{"st1   alive", "p1 (with st2)", "owner, epoch 3", "resyncing", "60 GiB", "st2   never reported"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("fabric storage list: exit %d, %q; output lacks %q:\n%s", code, errs, want, out)
		}
	}
	code, out, errs = fabric(t, cfg, "storage", "show", "st1")
	for _, want := range []string{"60 GiB free of 100 GiB", "eth1 02:00:00:00:00:01", "p1 with st2: owner of epoch 3, resyncing", "hn1-root", "e1.0", "resync 42%", "2000 IOPS"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("fabric storage show st1: exit %d, %q; output lacks %q:\n%s", code, errs, want, out)
		}
	}
	// Drains that would take volumes offline are refused with the reason.
	for node, want := range map[string]string{"st1": "st1's peer st2 is not in sync with it (resyncing)", "st2": "does not report to the controller", "hn9": "no node"} {
		if code, _, errs := fabric(t, cfg, "storage", "drain", node); code == 0 || !strings.Contains(errs, want) {
			t.Errorf("fabric storage drain %s: exit %d, %q; want it refused with %q", node, code, errs, want)
		}
	}
	if code, _, errs := fabric(t, cfg, "storage", "undrain", "st1"); code == 0 || !strings.Contains(errs, "not drained") {
		t.Errorf("fabric storage undrain st1 (not drained): exit %d, %q", code, errs)
	}
	code, out, _ = fabric(t, cfg, "storage", "list", "-o", "json")
	var ns []controllerapi.StorageNode
	if err := json.Unmarshal([]byte(out), &ns); code != 0 || err != nil || len(ns) != 2 || !ns[0].Alive || ns[0].Report.Pair.Epoch != 3 {
		t.Errorf("fabric storage list -o json: exit %d, %v, %+v", code, err, ns)
	}
	checkJSONShapes(t, cfg)
}

// checkJSONShapes runs the read commands with -o json and -o jsonl and
// checks that they agree on one shape: snake_case keys, MACs as strings,
// -o json indented, -o jsonl a line per item of a list.
func checkJSONShapes(t *testing.T, cfg string) {
	t.Helper()
	snake := regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	var walk func(cmd, path string, v any)
	walk = func(cmd, path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				// Maps keyed by data (instances by state, members by node
				// name) are not field names.
				if !strings.HasSuffix(path, ".instances") && !strings.HasSuffix(path, ".members") && !snake.MatchString(k) {
					t.Errorf("%s: key %s.%s is not snake_case", cmd, path, k)
				}
				if strings.Contains(k, "mac") {
					switch x := x.(type) {
					case string:
						if _, err := net.ParseMAC(x); x != "" && err != nil {
							t.Errorf("%s: %s.%s = %q is not a MAC", cmd, path, k, x)
						}
					case []any:
						for _, m := range x {
							if s, ok := m.(string); !ok {
								t.Errorf("%s: %s.%s holds %v, not MAC strings", cmd, path, k, m)
							} else if _, err := net.ParseMAC(s); err != nil {
								t.Errorf("%s: %s.%s holds %q, not a MAC", cmd, path, k, s)
							}
						}
					case nil:
					default:
						t.Errorf("%s: %s.%s = %v (%T), want a MAC string", cmd, path, k, x, x)
					}
				}
				walk(cmd, path+"."+k, x)
			}
		case []any:
			for _, x := range v {
				walk(cmd, path+"[]", x)
			}
		}
	}
	for _, args := range [][]string{
		{"node", "list"}, {"node", "show", "hn1"}, {"storage", "list"}, {"storage", "show", "st1"}, {"storage", "status"},
		{"storage", "pair", "list"}, {"volume", "list"}, {"image", "list"}, {"instance", "list"}, {"token", "list"},
		{"status"}, {"events"},
	} {
		cmd := "fabric " + strings.Join(args, " ")
		code, out, errs := fabric(t, cfg, append(args, "-o", "json")...)
		if code != 0 {
			t.Errorf("%s -o json: exit %d, %s", cmd, code, errs)
			continue
		}
		dec := json.NewDecoder(strings.NewReader(out))
		var all []any
		for {
			var v any
			if err := dec.Decode(&v); err == io.EOF {
				break
			} else if err != nil {
				t.Fatalf("%s -o json: %v\n%s", cmd, err, out)
			}
			all = append(all, v)
			walk(cmd, "", v)
		}
		if len(out) > 4 && !strings.Contains(out, "\n  ") {
			t.Errorf("%s -o json is not indented: %q", cmd, out)
		}
		code, outl, errs := fabric(t, cfg, append(args, "-o", "jsonl")...)
		if code != 0 {
			t.Errorf("%s -o jsonl: exit %d, %s", cmd, code, errs)
			continue
		}
		var lines []any
		for _, l := range strings.Split(strings.TrimSuffix(outl, "\n"), "\n") {
			if l == "" {
				continue
			}
			var v any
			if err := json.Unmarshal([]byte(l), &v); err != nil {
				t.Errorf("%s -o jsonl: line %q: %v", cmd, l, err)
			}
			lines = append(lines, v)
		}
		// A list under -o json is the items -o jsonl gives a line each.
		want := all
		if len(all) == 1 {
			if items, ok := all[0].([]any); ok {
				want = items
			}
		}
		if cmd == "fabric events" || cmd == "fabric status" {
			continue // grows with every call (api.call events, their count)
		}
		if d := cmp.Diff(want, lines, cmpopts.EquateEmpty()); d != "" {
			t.Errorf("%s: -o jsonl differs from -o json (-json +jsonl):\n%s", cmd, d)
		}
	}
}

// TestInstanceDetail: fabric instance show gives HA, priority, group and
// the restart history.
func TestInstanceDetail(t *testing.T) {
	at := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	var b strings.Builder
	instanceDetail(&b, controllerapi.Instance{Name: "web", Node: "hn2", Group: "front", Priority: 7,
		Restarts: []controllerapi.Restart{{At: at, From: "hn1", To: "hn2", Why: "hn1 fenced"}, {At: at.Add(time.Hour), From: "hn2", To: "hn3", Why: "hn2 fenced"}}})
	out := b.String()
	for _, want := range []string{"ha:\tyes: restarted elsewhere if its node fails (priority 7)", "group:\tfront", "restarts:\t" + at.Local().Format(time.RFC3339) + " from hn1 to hn2 (hn1 fenced)", "from hn2 to hn3 (hn2 fenced)"} {
		if !strings.Contains(out, want) {
			t.Errorf("instance detail lacks %q:\n%s", want, out)
		}
	}
	b.Reset()
	instanceDetail(&b, controllerapi.Instance{Name: "solo", NoHA: true})
	if out := b.String(); !strings.Contains(out, "ha:\tno: stays down with its node") || strings.Contains(out, "restarts") {
		t.Errorf("non-HA instance detail:\n%s", out)
	}
}

// TestStorageState: a drained storage node says so, with the way back.
func TestStorageState(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		n    controllerapi.StorageNode
		want string
	}{
		{controllerapi.StorageNode{Name: "sn1"}, "never reported"},
		{controllerapi.StorageNode{Name: "sn1", Report: &controllerapi.StorageReport{}, LastSeen: now.Add(-9 * time.Second)}, "not reporting (last 9s ago)"},
		{controllerapi.StorageNode{Name: "sn1", Alive: true, Report: &controllerapi.StorageReport{}}, "alive"},
		{controllerapi.StorageNode{Name: "sn1", Alive: true, Report: &controllerapi.StorageReport{Drained: true}}, "alive, DRAINED (fabric storage undrain sn1)"},
	} {
		if got := storageState(tc.n, now); !strings.HasPrefix(got, tc.want) {
			t.Errorf("%+v: %q, want %q", tc.n, got, tc.want)
		}
	}
}

// TestCLILimitFlags: --bandwidth takes the README's 100MB/s form; a bad
// value is refused before the controller is asked.
func TestCLILimitFlags(t *testing.T) {
	t.Setenv("FABRIC_TOKEN", "")
	cfg, _ := startController(t)
	if code, _, errs := fabric(t, cfg, "instance", "limit", "nothere", "--iops", "2000", "--bandwidth", "100MB/s"); code == 0 || !strings.Contains(errs, "no instance named") {
		t.Errorf("limit of an unknown instance with good flags: exit %d, %q; want the controller's not found", code, errs)
	}
	if code, _, errs := fabric(t, cfg, "instance", "limit", "web", "--bandwidth", "fast"); code == 0 || !strings.Contains(errs, `--bandwidth "fast"`) {
		t.Errorf("--bandwidth fast: exit %d, %q", code, errs)
	}
	if code, _, errs := fabric(t, cfg, "instance", "limit", "web", "--iops", "-5"); code == 0 || !strings.Contains(errs, "--iops -5") {
		t.Errorf("--iops -5: exit %d, %q", code, errs)
	}
}

// TestCLIPairCreate: `fabric storage pair create` wants two names, and
// passes on the controller's refusals with their reasons; `pair list`
// prints its header with no pair.
func TestCLIPairCreate(t *testing.T) {
	t.Setenv("FABRIC_TOKEN", "")
	cfg, ctl := startController(t)
	if _, err := ctl.Registry().Register(controllerapi.RegisterRequest{Name: "hn1", MAC: "52:54:00:aa:00:01", Role: controllerapi.RoleHWNode}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"sn1"}, "want two storage node names, got 1"},
		{[]string{"sn1", "sn1"}, "sn1 cannot pair with itself"},
		{[]string{"hn1", "sn2"}, "hn1 is a hwnode node, not a storage node"},
		{[]string{"sn1", "sn2"}, `no node named "sn1"`},
	} {
		code, _, errs := fabric(t, cfg, append([]string{"storage", "pair", "create"}, tc.args...)...)
		if code == 0 || !strings.Contains(errs, tc.want) {
			t.Errorf("fabric storage pair create %v: exit %d, %q; want %q", tc.args, code, errs, tc.want)
		}
	}
	if code, out, errs := fabric(t, cfg, "storage", "pair", "list"); code != 0 || !strings.HasPrefix(out, "PAIR") {
		t.Errorf("fabric storage pair list: exit %d, %q %q", code, out, errs)
	}
}

// TestCLIStorageStatus: `fabric storage status` on a controller with
// only a hardware node says no storage node is registered; its JSON has
// every part, empty.
func TestCLIStorageStatus(t *testing.T) {
	t.Setenv("FABRIC_TOKEN", "")
	cfg, ctl := startController(t)
	if _, err := ctl.Registry().Register(controllerapi.RegisterRequest{Name: "hn1", MAC: "52:54:00:aa:00:01", Role: controllerapi.RoleHWNode}); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := fabric(t, cfg, "storage", "status"); code != 0 || !strings.Contains(out, "no storage node is registered") || !strings.Contains(out, "0, 0 not served") {
		t.Errorf("fabric storage status: exit %d, %q %q", code, out, errs)
	}
	code, out, errs := fabric(t, cfg, "storage", "status", "-o", "json")
	var st map[string]any
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil {
		t.Fatalf("fabric storage status -o json: exit %d, %v, %q %q", code, err, out, errs)
	}
	for _, k := range []string{"pairs", "standalone", "volumes", "not_served"} {
		if _, ok := st[k]; !ok {
			t.Errorf("fabric storage status -o json has no %q: %s", k, out)
		}
	}
}

// TestCLIVolumeResize: `fabric volume resize` wants a name and a size, and
// says when there is no such volume.
func TestCLIVolumeResize(t *testing.T) {
	t.Setenv("FABRIC_TOKEN", "")
	cfg, _ := startController(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"inst-a"}, "want NAME SIZE"},
		{[]string{"inst-a", "big"}, `size "big"`},
		{[]string{"inst-a", "1G"}, `no volume "inst-a"`},
	} {
		code, _, errs := fabric(t, cfg, append([]string{"volume", "resize"}, tc.args...)...)
		if code == 0 || !strings.Contains(errs, tc.want) {
			t.Errorf("fabric volume resize %v: exit %d, %q; want %q", tc.args, code, errs, tc.want)
		}
	}
}

// TestRowTableMatchesTabwriter: the node list's column layout is the one
// every other table gets from tabwriter.
func TestRowTableMatchesTabwriter(t *testing.T) {
	rows := [][]string{
		{"NAME", "ROLE", "MAC", "AGENT"},
		{"hn1", "hwnode", "52:54:00:00:00:01", "alive (2 instances)"},
		{"größer-name", "", "52:54:00:00:00:02", "DEAD since 12:00:00"},
		{"x", "storage", "", ""},
	}
	var want, got strings.Builder
	tw := newTable(&want)
	var rt rowTable
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
		rt.add(r...)
	}
	if err := tw.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := rt.write(&got); err != nil {
		t.Fatal(err)
	}
	if got.String() != want.String() {
		t.Errorf("rowTable:\n%s\ntabwriter:\n%s", got.String(), want.String())
	}
}

// TestClientConfigCopied: client.json copied to a workstation with the CA
// and the admin token next to it works, though it names the controller's
// paths.
func TestClientConfigCopied(t *testing.T) {
	t.Setenv("FABRIC_TOKEN", "")
	cfg, _ := startController(t)
	var cc clientConfig
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &cc); err != nil {
		t.Fatal(err)
	}
	ws := t.TempDir()
	for _, f := range []string{cfg, cc.CAFile, cc.TokenFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ws, filepath.Base(f)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The controller's files gone: only the copies can answer.
	if err := os.Rename(cc.CAFile, cc.CAFile+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(cc.TokenFile, cc.TokenFile+".moved"); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := fabric(t, filepath.Join(ws, "client.json"), "node", "list"); code != 0 || !strings.HasPrefix(out, "NAME") {
		t.Errorf("fabric with a copied client.json: exit %d, %q %q", code, out, errs)
	}
	// A missing CA file still says what is missing.
	if err := os.Remove(filepath.Join(ws, filepath.Base(cc.CAFile))); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := fabric(t, filepath.Join(ws, "client.json"), "node", "list"); code == 0 || !strings.Contains(errs, "fabric CA") {
		t.Errorf("fabric with no CA file: exit %d, %q", code, errs)
	}
}

// TestNoPlaceholderQuotes: no flag's help is garbled by a backquote.
func TestNoPlaceholderQuotes(t *testing.T) {
	if bad := cliargs.Placeholders(newApp(io.Discard, io.Discard)); len(bad) > 0 {
		t.Errorf("flags whose usage has a backquote (urfave/cli makes it the value placeholder): %v", bad)
	}
}
