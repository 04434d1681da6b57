#!/usr/bin/env bash
# hwnode-image.sh: the hardware-node root image, a Debian 12 root filesystem
# that a PXE-booted machine mounts over AoE and runs as a hardware node.
#   OUT/hwnode-debian.img   ext4, 1536 MiB sparse: systemd, libvirtd with its
#                           QEMU driver, qemu-system-x86, openssh-server, the
#                           fabricd package, the kernel's modules (those the
#                           boot kernel needs for a hardware node), the test
#                           instance kernel, and the first-boot setup
#                           (images/hwnode-debian/).
# The Debian part (mmdebstrap) is cached in OUT/cache/hwnode-base-HASH.tar,
# keyed on the package list: a rebuild with the same packages only lays the
# fabric's files over it (the fabricd package, built from this checkout).
# Needs scripts/images.sh's output in OUT (the kernel and the instance).
# The Xen flavour (FLAVOUR=xen, `make images-xen`) is the same root with the
# Xen hypervisor, its tools and libvirt's Xen driver, as
# OUT/hwnode-debian-xen.img, and the hypervisor as OUT/boot/hwnode/xen.gz
# (fabricd controller --hwnode-hypervisor hwnode/xen.gz boots it as a dom0
# through iPXE multiboot).
# usage: scripts/hwnode-image.sh [OUT]   (default work/images)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD/images/hwnode-debian
OUT=$(realpath -m "${1:-work/images}")
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
FLAVOUR=${FLAVOUR:-}
PKGS=systemd-sysv,udev,kmod,iproute2,iputils-ping,procps,less,openssl,libvirt-daemon-system,libvirt-daemon-driver-qemu,qemu-system-x86,openssh-server,dbus
NAME=hwnode-debian
case "$FLAVOUR" in
  "") ;;
  xen) PKGS=$PKGS,xen-hypervisor-4.17-amd64,xen-utils-4.17,libvirt-daemon-driver-xen; NAME=hwnode-debian-xen ;;
  *) echo "hwnode-image: FLAVOUR=$FLAVOUR: want xen or nothing" >&2; exit 2 ;;
esac
IMG=$OUT/$NAME.img
STAMP=$OUT/.$NAME-stamp
# What a hardware node needs of the kernel's modules (the rest, sound,
# graphics and so on, stays out of the image).
MODDIRS="arch crypto fs lib net virt drivers/crypto drivers/block drivers/char drivers/net drivers/vhost drivers/virtio drivers/md drivers/scsi drivers/watchdog drivers/acpi drivers/cpufreq"

want="$(cat scripts/hwnode-image.sh "$SRC"/* scripts/deb.sh scripts/deb/* | sha256sum | cut -c1-12)-$(git describe --always --dirty 2>/dev/null || echo dev)"
[ "$(cat "$STAMP" 2>/dev/null)" = "$want" ] && [ -f "$IMG" ] && exit 0

