#!/usr/bin/env bash
# deb.sh: the Debian packages, from this checkout.
#   fabric   the admin CLI (/usr/bin/fabric)
#   fabricd  the daemon (/usr/bin/fabricd) with a systemd unit per role
#            (fabricd-controller, fabricd-storage, fabricd-hwnode-disks,
#            fabricd-hwnode; none enabled), their flags in /etc/fabric/*.conf
#            (conffiles), the system user fabric (sysusers.d) that the
#            controller and storage node run as, directories from tmpfiles.d, and the libvirtd
#            configuration a hardware node needs (/usr/share/doc/fabricd).
# Usage: scripts/deb.sh [OUTDIR]   (default work/deb); BIN=DIR uses binaries
# already built there instead of building them.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-work/deb}")
mkdir -p "$out"
describe=$(git describe --always --dirty 2>/dev/null || echo dev)
# Debian versions start with a digit; no tag yet, so 0~git.<describe>.
version="0~git.$(echo "$describe" | tr -c 'A-Za-z0-9.+~\n' '.')"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
bin=${BIN:-}
if [ -z "$bin" ]; then
  bin=$stage/bin
  CGO_ENABLED=0 go build -buildvcs=false -ldflags "-X main.version=$describe" -o "$bin/" ./cmd/fabric ./cmd/fabricd
fi
arch=$(dpkg --print-architecture)

# fabric: the CLI.
p="$stage/fabric"
install -D -m 0755 "$bin/fabric" "$p/usr/bin/fabric"
install -D -m 0644 README.md "$p/usr/share/doc/fabric/README.md"
mkdir -p "$p/DEBIAN"
cat > "$p/DEBIAN/control" <<CTL
Package: fabric
Version: $version
Architecture: $arch
Maintainer: Fabric <fabric@localhost>
Section: admin
Priority: optional
Description: diskless cloud fabric: the admin CLI
 Registers nodes by MAC, creates, starts and migrates instances, drains
 nodes, makes storage pairs; talks to the controller's HTTPS API
 (client.json, the fabric CA and the admin credential).
CTL

# fabricd: the daemon and its units.
p="$stage/fabricd"
install -D -m 0755 "$bin/fabricd" "$p/usr/bin/fabricd"
for u in fabricd-controller fabricd-storage fabricd-hwnode-disks fabricd-hwnode; do
  install -D -m 0644 "scripts/deb/$u.service" "$p/lib/systemd/system/$u.service"
done
for c in controller storage hwnode; do
  install -D -m 0644 "scripts/deb/$c.conf" "$p/etc/fabric/$c.conf"
done
install -D -m 0644 scripts/deb/tmpfiles.conf "$p/usr/lib/tmpfiles.d/fabricd.conf"
install -D -m 0644 scripts/deb/sysusers.conf "$p/usr/lib/sysusers.d/fabricd.conf"
install -D -m 0644 scripts/deb/libvirtd-hwnode.conf "$p/usr/share/doc/fabricd/libvirtd-hwnode.conf"
install -D -m 0644 README.md "$p/usr/share/doc/fabricd/README.md"
mkdir -p "$p/DEBIAN"
cat > "$p/DEBIAN/control" <<CTL
Package: fabricd
Version: $version
Architecture: $arch
Maintainer: Fabric <fabric@localhost>
Section: admin
Priority: optional
Recommends: fabric, nftables
Suggests: libvirt-daemon-system, qemu-system-x86, ipxe
Description: diskless cloud fabric: the daemon
 One binary for every role: controller (registry, API, CA, DHCP/TFTP/HTTP
 boot), storage node (AoE target, volume pool, pairs), hardware node agent
 and disk server. A systemd unit per role, none enabled: set its flags in
 /etc/fabric/ROLE.conf, then systemctl enable --now fabricd-ROLE.
CTL
(cd "$p" && find etc -type f | sed 's|^|/|') > "$p/DEBIAN/conffiles"
cat > "$p/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  # The user first: the directories belong to it.
  if command -v systemd-sysusers >/dev/null; then
    systemd-sysusers /usr/lib/sysusers.d/fabricd.conf
  elif ! getent passwd fabric >/dev/null; then
    adduser --system --group --home /var/lib/fabric --no-create-home fabric >/dev/null
  fi
  systemd-tmpfiles --create /usr/lib/tmpfiles.d/fabricd.conf >/dev/null 2>&1 || true
  if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi
fi
SH
cat > "$p/DEBIAN/postrm" <<'SH'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi
SH
chmod 0755 "$p/DEBIAN/postinst" "$p/DEBIAN/postrm"

for pkg in fabric fabricd; do
  dpkg-deb --root-owner-group -Zxz --build "$stage/$pkg" "$out/${pkg}_${version}_${arch}.deb" >/dev/null
  echo "$out/${pkg}_${version}_${arch}.deb"
done
