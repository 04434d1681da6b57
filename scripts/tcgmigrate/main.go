// Command tcgmigrate checks a QEMU for the bug that corrupts software-
// emulated (TCG) guests across live migration (QEMU before 9.0, upstream
// 03bfc2188f; docs/benchmarks.md, "Session 19"). Without libvirt or the
// fabric, it live-migrates the test instance back and forth between two
// QEMU processes on one host, in a network namespace of its own, while a
// client there pings it at 100 Hz and fetches HTTP from it, and reports
// after which rounds the guest's kernel printed trouble (BUG, oops,
// panic). It exits 1 if it did.
//
//	go run ./scripts/tcgmigrate
//	go run ./scripts/tcgmigrate -qemu "/opt/q/usr/bin/qemu-system-x86_64 -L /opt/q/usr/share/qemu -L /opt/q/usr/share/seabios -L /usr/lib/ipxe/qemu"
//
// It needs root, the images of `make images` and ping, curl and ip.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/fabric-project/fabric/internal/lab"
	"github.com/fabric-project/fabric/storagenode"
)

const guestIP = "10.9.0.50"

func main() {
	qemu := flag.String("qemu", "qemu-system-x86_64", "QEMU command: the binary and any options before the machine's (-L DIR)")
	images := flag.String("images", "work/images", "scripts/images.sh output")
	rounds := flag.Int("rounds", 60, "migrations")
	downtime := flag.Int("downtime", 50, "migration downtime-limit in ms (the fabric's agents set 50)")
	pause := flag.Duration("pause", time.Second, "guest run time between migrations")
	// A slow migration under many interrupts: more dirty-page syncs,
	// each followed by more kernel writes in interrupts. With these,
	// QEMU 7.2 broke the guest after the 2nd and 7th of 60 migrations;
	// at QEMU's default bandwidth and a 10 Hz ping, after 2 of 150 in
	// one run and 0 of 150 in two others.
	bandwidth := flag.Int("bandwidth", 16, "migration max-bandwidth in MiB/s (0: QEMU's default); lower makes more dirty-page syncs per migration")
	pingEvery := flag.Duration("ping", 10*time.Millisecond, "client ping interval (more interrupts in the guest)")
	dir := flag.String("dir", "", "work directory (default: a new one in /tmp, removed unless the guest broke)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	broke, err := run(ctx, strings.Fields(*qemu), *images, *rounds, *downtime, *bandwidth, *pause, *pingEvery, *dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tcgmigrate:", err)
		os.Exit(2)
	}
	if broke {
		os.Exit(1)
	}
}

