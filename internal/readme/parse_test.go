package readme

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParse(t *testing.T) {
	md := "# T\n\n## One\n\n```\n# on a\nbin/x --flag \\\n    --more   # note\nout 1\nout 2\n\n# on a and b: both\nbin/y\n```\n\n## Other\n\n```\nbin/not-this\n```\n"
	steps, err := Parse(strings.NewReader(md), []string{"One"}, []string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	want := []Step{
		{Section: "One", Line: 7, Machines: []string{"a"}, Cmd: "bin/x --flag --more   # note", Want: []string{"out 1", "out 2"}},
		{Section: "One", Line: 13, Machines: []string{"a", "b"}, Cmd: "bin/y"},
	}
	if d := cmp.Diff(want, steps); d != "" {
		t.Errorf("steps (-want +got):\n%s", d)
	}
	for _, tc := range []struct{ md, want string }{
		{"## One\n```\nbin/x\n```\n", "before any `# on MACHINE`"},
		{"## One\n```\n# on c\nbin/x\n```\n", `no machine "c"`},
		{"## One\n```\n# on a\n\nstray\n```\n", "neither a command nor the output"},
		{"## Two\n```\n# on a\nbin/x\n```\n", `no section "One"`},
	} {
		if _, err := Parse(strings.NewReader(tc.md), []string{"One"}, []string{"a", "b"}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q): %v, want %q", tc.md, err, tc.want)
		}
	}
}

// TestMatchOutput: the README's output lines match what a command printed
// with dates and runs of spaces free.
func TestMatchOutput(t *testing.T) {
	got := "NAME  ROLE    MAC                IP           AGENT                       REGISTERED\nhn9   hwnode  52:54:00:12:34:56  10.233.0.10  not enrolled/not reporting  2026-11-30 07:01:02\n"
	want := []string{"NAME  ROLE    MAC                IP           AGENT                       REGISTERED", "hn9   hwnode  52:54:00:12:34:56  10.233.0.10  not enrolled/not reporting  2026-11-21 12:00:00"}
	if err := MatchOutput(want, got); err != nil {
		t.Error(err)
	}
	if err := MatchOutput([]string{"hn9 hwnode 52:54:00:12:34:56 10.233.0.11"}, got); err == nil {
		t.Error("another address matched")
	}
	if err := MatchOutput(want[1:2], "NAME\n"); err == nil {
		t.Error("a missing row matched")
	}
}
