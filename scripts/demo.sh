#!/usr/bin/env bash
# make demo: the whole fabric on one machine, in network namespaces joined by
# a bridge that plays the switch: a config node (controller with DHCP, TFTP
# and HTTP boot), two storage nodes it pairs, two hardware nodes each with
# its own libvirtd and agent, and a client. The story (cmd/fabric-lab demo):
# register nodes by MAC, PXE-boot a diskless VM onto its clone of the Debian
# hardware-node image over AoE and watch it join as a hardware node, import an
# image, start an instance, live-migrate it while pinging it, drain and kill
# storage nodes under its write-verify loop, show the event log.
# Everything is torn down at the end, also on Ctrl-C or failure.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it creates network namespaces)"; exit 1; }
./scripts/deps.sh
./scripts/images.sh
./scripts/hwnode-image.sh
make -s build
exec ./bin/fabric-lab demo --dir work/demo --images work/images
