package hwnode

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

func TestConsoleTail(t *testing.T) {
	dir := t.TempDir()
	log := "boot line 1\nboot line 2\nFABRIC-INSTANCE data disk mounted\n"
	if err := os.WriteFile(serialLog(dir, "web"), []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	size := int64(len(log))
	for _, tc := range []struct {
		req          controllerapi.ConsoleRequest
		offset       int64
		data, errHas string
	}{
		{controllerapi.ConsoleRequest{ID: 1, Instance: "web", From: -1, Max: 10}, size - 10, log[size-10:], ""},
		{controllerapi.ConsoleRequest{ID: 2, Instance: "web", From: -1, Max: 1 << 20}, 0, log, ""},
		{controllerapi.ConsoleRequest{ID: 3, Instance: "web", From: 12, Max: 1 << 20}, 12, log[12:], ""},
		{controllerapi.ConsoleRequest{ID: 4, Instance: "web", From: 12, Max: 5}, 12, log[12:17], ""},
		{controllerapi.ConsoleRequest{ID: 5, Instance: "web", From: size, Max: 5}, size, "", ""},
		// Past the end: the log began again (another node's); its end.
		{controllerapi.ConsoleRequest{ID: 6, Instance: "web", From: size + 100, Max: 8}, size - 8, log[size-8:], ""},
		{controllerapi.ConsoleRequest{ID: 7, Instance: "db", From: -1, Max: 8}, 0, "", "no console log for db"},
	} {
		got := consoleTail(dir, tc.req)
		if got.ID != tc.req.ID || got.Offset != tc.offset || string(got.Data) != tc.data || !strings.Contains(got.Error, tc.errHas) || tc.errHas == "" && got.Error != "" {
			t.Errorf("request %+v: got offset %d data %q error %q; want offset %d data %q error with %q", tc.req, got.Offset, got.Data, got.Error, tc.offset, tc.data, tc.errHas)
		}
		if tc.errHas == "" && got.Size != size {
			t.Errorf("request %+v: size %d, want %d", tc.req, got.Size, size)
		}
	}
	if got := consoleTail("", controllerapi.ConsoleRequest{Instance: "web", From: -1, Max: 8}); !strings.Contains(got.Error, "--serial-dir") {
		t.Errorf("no serial dir: %q", got.Error)
	}
	if got := consoleTail(filepath.Join(dir, "nope"), controllerapi.ConsoleRequest{Instance: "web", From: -1, Max: 8}); got.Error == "" {
		t.Error("a missing directory gave no error")
	}
}

// TestConsoleAnsweredOnce: a request is answered in one heartbeat, not in
// every heartbeat while the desired state still lists it.
func TestConsoleAnsweredOnce(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(serialLog(dir, "web"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: Config{SerialDir: dir}}
	count := func() int {
		a.mu.Lock()
		defer a.mu.Unlock()
		ts := a.consoleAnswers()
		for _, ct := range ts {
			if string(ct.Data) != "hello\n"[max(0, ct.Offset):] {
				t.Errorf("answer %+v", ct)
			}
		}
		return len(ts)
	}
	reqs := []controllerapi.ConsoleRequest{{ID: 7, Instance: "web", From: -1, Max: 100}}
	a.wantConsoles(reqs)
	if n := count(); n != 1 {
		t.Fatalf("first heartbeat answered %d requests, want 1", n)
	}
	a.wantConsoles(reqs) // the same desired state again
	if n := count(); n != 0 {
		t.Errorf("second heartbeat answered %d requests again", n)
	}
	a.wantConsoles(append(reqs, controllerapi.ConsoleRequest{ID: 8, Instance: "web", From: 6, Max: 100}))
	if n := count(); n != 1 {
		t.Errorf("a new request: answered %d, want 1", n)
	}
}
