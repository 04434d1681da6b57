package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fabric-project/fabric/internal/netns"
)

// TestDebianPackages builds the packages (scripts/deb.sh), installs them
// with dpkg in a throwaway root (overlays on /usr, /etc, /var and /run in
// a mount namespace of a fresh network namespace: the machine's own files
// never change), checks the units with systemd-analyze verify, and runs
// each unit's ExecStart line as systemd would (its user, groups and
// ambient capabilities, its EnvironmentFile read, $VAR split into words):
// the controller (as the system user fabric) answers `fabric node list` with
// the client.json it wrote, the storage node serves AoE on eth1, the disk
// server listens on its control socket. Then dpkg -r removes it all.
func TestDebianPackages(t *testing.T) {
	netns.Skip(t)
	for _, b := range []string{"dpkg-deb", "dpkg", "unshare", "systemd-analyze"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed (scripts/deps.sh)", b)
		}
	}
	out := t.TempDir()
	b, err := exec.Command("../../scripts/deb.sh", out).CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/deb.sh: %v\n%s", err, b)
	}
	debs, _ := filepath.Glob(filepath.Join(out, "*.deb"))
	if len(debs) != 2 {
		t.Fatalf("scripts/deb.sh made %v", debs)
	}
	ns := netns.New(t, "fdeb")
	// The storage node's and the disk server's interfaces, as the
	// default /etc/fabric/*.conf name them.
	ns.Must(t, "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
	ns.Must(t, "ip", "link", "add", "br0", "type", "bridge")
	for _, l := range []string{"eth1", "eth1p", "br0"} {
		ns.Must(t, "ip", "link", "set", l, "up")
	}
	root := t.TempDir()
	script := `
set -eu
for d in usr etc var run; do
  mkdir -p "$ROOT/upper/$d" "$ROOT/work/$d"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$ROOT/upper/$d,workdir=$ROOT/work/$d" "/$d"
done
dpkg -i "$@" >/dev/null
echo "== installed: $(dpkg-query -W -f '${Package} ${Version} ' fabric fabricd)"
systemd-analyze verify /lib/systemd/system/fabricd-*.service
echo "== verify ok"
echo "== user: $(getent passwd fabric | cut -d: -f1,6,7)"
# unit ROLE: the command line systemd would run for fabricd-ROLE.service:
# its User=, SupplementaryGroups= and AmbientCapabilities= (setpriv), its
# EnvironmentFile read, its ExecStart.
unit() {
  local u=/lib/systemd/system/fabricd-$1.service
  local env=$(sed -n 's/^EnvironmentFile=//p' "$u")
  local user=$(sed -n 's/^User=//p' "$u")
  if [ -n "$user" ]; then
    local caps=$(sed -n 's/^AmbientCapabilities=//p' "$u" | tr 'A-Z ' 'a-z,' | sed 's/cap_//g; s/[^,][^,]*/+&/g')
    local groups=$(sed -n 's/^Group=//p' "$u")$(sed -n 's/^SupplementaryGroups=/,/p' "$u")
    printf '%s\n' setpriv --reuid="$user" --regid="$(sed -n 's/^Group=//p' "$u")" --groups="$groups" \
      --inh-caps="$caps" --ambient-caps="$caps" --bounding-set=-all,"$caps" --
  fi
  ( set -a; . "$env"; eval "printf '%s\n' $(sed -n 's/^ExecStart=//p' "$u")" )
}
pids=""
start() {
  mapfile -t cmd < <(unit "$1")
  echo "== fabricd-$1.service: ${cmd[*]}"
  "${cmd[@]}" >"$ROOT/$1.log" 2>&1 &
  pids="$pids $!"
  eval "pid_${1//-/_}=$!"
}
trap 'for p in $pids; do kill $p 2>/dev/null || true; done; wait' EXIT
start controller
start storage
start hwnode-disks
for i in $(seq 1 100); do [ -f /var/lib/fabric/controller/client.json ] && break; sleep 0.1; done
for i in $(seq 1 50); do fabric --config /var/lib/fabric/controller/client.json node list >"$ROOT/list.out" 2>&1 && break; sleep 0.2; done
echo "== fabric node list:"; cat "$ROOT/list.out"
for i in $(seq 1 50); do [ -S /run/fabric/hwnode-disks.sock ] && break; sleep 0.1; done
[ -S /run/fabric/hwnode-disks.sock ] && echo "== disk server socket"
sleep 1
grep -h '"serving AoE"' "$ROOT/storage.log" | head -1
for p in $pids; do kill -0 $p && echo "== pid alive"; done
echo "== controller runs as $(ps -o user= -p $pid_controller), storage as $(ps -o user= -p $pid_storage), disk server as $(ps -o user= -p $pid_hwnode_disks)"
echo "== controller state owned by $(stat -c %U /var/lib/fabric/controller/fabric.db)"
dpkg -r fabricd fabric >/dev/null
[ ! -e /usr/bin/fabricd ] && echo "== removed"
`
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, "unshare", "-m", "--propagation", "private", "bash", "-c", script, "deb-test"}, debs...)...)
	cmd.Env = append(os.Environ(), "ROOT="+root)
	b, err = cmd.CombinedOutput()
	o := string(b)
	t.Logf("%s", o)
	if err != nil {
		for _, l := range []string{"controller", "storage", "hwnode-disks"} {
			log, _ := os.ReadFile(filepath.Join(root, l+".log"))
			t.Logf("%s.log:\n%s", l, log)
		}
		t.Fatalf("installing and running the packages: %v", err)
	}
	for _, want := range []string{"== installed: fabric 0~git", "== user: fabric:/var/lib/fabric:/usr/sbin/nologin", "== verify ok", "== fabric node list:\nNAME", "== disk server socket",
		`"serving AoE","iface":"eth1"`, "== controller runs as fabric, storage as fabric, disk server as root", "== controller state owned by fabric", "== removed"} {
		if !strings.Contains(o, want) {
			t.Errorf("no %q in the output", want)
		}
	}
	if n := strings.Count(o, "== pid alive"); n != 3 {
		t.Errorf("%d of the 3 daemons still run a second after starting", n)
	}
	for _, p := range []string{"/usr/bin/fabricd", "/etc/fabric", "/lib/systemd/system/fabricd-controller.service"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s exists on the machine after the test", p)
		}
	}
}