func run(ctx context.Context, qemu []string, images string, rounds, downtime, bandwidth int, pause, pingEvery time.Duration, dir string) (broke bool, err error) {
	if len(qemu) == 0 {
		return false, errors.New("no QEMU command")
	}
	ver, err := exec.Command(qemu[0], "-version").Output()
	if err != nil {
		return false, fmt.Errorf("%s -version: %w", qemu[0], err)
	}
	version := strings.SplitN(strings.TrimSpace(string(ver)), "\n", 2)[0]
	if dir == "" {
		if dir, err = os.MkdirTemp("", "tcgmigrate-"); err != nil {
			return false, err
		}
		defer func() {
			if !broke {
				os.RemoveAll(dir)
			}
		}()
	}
	if _, err := storagenode.CopyFile(filepath.Join(images, "instance-template.img"), filepath.Join(dir, "disk.img")); err != nil {
		return false, fmt.Errorf("the instance's disk (make images): %w", err)
	}
	ns := fmt.Sprintf("tcgm%d", os.Getpid())
	if err := network(ns); err != nil {
		exec.Command("ip", "netns", "del", ns).Run()
		return false, err
	}
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			if p.Process != nil {
				syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
				p.Wait()
			}
		}
		exec.Command("ip", "netns", "del", ns).Run()
	}()
	start := func(log string, args ...string) (*exec.Cmd, error) {
		f, err := os.Create(filepath.Join(dir, log))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		c := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
		c.Stdout, c.Stderr = f, f
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := c.Start(); err != nil {
			return nil, err
		}
		procs = append(procs, c)
		return c, nil
	}
	serial := filepath.Join(dir, "serial.log")
	type side struct {
		cmd *exec.Cmd
		qmp *qmp
	}
	startQEMU := func(n int, incoming bool) (side, error) {
		sock := filepath.Join(dir, fmt.Sprintf("qmp%d.sock", n))
		os.Remove(sock)
		args := append(append([]string{}, qemu...),
			"-machine", "pc,usb=off", "-accel", "tcg", "-m", "128", "-smp", "1", "-nodefaults", "-display", "none", "-rtc", "base=utc",
			"-kernel", filepath.Join(images, "instance", "vmlinuz"), "-initrd", filepath.Join(images, "instance", "initrd.img"),
			"-append", "console=ttyS0 panic=-1 quiet fabric.name=web fabric.ip="+guestIP+"/24",
			"-drive", "file="+filepath.Join(dir, "disk.img")+",if=none,id=d0,format=raw,cache=none",
			"-device", "virtio-blk-pci,drive=d0",
			"-netdev", fmt.Sprintf("tap,id=n0,ifname=tap%d,script=no,downscript=no", n),
			"-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56",
			"-chardev", "file,id=s0,path="+serial+",append=on", "-serial", "chardev:s0",
			"-qmp", "unix:"+sock+",server=on,wait=off")
		if incoming {
			// As libvirt does: paused until told to continue.
			args = append(args, "-S", "-incoming", "tcp:127.0.0.1:4444")
		}
		c, err := start(fmt.Sprintf("qemu%d.log", n), args...)
		if err != nil {
			return side{}, err
		}
		var q *qmp
		for i := 0; i < 200; i++ {
			if q, err = dialQMP(sock); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			log, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("qemu%d.log", n)))
			return side{}, fmt.Errorf("QMP of QEMU %d: %w\n%s", n, err, log)
		}
		return side{c, q}, nil
	}

	cur, err := startQEMU(0, false)
	if err != nil {
		return false, err
	}
	t0 := time.Now()
	for {
		b, _ := os.ReadFile(serial)
		if strings.Contains(string(b), "FABRIC-INSTANCE-READY") {
			break
		}
		if time.Since(t0) > 3*time.Minute || ctx.Err() != nil {
			return false, fmt.Errorf("the guest did not come up in %v:\n%s", time.Since(t0).Round(time.Second), b)
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Printf("%s: guest up in %.1f s; %d migrations, downtime-limit %d ms, max-bandwidth %d MiB/s (0: default), %v between them, ping every %v\n",
		version, time.Since(t0).Seconds(), rounds, downtime, bandwidth, pause, pingEvery)
	ping, err := start("ping.log", "ping", "-i", fmt.Sprintf("%.3f", pingEvery.Seconds()), "-q", guestIP)
	if err != nil {
		return false, err
	}
	if _, err := start("http.log", "bash", "-c", "while :; do curl -s -o /dev/null -m 2 -w '%{http_code}\\n' http://"+guestIP+"/; sleep 0.1; done"); err != nil {
		return false, err
	}
	seen := 0 // bytes of the serial log read
	var brokeAfter []int
	n := 0
	for i := 1; i <= rounds && ctx.Err() == nil; i++ {
		time.Sleep(pause)
		n = 1 - n
		next, err := startQEMU(n, true)
		if err != nil {
			return false, err
		}
		params := map[string]any{"downtime-limit": downtime}
		if bandwidth > 0 {
			params["max-bandwidth"] = bandwidth << 20
		}
		if _, err := cur.qmp.do("migrate-set-parameters", params); err != nil {
			return false, err
		}
		if _, err := cur.qmp.do("migrate", map[string]any{"uri": "tcp:127.0.0.1:4444"}); err != nil {
			return false, err
		}
		t1 := time.Now()
		status := ""
		for status != "completed" {
			r, err := cur.qmp.do("query-migrate", nil)
			if err != nil {
				return false, err
			}
			var m struct {
				Status string `json:"status"`
			}
			json.Unmarshal(r, &m)
			if status = m.Status; status == "failed" || status == "cancelled" || time.Since(t1) > time.Minute {
				return false, fmt.Errorf("round %d: migration %s after %v", i, status, time.Since(t1))
			}
			time.Sleep(20 * time.Millisecond)
		}
		if _, err := next.qmp.do("cont", nil); err != nil {
			return false, err
		}
		cur.qmp.do("quit", nil)
		cur.cmd.Wait()
		cur = next
		// What the guest printed since the last round (a panic reboots
		// it: panic=-1).
		b, _ := os.ReadFile(serial)
		if ex, ok := lab.KernelTrouble(string(b[min(seen, len(b)):])); ok {
			fmt.Printf("round %d: the guest's kernel broke: %s\n", i, strings.SplitN(ex, "\n", 2)[0])
			brokeAfter = append(brokeAfter, i)
		}
		seen = len(b)
		if i%25 == 0 {
			fmt.Printf("round %d done, last migration %.2f s\n", i, time.Since(t1).Seconds())
		}
	}
	syscall.Kill(-ping.Process.Pid, syscall.SIGINT)
	ping.Wait()
	pl, _ := os.ReadFile(filepath.Join(dir, "ping.log"))
	loss := regexp.MustCompile(`\d+ packets transmitted, \d+ received.*`).FindString(string(pl))
	fmt.Printf("%s: %d migrations; guest kernel broke after %d of them %v; pings: %s\n", version, rounds, len(brokeAfter), brokeAfter, loss)
	if len(brokeAfter) > 0 {
		fmt.Printf("serial log kept in %s\n", serial)
	}
	return len(brokeAfter) > 0, ctx.Err()
}

// network makes namespace ns with a bridge at 10.9.0.1/24 and two taps on
// it, tap0 and tap1, one for each QEMU.
func network(ns string) error {
	for _, c := range [][]string{
		{"netns", "add", ns},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "link", "add", "brm", "type", "bridge", "stp_state", "0", "forward_delay", "0"},
		{"-n", ns, "addr", "add", "10.9.0.1/24", "dev", "brm"},
		{"-n", ns, "link", "set", "brm", "up"},
		{"-n", ns, "tuntap", "add", "tap0", "mode", "tap"},
		{"-n", ns, "link", "set", "tap0", "master", "brm", "up"},
		{"-n", ns, "tuntap", "add", "tap1", "mode", "tap"},
		{"-n", ns, "link", "set", "tap1", "master", "brm", "up"},
	} {
		if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(c, " "), err, out)
		}
	}
	return nil
}

