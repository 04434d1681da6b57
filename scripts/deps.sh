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

# libvirt's QEMU driver refuses to start without these (normally made by
# libvirt-daemon-system, which we do not install: no systemd here).
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
echo "deps: ok"
