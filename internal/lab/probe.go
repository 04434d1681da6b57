package lab

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

// Prober pings an address at 10 Hz and 1 Hz and fetches HTTP from it in a
// loop (a new TCP connection each time), from the client namespace, until
// stopped: what a user of the instance would see.
type Prober struct {
	fast, slow, http *exec.Cmd
	files            [3]string
}

// PingStats is one ping's account.
type PingStats struct {
	Sent, Answered int
	MaxGap         time.Duration // longest time between two replies
	// First is when the first reply came, GapFrom when the reply before
	// the longest gap came (both Unix seconds, ping's -D).
	First, GapFrom float64
	// Unanswered are the probes that never got a reply, by icmp_seq,
	// with when ping noticed (-O: as it sent the next one).
	Unanswered []Unanswered
}

// Unanswered is a probe that got no reply.
type Unanswered struct {
	Seq int
	At  time.Time
}

// LostRanges describes the unanswered probes as runs of consecutive
// sequence numbers: "icmp_seq 35-74 (04:40:12.300-04:40:16.200)".
func (s PingStats) LostRanges() []string {
	var out []string
	for i := 0; i < len(s.Unanswered); {
		j := i
		for j+1 < len(s.Unanswered) && s.Unanswered[j+1].Seq == s.Unanswered[j].Seq+1 {
			j++
		}
		a, b := s.Unanswered[i], s.Unanswered[j]
		out = append(out, fmt.Sprintf("icmp_seq %d-%d (%s-%s)", a.Seq, b.Seq, a.At.Format("15:04:05.000"), b.At.Format("15:04:05.000")))
		i = j + 1
	}
	return out
}

// Lost is the number of pings that got no reply.
func (s PingStats) Lost() int { return s.Sent - s.Answered }

// HTTPStats is the HTTP loop's account.
type HTTPStats struct {
	OK, Failed int
	MaxLatency time.Duration
}

// StartProber starts probing ip; its logs go to dir.
func (l *Lab) StartProber(ip, dir string) (*Prober, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	p := &Prober{}
	for i, n := range []string{"ping10", "ping1", "http"} {
		p.files[i] = filepath.Join(dir, n+".log")
	}
	start := func(out string, name string, args ...string) (*exec.Cmd, error) {
		f, err := os.Create(out)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		c := exec.Command("ip", append([]string{"netns", "exec", l.ClientNS, name}, args...)...)
		c.Stdout, c.Stderr = f, f
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		return c, c.Start()
	}
	var err error
	if p.fast, err = start(p.files[0], "ping", "-i", "0.1", "-D", "-O", "-W", "1", ip); err != nil {
		return nil, err
	}
	if p.slow, err = start(p.files[1], "ping", "-i", "1", "-D", "-O", "-W", "1", ip); err != nil {
		p.kill()
		return nil, err
	}
	if p.http, err = start(p.files[2], "bash", "-c", fmt.Sprintf(`while :; do curl -s -o /dev/null -m 3 -w '%%{http_code} %%{time_total}\n' http://%s/ || echo FAIL; sleep 0.1; done`, ip)); err != nil {
		p.kill()
		return nil, err
	}
	return p, nil
}

// kill ends the probes; a second call does nothing (a test's cleanup
// calls it again after Stop).
func (p *Prober) kill() {
	for _, c := range []*exec.Cmd{p.fast, p.slow} {
		if c != nil && c.Process != nil {
			_ = syscall.Kill(c.Process.Pid, syscall.SIGINT)
			_ = c.Wait()
		}
	}
	if p.http != nil && p.http.Process != nil {
		_ = syscall.Kill(-p.http.Process.Pid, syscall.SIGKILL)
		_ = p.http.Wait()
	}
	p.fast, p.slow, p.http = nil, nil, nil
}

// Kill ends the probes without reading them: for a test's cleanup, so that
// a failed test leaves no ping running.
func (p *Prober) Kill() { p.kill() }

var (
	replyRE = regexp.MustCompile(`^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)`)
	noAnsRE = regexp.MustCompile(`^\[(\d+\.\d+)\] no answer yet for icmp_seq=(\d+)`)
	sentRE  = regexp.MustCompile(`(\d+) packets transmitted`)
)