t0=$(date +%s)
KDIR=$(ls -d "$OUT"/cache/linux-*/lib/modules/* 2>/dev/null | head -n1)
[ -n "$KDIR" ] && [ -f "$OUT/instance/vmlinuz" ] || { echo "hwnode-image: run scripts/images.sh first (no kernel in $OUT/cache)" >&2; exit 1; }
KVER=$(basename "$KDIR")
command -v mmdebstrap >/dev/null || { echo "hwnode-image: mmdebstrap missing (scripts/deps.sh installs it)" >&2; exit 1; }

base="$OUT/cache/$NAME-base-$(echo "bookworm $PKGS v1" | sha256sum | cut -c1-12).tar"
if [ ! -f "$base" ]; then
  echo "hwnode-image: mmdebstrap bookworm ($PKGS)"
  rm -f "$OUT"/cache/$NAME-base-*.tar
  # No documentation, manuals or translations: a node is driven by fabric.
  mmdebstrap --quiet --variant=apt --mode=root --format=tar \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --include="$PKGS" bookworm "$base.part" "$MIRROR"
  mv "$base.part" "$base"
fi
tb=$(date +%s)

R=$(mktemp -d)
deb=$(mktemp -d)
trap 'rm -rf "$R" "$deb"' EXIT
tar -C "$R" -xf "$base"

# The fabricd package, installed as a sysadmin would.
./scripts/deb.sh "$deb" >/dev/null
cp "$deb"/fabricd_*.deb "$R/tmp/fabricd.deb"
chroot "$R" dpkg -i /tmp/fabricd.deb >/dev/null
rm "$R/tmp/fabricd.deb"

# The boot kernel's modules (the initramfs loads NIC, aoe and ext4; the
# root's udev and libvirtd load bridge, tun and the rest).
M=$R/lib/modules/$KVER
mkdir -p "$M/kernel"
for d in $MODDIRS; do
  [ -d "$KDIR/kernel/$d" ] && mkdir -p "$M/kernel/$(dirname "$d")" && cp -a "$KDIR/kernel/$d" "$M/kernel/$d"
done
cp "$KDIR"/modules.order "$KDIR"/modules.builtin* "$M/" 2>/dev/null || true
depmod -b "$R" "$KVER"

# The instance kernel and initramfs the agent boots guests with.
install -D -m 0644 "$OUT/instance/vmlinuz" "$R/usr/share/fabric/instance/vmlinuz"
install -D -m 0644 "$OUT/instance/initrd.img" "$R/usr/share/fabric/instance/initrd.img"

# The fabric's files: first-boot setup, network, libvirtd, units.
install -D -m 0755 "$SRC/hwnode-setup" "$R/usr/lib/fabric/hwnode-setup"
install -D -m 0644 "$SRC/fabric-hwnode-setup.service" "$R/etc/systemd/system/fabric-hwnode-setup.service"
install -D -m 0644 "$SRC/libvirtd-fabric.conf" "$R/etc/systemd/system/libvirtd.service.d/fabric.conf"
install -D -m 0644 "$SRC/fabricd-hwnode-pxe.conf" "$R/etc/systemd/system/fabricd-hwnode.service.d/pxe.conf"
install -D -m 0644 "$SRC/10-boot.network" "$R/etc/systemd/network/10-boot.network"
install -D -m 0644 "$SRC/20-br0.netdev" "$R/etc/systemd/network/20-br0.netdev"
install -D -m 0644 "$SRC/20-br0.network" "$R/etc/systemd/network/20-br0.network"
install -D -m 0644 "$SRC/30-guest-uplink.network" "$R/etc/systemd/network/30-guest-uplink.network"
# eth0, eth1 as the kernel names them: the boot NIC is up (it carries the
# root) before udev runs, and cannot be renamed.
ln -sf /dev/null "$R/etc/systemd/network/99-default.link"
cat "$SRC/libvirtd.conf" >> "$R/etc/libvirt/libvirtd.conf"
cat "$SRC/qemu.conf" >> "$R/etc/libvirt/qemu.conf"
# fabricd hwnode-disks serves NBD for nodes without the aoe module; this
# node has it (its root is on AoE), and guests' disks are /dev/etherd/*.
ln -sf /dev/null "$R/etc/systemd/system/fabricd-hwnode-disks.service"
chroot "$R" systemctl -q enable systemd-networkd.service fabric-hwnode-setup.service fabricd-hwnode.service \
  libvirtd.service libvirtd-tls.socket serial-getty@ttyS0.service ssh.service
# Nothing on the node waits for a network that is already up, or asks the
# console for a locale or a password at first boot.
chroot "$R" systemctl -q mask systemd-firstboot.service systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
  e2scrub_all.timer fstrim.timer 2>/dev/null || true

# Identity is made at first boot, so clones never share one: machine-id
# (systemd makes it when the file is empty), SSH host keys (the setup
# service), hostname (fabric.name=), libvirt's host UUID (from the
# machine-id: libvirtd.conf host_uuid_source).
: > "$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id" "$R"/etc/ssh/ssh_host_*
echo "localhost" > "$R/etc/hostname"
echo "fabric hardware node image $want" > "$R/etc/fabric/image-release"
# The journal on the root volume: it outlives a reboot and can be read from
# the volume when a node does not come up.
mkdir -p "$R/var/log/journal"
# Root on the AoE volume, mounted by the initramfs.
echo "/dev/root / ext4 rw,noatime 0 1" > "$R/etc/fstab"

if [ "$FLAVOUR" = xen ]; then
  # The hypervisor iPXE loads (multiboot), beside the dom0 kernel.
  xen=$(ls "$R"/boot/xen-*.gz | sort -V | tail -n1)
  install -D -m 0644 "$xen" "$OUT/boot/hwnode/xen.gz"
fi
rm -f "$IMG.part"
truncate -s 1536M "$IMG.part"
mke2fs -q -t ext4 -L fabricroot -d "$R" "$IMG.part"
mv "$IMG.part" "$IMG"
echo "$want" > "$STAMP"
t1=$(date +%s)
used=$(du -m "$IMG" | cut -f1)
echo "hwnode-image: $IMG ($used MiB used of 1536; debian base $((tb - t0)) s, fabric layer $((t1 - tb)) s, total $((t1 - t0)) s)"
