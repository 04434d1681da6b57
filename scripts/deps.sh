#!/usr/bin/env bash
# Installs the Debian packages the fabric's lab, tests and benchmarks use.
# Idempotent: packages already present are skipped. Run as root on Debian 12.
set -euo pipefail

PKGS=(
  iproute2 iputils-ping e2fsprogs cpio kmod procps psmisc xz-utils gzip
  qemu-system-x86 qemu-utils ipxe-qemu ipxe ovmf busybox-static
  vblade aoetools dnsmasq kea-admin kea-dhcp4-server tftp-hpa tftpd-hpa curl
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  fio nftables
  systemd util-linux dpkg-dev mmdebstrap
  zsh fish
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # tftpd-hpa and dnsmasq start services on install; nothing runs them here
  # (no systemd), and the lab starts its own copies inside namespaces.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# QEMU 9.0 or later, from bookworm-backports: Debian 12's QEMU 7.2 loses
# guest writes during live migration of a software-emulated (TCG) guest.
# Its dirty-page sync clears the migration bitmap 64 pages at a time
# without resetting the vCPU's TLB, so later stores through the TLB are
# not marked dirty and never resent (fixed upstream by 03bfc2188f,
# "physmem: Fix migration dirty bitmap coherency with TCG memory access",
# in 9.0). The lab's guests run under TCG and died of it (kernel BUG, slab
# and list corruption) in 2 of 6 CI runs: docs/benchmarks.md, "Session 19";
# `go run ./scripts/tcgmigrate` checks a QEMU for it.
# KVM guests are not affected: KVM tracks dirty pages in the kernel.
qv=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
if ! dpkg --compare-versions "$qv" ge 1:9.0; then
  if [ "$(. /etc/os-release && echo "${VERSION_CODENAME:-}")" = bookworm ]; then
    list=/etc/apt/sources.list.d/fabric-bookworm-backports.list
    [ -f "$list" ] || echo "deb http://deb.debian.org/debian bookworm-backports main" > "$list"
    echo "deps: installing QEMU from bookworm-backports (have ${qv:-none})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils >/dev/null
  else
    echo "deps: QEMU $qv is older than 9.0: live migration of the lab's software-emulated guests can corrupt them; install QEMU 9.0 or later" >&2
  fi
fi

# libvirt's QEMU driver refuses to start without these (normally made by
# libvirt-daemon-system, which we do not install: no systemd here).
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
echo "deps: ok"
