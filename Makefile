# Fabric: a diskless cloud fabric. `make demo` runs it all on one machine,
# `make test` runs every test (root: namespace, QEMU and libvirtd tests too).
GO      ?= go
BIN     := bin
GOFLAGS ?= -buildvcs=false
export GOFLAGS

.PHONY: all build deps images images-xen test test-unit lint demo demo-up demo-down bench bench-controller bench-aoe bench-boot bench-pair bench-ha bench-storage bench-hwnode bench-check deb clean

all: build

VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/ ./cmd/...

deps:
	./scripts/deps.sh

# Debian packages fabric and fabricd (systemd units, /etc/fabric) in work/deb.
deb:
	./scripts/deb.sh work/deb

# Boot images for the QEMU tests and the demo: Debian kernel, busybox
# initramfs, root volume (work/images; rebuilt when their sources change),
# and the Debian hardware-node root image (mmdebstrap, cached: about 2 min
# the first time, 30 s after a change of the fabric's files).
images: deps
	./scripts/images.sh
	./scripts/hwnode-image.sh

# The Xen dom0 flavour of the hardware-node image (work/images/hwnode-debian-xen.img
# and boot/hwnode/xen.gz); the Xen hypervisor cannot run under this
# machine's software emulation, so no test boots it.
images-xen: images
	FLAVOUR=xen ./scripts/hwnode-image.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Unit tests only: no root, no packages beyond Go.
test-unit:
	$(GO) test -short -race ./...

# One package at a time (-p 1): the namespace tests measure stalls, ping
# loss and migration downtime, and two of them sharing the 2 cores of a CI
# machine distort each other (a storage pair's failover tests running beside
# the live migrations pushed a downtime from 100 to 238 ms).
test: deps images lint build
	$(GO) test -race -p 1 -timeout 40m ./...

demo: deps build
	./scripts/demo.sh

# Keep a lab running for exploring by hand (bin/fabric-lab fabric ...).
demo-up: images build
	./bin/fabric-lab up --dir work/lab --images work/images

demo-down:
	@[ -x bin/fabric-lab ] || $(GO) build -o $(BIN)/ ./cmd/fabric-lab
	./bin/fabric-lab down --dir work/lab

bench: bench-controller bench-aoe bench-aoe-linux bench-boot bench-pair bench-ha bench-storage bench-hwnode

# The hardware-node image: build cold and cached, size; PXE power-on to
# agent enrolled and to the first instance answering ping (about 12 min).
bench-hwnode: images build
	./scripts/bench-record.sh hwnode

# Hardware node failure: power loss to the instance answering from another
# node, 5 times in the lab; the scheduler's benchmarks (about 4 min).
bench-ha: images build
	./scripts/bench-record.sh ha

bench-storage: images build
	./scripts/bench-record.sh storage

bench-controller: build
	./scripts/bench-record.sh controller

# DHCP (perfdhcp) beside dnsmasq and kea; TFTP/HTTP to 20 clients beside
# dnsmasq, tftpd-hpa and busybox httpd (about 4 min).
bench-boot: build
	./scripts/bench-record.sh boot

# Reruns each benchmark recorded in docs/bench/ (every one with FIGURE lines) and
# names every figure whose median moved more than the recorded spread.
bench-check: build
	./scripts/bench-check.sh

# Our AoE target beside vblade: MTU 9000/1500, window 16/64, our batching
# client and a one-frame-per-call one, 3 interleaved rounds (about 13 min);
# recorded in docs/bench/aoe.txt and docs/benchmarks.md.
bench-aoe: build
	./scripts/bench-record.sh aoe

# The same targets with the Linux aoe driver as the client: a QEMU guest
# running fio, MTU 9000/1500, windows 16/64, 3 interleaved rounds (about
# 15 min); recorded in docs/bench/aoe-linux.txt and docs/benchmarks.md.
bench-aoe-linux: images build
	./scripts/bench-record.sh aoe-linux

# Storage pair: replication's cost, resync rate, failover stalls (about 6 min).
bench-pair: build
	./scripts/bench-record.sh pair

clean:
	rm -rf $(BIN) work