// qmp is a QEMU monitor connection.
type qmp struct {
	c net.Conn
	r *bufio.Reader
}

func dialQMP(sock string) (*qmp, error) {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return nil, err
	}
	q := &qmp{c: c, r: bufio.NewReader(c)}
	if _, err := q.r.ReadBytes('\n'); err != nil { // the greeting
		c.Close()
		return nil, err
	}
	if _, err := q.do("qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

// do runs a command and returns its "return" value; events in between are
// skipped.
func (q *qmp) do(cmd string, args map[string]any) (json.RawMessage, error) {
	m := map[string]any{"execute": cmd}
	if args != nil {
		m["arguments"] = args
	}
	b, _ := json.Marshal(m)
	q.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := q.c.Write(append(b, '\n')); err != nil {
		return nil, err
	}
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			if cmd == "quit" {
				return nil, nil
			}
			return nil, fmt.Errorf("QMP %s: %w", cmd, err)
		}
		var r struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Desc string `json:"desc"`
			} `json:"error"`
		}
		if json.Unmarshal(line, &r) != nil {
			continue
		}
		if r.Error != nil {
			return nil, fmt.Errorf("QMP %s: %s", cmd, r.Error.Desc)
		}
		if r.Return != nil {
			return r.Return, nil
		}
	}
}
