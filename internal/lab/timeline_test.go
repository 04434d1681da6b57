package lab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFDBEvents(t *testing.T) {
	p := filepath.Join(t.TempDir(), "fdb-sw0.log")
	log := "Timestamp: Tue Dec  1 04:50:51 2026 220186 usec\n" +
		"02:00:00:00:00:99 dev pa master swx \n" +
		"Timestamp: Tue Dec  1 04:50:52 2026 7 usec\n" +
		"Deleted 02:00:00:00:00:99 dev pb master swx \n" +
		"garbage\n"
	if err := os.WriteFile(p, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	evs := fdbEvents(p)
	if len(evs) != 2 {
		t.Fatalf("got %d events, want 2: %v", len(evs), evs)
	}
	want := time.Date(2026, 12, 1, 4, 50, 51, 220186000, time.Local)
	if !evs[0].At.Equal(want) || evs[0].Text != "02:00:00:00:00:99 dev pa master swx" {
		t.Errorf("first event %v %q, want %v", evs[0].At, evs[0].Text, want)
	}
	if got := evs[1].At.Sub(evs[0].At); got != 779821*time.Microsecond {
		t.Errorf("second event %v after the first, want 779.821ms", got)
	}
}

func TestLostRanges(t *testing.T) {
	at := time.Date(2026, 12, 1, 4, 0, 0, 0, time.Local)
	s := PingStats{Unanswered: []Unanswered{{3, at}, {4, at.Add(100 * time.Millisecond)}, {5, at.Add(200 * time.Millisecond)}, {9, at.Add(time.Second)}}}
	got := s.LostRanges()
	want := []string{"icmp_seq 3-5 (04:00:00.000-04:00:00.200)", "icmp_seq 9-9 (04:00:01.000-04:00:01.000)"}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("LostRanges = %q, want %q", got, want)
	}
}

func TestGuestCrashes(t *testing.T) {
	dir := t.TempDir()
	l := &Lab{Hosts: []Host{{Name: "hn1", Dir: filepath.Join(dir, "hn1")}, {Name: "hn2", Dir: filepath.Join(dir, "hn2")}}}
	write := func(host, text string) {
		p := filepath.Join(dir, host, "log", "qemu", "web.serial.log")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("hn1", "FABRIC-INSTANCE data disk mounted\nFABRIC-INSTANCE-READY name=web\nDEBUG: not a crash\n")
	if c := l.GuestCrashes(); len(c) != 0 {
		t.Fatalf("a clean boot read as %d crashes: %v", len(c), c)
	}
	write("hn2", "FABRIC-INSTANCE-READY name=web\n[ 324.753420] kernel BUG at lib/list_debug.c:27!\n[ 324.759846] RIP: 0010:__list_add_valid.cold+0x4b/0x5b\n")
	c := l.GuestCrashes()
	if len(c) != 1 || !strings.Contains(c[0].Log, "hn2") || !strings.HasPrefix(c[0].Excerpt, "[ 324.753420] kernel BUG at") || !strings.Contains(c[0].Excerpt, "RIP:") {
		t.Fatalf("GuestCrashes = %+v, want hn2's BUG and the lines after it", c)
	}
}
