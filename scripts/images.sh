#!/usr/bin/env bash
# images.sh: build the boot images the lab, the tests and the demo use.
#   OUT/boot/undionly.kpxe, OUT/boot/ipxe.efi   iPXE from Debian's ipxe package
#   OUT/boot/hwnode/vmlinuz, initrd.img          Debian kernel + busybox initramfs (images/hwnode/init)
#   OUT/hwnode-root.img                          ext4 root volume (busybox, images/hwnode/rootfs-init)
#   OUT/instance/vmlinuz, initrd.img             test instance: network, ping, HTTP, data disk (images/instance/init)
#   OUT/instance-template.img                    ext4 data disk template for instances
# The Debian kernel is fetched with apt-get download once and cached in OUT.
# usage: scripts/images.sh [OUT]   (default work/images)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD/images
OUT=$(realpath -m "${1:-work/images}")
mkdir -p "$OUT/boot/hwnode" "$OUT/instance" "$OUT/cache"
stamp="$OUT/.stamp"
want="$(cat scripts/images.sh $SRC/hwnode/init $SRC/hwnode/rootfs-init $SRC/instance/init | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$OUT/instance-template.img" ]; then
  exit 0
fi

KVER=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{sub("linux-image-","",$2); print $2; exit}')
[ -n "$KVER" ] || { echo "images: cannot tell the Debian kernel version (apt-cache depends linux-image-amd64)" >&2; exit 1; }
K=$OUT/cache/linux-$KVER
if [ ! -d "$K/lib/modules/$KVER" ]; then
  echo "images: fetching linux-image-$KVER"
  tmp=$(mktemp -d); (cd "$tmp" && apt-get download -q "linux-image-$KVER" >/dev/null)
  rm -rf "$K"; mkdir -p "$K"; dpkg-deb -x "$tmp"/linux-image-"$KVER"_*.deb "$K"; rm -rf "$tmp"
fi
MD=$K/lib/modules/$KVER/kernel
cp /usr/lib/ipxe/undionly.kpxe /usr/lib/ipxe/ipxe.efi "$OUT/boot/"
cp "$K/boot/vmlinuz-$KVER" "$OUT/boot/hwnode/vmlinuz"

# initramfs: busybox-static, NIC + aoe + ext4 modules, our /init
I=$(mktemp -d)
trap 'rm -rf "$I"' EXIT
mkdir -p "$I"/{bin,proc,sys,dev,lib/modules,newroot}
cp /bin/busybox "$I/bin/busybox"
cp "$SRC/hwnode/init" "$I/init"
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
         drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci net/core/failover drivers/net/net_failover \
         drivers/net/virtio_net drivers/net/ethernet/intel/e1000/e1000 drivers/block/aoe/aoe \
         crypto/crc32c_generic lib/crc16 fs/mbcache fs/jbd2/jbd2 fs/ext4/ext4; do
  f=$MD/$m.ko
  if [ -f "$f" ]; then cp "$f" "$I/lib/modules/"
  elif [ -f "$f.xz" ]; then xz -dc "$f.xz" > "$I/lib/modules/$(basename "$m").ko"
  else echo "images: module $m missing from $KVER" >&2; exit 1; fi
done
(cd "$I" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT/boot/hwnode/initrd.img"

# test instance: same kernel, its own initramfs with virtio-blk
J=$I/instance; mkdir -p "$J"/{bin,proc,sys,dev,lib/modules}
cp /bin/busybox "$J/bin/busybox"
cp "$SRC/instance/init" "$J/init"
cp "$I"/lib/modules/{virtio_ring,virtio,virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio_pci,failover,net_failover,virtio_net,crc32c_generic,crc16,mbcache,jbd2,ext4}.ko "$J/lib/modules/"
f=$MD/drivers/block/virtio_blk.ko
if [ -f "$f" ]; then cp "$f" "$J/lib/modules/"; else xz -dc "$f.xz" > "$J/lib/modules/virtio_blk.ko"; fi
(cd "$J" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT/instance/initrd.img"
cp "$K/boot/vmlinuz-$KVER" "$OUT/instance/vmlinuz"
mkdir -p "$J/tpl"; echo "this data disk is a clone of the fabric's instance template" > "$J/tpl/template-marker"
rm -f "$OUT/instance-template.img"; truncate -s 32M "$OUT/instance-template.img"
mke2fs -q -t ext4 -L fabricdata -d "$J/tpl" "$OUT/instance-template.img"

# root volume image
R=$I/rootfs; mkdir -p "$R"/{bin,sbin,proc,sys,dev,etc,var,tmp}
cp /bin/busybox "$R/bin/busybox"
cp "$SRC/hwnode/rootfs-init" "$R/sbin/init"
echo "this root filesystem came over AoE from the fabric storage node" > "$R/etc/fabric-marker"
# e2fsprogs' mke2fs (busybox's makes only ext2) with its libraries, for the
# guest-side mkfs.ext4 test (fabric.scratch=).
mkdir -p "$R/sbin" "$R/lib64" "$R/lib/x86_64-linux-gnu"
cp /sbin/mke2fs "$R/sbin/mke2fs"; cp /etc/mke2fs.conf "$R/etc/"
for l in $(ldd /sbin/mke2fs | awk '/=>/{print $3}'); do cp "$l" "$R/lib/x86_64-linux-gnu/"; done
cp /lib64/ld-linux-x86-64.so.2 "$R/lib64/"
rm -f "$OUT/hwnode-root.img"; truncate -s 64M "$OUT/hwnode-root.img"
mke2fs -q -t ext4 -L fabricroot -d "$R" "$OUT/hwnode-root.img"
# SAN boot disk: a boot sector that writes FABRIC-SANBOOT-OK to the first
# serial port and halts (cld; xor ax,ax; mov ds,ax; mov si,msg; mov dx,0x3f8;
# lodsb/out loop; cli; hlt), for iPXE's "sanboot aoe:" test.
rm -f "$OUT/sanboot-disk.img"; truncate -s 16M "$OUT/sanboot-disk.img"   # >= one 255x63 cylinder, or iPXE's int13 CHS reads fail
{ printf '\xfc\x31\xc0\x8e\xd8\xbe\x17\x7c\xba\xf8\x03\xac\x84\xc0\x74\x03\xee\xeb\xf8\xfa\xf4\xeb\xfd'
  printf 'FABRIC-SANBOOT-OK\r\n\0'; } | dd of="$OUT/sanboot-disk.img" conv=notrunc status=none
printf '\x55\xaa' | dd of="$OUT/sanboot-disk.img" bs=1 seek=510 conv=notrunc status=none
echo "$want" > "$stamp"
echo "images: built in $OUT (kernel $KVER)"