// Stop ends the probes and reads their results. It first lets every
// probe already sent reach its reply deadline (-W 1): stopping ping while
// a reply is in flight (the migration just returned, the guest resumed a
// few milliseconds ago) would count that probe as lost.
func (p *Prober) Stop() (fast, slow PingStats, h HTTPStats, err error) {
	time.Sleep(1100 * time.Millisecond)
	p.kill()
	parse := func(path string) (PingStats, error) {
		var s PingStats
		b, err := os.ReadFile(path)
		if err != nil {
			return s, err
		}
		seen := map[int]bool{}
		var noAns []Unanswered
		var last float64
		for _, line := range strings.Split(string(b), "\n") {
			if m := noAnsRE.FindStringSubmatch(line); m != nil {
				ts, _ := strconv.ParseFloat(m[1], 64)
				seq, _ := strconv.Atoi(m[2])
				noAns = append(noAns, Unanswered{Seq: seq, At: time.Unix(0, int64(ts*1e9))})
			}
			if m := replyRE.FindStringSubmatch(line); m != nil {
				ts, _ := strconv.ParseFloat(m[1], 64)
				seq, _ := strconv.Atoi(m[2])
				seen[seq] = true
				if gap := time.Duration((ts - last) * float64(time.Second)); last > 0 && gap > s.MaxGap {
					s.MaxGap, s.GapFrom = gap, last
				}
				if s.First == 0 {
					s.First = ts
				}
				last = ts
			}
			if m := sentRE.FindStringSubmatch(line); m != nil {
				s.Sent, _ = strconv.Atoi(m[1])
			}
		}
		s.Answered = len(seen)
		for _, u := range noAns {
			if !seen[u.Seq] {
				s.Unanswered = append(s.Unanswered, u)
			}
		}
		if s.Sent == 0 {
			return s, fmt.Errorf("ping summary missing in %s:\n%s", path, b)
		}
		return s, nil
	}
	if fast, err = parse(p.files[0]); err != nil {
		return
	}
	if slow, err = parse(p.files[1]); err != nil {
		return
	}
	f, err := os.Open(p.files[2])
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 2 && fs[0] == "200" {
			h.OK++
			if v, err := strconv.ParseFloat(fs[1], 64); err == nil && time.Duration(v*float64(time.Second)) > h.MaxLatency {
				h.MaxLatency = time.Duration(v * float64(time.Second))
			}
		} else if len(fs) > 0 {
			h.Failed++
		}
	}
	return fast, slow, h, sc.Err()
}

// GuestIO is the test instance's write-verify loop on its data disk
// (images/instance/init, GET /cgi-bin/wv): passes made, passes that failed
// (an I/O error or a wrong read back), and the longest pass since the last
// reset, measured inside the guest.
type GuestIO struct {
	Passes, Errors int
	Longest        time.Duration
}

var guestIORE = regexp.MustCompile(`passes=(\d+) errors=(\d+) maxpass_ms=(\d+)`)

// GuestIO asks the instance at ip about its write-verify loop; op "start"
// starts it, "reset" restarts the longest-pass count, "" only reads.
func (l *Lab) GuestIO(ip, op string) (GuestIO, error) {
	var g GuestIO
	out, err := In(l.ClientNS, "curl", "-s", "-m", "10", "http://"+ip+"/cgi-bin/wv?"+op)
	m := guestIORE.FindStringSubmatch(out)
	if err != nil || m == nil {
		return g, fmt.Errorf("the guest's write-verify loop (%s): %v %q", op, err, out)
	}
	g.Passes, _ = strconv.Atoi(m[1])
	g.Errors, _ = strconv.Atoi(m[2])
	ms, _ := strconv.Atoi(m[3])
	g.Longest = time.Duration(ms) * time.Millisecond
	return g, nil
}

// PairInfo is the lab's storage pair as the controller sees it.
func (l *Lab) PairInfo() (controllerapi.StoragePairInfo, error) {
	var ps []controllerapi.StoragePairInfo
	out, err := l.Fabric("storage", "pair", "list", "-o", "json")
	if err != nil {
		return controllerapi.StoragePairInfo{}, err
	}
	if err := json.Unmarshal([]byte(out), &ps); err != nil || len(ps) != 1 {
		return controllerapi.StoragePairInfo{}, fmt.Errorf("storage pairs: %v %q", err, out)
	}
	return ps[0], nil
}

// WaitPairInSync waits until the lab's pair is in sync, and says how long
// that took.
func (l *Lab) WaitPairInSync(within time.Duration) (time.Duration, error) {
	t0 := time.Now()
	err := waitFor(within, func() bool {
		p, err := l.PairInfo()
		return err == nil && p.State == "in sync"
	})
	if err != nil {
		out, _ := l.Fabric("storage", "pair", "list")
		return 0, fmt.Errorf("the pair is not in sync within %v: %w\n%s", within, err, out)
	}
	return time.Since(t0), nil
}
