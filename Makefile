# meshproxy: build, test, demo, bench, lint, install.
# Tests and the demo need root: they create network namespaces and rules.

GO      ?= go
BIN     := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
PREFIX  ?= /usr/local

.PHONY: all build test test-short demo bench lint fmt clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/meshproxy ./cmd/meshproxy
	$(GO) build -o $(BIN)/demoapp ./internal/demoapp

# The full suite, as CI runs it: lint, then every test with the race
# detector (the namespace tests need root), then every benchmark once so
# they keep compiling and running.
test: lint
	$(GO) test -race -count=1 -timeout 15m ./...
	$(GO) test -run '^$$' -bench . -benchtime 1x ./...

# Without the race detector, for a quicker local loop.
test-short:
	$(GO) test -count=1 -timeout 10m ./...

demo: build
	./scripts/demo.sh

bench: build
	./scripts/bench.sh

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN)
