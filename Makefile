# Fabric: a diskless cloud fabric. `make demo` runs it all on one machine,
# `make test` runs every test (root: namespace, QEMU and libvirtd tests too).
GO      ?= go
BIN     := bin
GOFLAGS ?= -buildvcs=false
export GOFLAGS

.PHONY: all build deps test test-unit lint demo bench bench-controller clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

deps:
	./scripts/deps.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Unit tests only: no root, no packages beyond Go.
test-unit:
	$(GO) test -short -race ./...

test: deps lint build
	$(GO) test -race -timeout 25m ./...

demo: deps build
	./scripts/demo.sh

bench: bench-controller

bench-controller: build
	./scripts/bench-controller.sh

clean:
	rm -rf $(BIN) work
