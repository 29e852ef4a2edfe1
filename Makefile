# meshproxy: build, test, demo, bench, lint, install.
# Tests and the demo need root: they create network namespaces and rules.

GO      ?= go
BIN     := bin
# The commit, "-dirty" when files other than docs/ (which `make bench`
# rewrites) differ from it; "dev" outside a git checkout.
VERSION ?= $(shell v=$$(git describe --tags --always 2>/dev/null) || { echo dev; exit; }; \
	git diff --quiet HEAD -- . ':(exclude)docs' 2>/dev/null || v=$$v-dirty; echo $$v)
LDFLAGS := -X main.version=$(VERSION)
PREFIX  ?= /usr/local

.PHONY: all build test test-short deps demo bench lint fmt clean install uninstall

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/meshproxy ./cmd/meshproxy
	$(GO) build -o $(BIN)/demoapp ./internal/demoapp

# The full suite, as CI runs it: lint, then every test with the race
# detector (the namespace tests need root), then every benchmark once so
# they keep compiling and running.
test: deps lint
	$(GO) test -race -count=1 -timeout 25m ./...
	$(GO) test -run '^$$' -bench . -benchtime 1x ./...

# Debian packages the tests and the demo use (installed when root).
deps:
	./scripts/deps.sh

# Without the race detector, for a quicker local loop.
test-short:
	$(GO) test -count=1 -timeout 10m ./...

demo: build
	./scripts/demo.sh

bench: build
	./scripts/bench.sh

# The Go files: git's list in a checkout, else every .go file (a tarball).
GOFILES = $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.git/*')

lint:
	@unformatted=$$(gofmt -l $(GOFILES)); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

fmt:
	gofmt -w $(GOFILES)

clean:
	rm -rf $(BIN)

# Install on a systemd host (scripts/systemd/README.md): the binary under
# PREFIX, the units, the sysusers.d/tmpfiles.d entries for the meshproxy
# user, and example settings in /etc/meshproxy (an existing file there is
# kept). DESTDIR stages everything under a directory (packaging, tests);
# without DESTDIR the user and its state directory are created and systemd
# reloads its units. The units name $(PREFIX)/bin/meshproxy.
SYSCONFDIR  ?= /etc
UNITDIR     ?= $(SYSCONFDIR)/systemd/system
SYSUSERSDIR ?= $(SYSCONFDIR)/sysusers.d
TMPFILESDIR ?= $(SYSCONFDIR)/tmpfiles.d
DOCDIR      ?= $(PREFIX)/share/doc/meshproxy
SYSTEMD_SRC := scripts/systemd

# "sudo make install" often runs with a PATH without Go (sudo's
# secure_path): then it installs the binary "make" built before.
HAVE_GO = $(shell command -v $(GO) 2>/dev/null)

install: $(if $(HAVE_GO),build)
	@[ -x $(BIN)/meshproxy ] || { echo "install: $(BIN)/meshproxy is not built and $(GO) is not on PATH: run make first (as a user with Go), then sudo make install" >&2; exit 1; }
	install -D -m 0755 $(BIN)/meshproxy $(DESTDIR)$(PREFIX)/bin/meshproxy
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	for u in meshproxy.service meshproxy-init.service; do \
		sed 's|/usr/local|$(PREFIX)|g' $(SYSTEMD_SRC)/$$u > $(DESTDIR)$(UNITDIR)/$$u.tmp && \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$u.tmp && \
		mv -f $(DESTDIR)$(UNITDIR)/$$u.tmp $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	done
	install -D -m 0644 $(SYSTEMD_SRC)/meshproxy.sysusers $(DESTDIR)$(SYSUSERSDIR)/meshproxy.conf
	install -D -m 0644 $(SYSTEMD_SRC)/meshproxy.tmpfiles $(DESTDIR)$(TMPFILESDIR)/meshproxy.conf
	install -D -m 0644 $(SYSTEMD_SRC)/README.md $(DESTDIR)$(DOCDIR)/systemd.md
	install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/meshproxy
	for f in meshproxy.yaml init.env; do \
		if [ -e $(DESTDIR)$(SYSCONFDIR)/meshproxy/$$f ]; then \
			echo "keeping existing $(DESTDIR)$(SYSCONFDIR)/meshproxy/$$f"; \
		else \
			install -m 0644 $(SYSTEMD_SRC)/$$f $(DESTDIR)$(SYSCONFDIR)/meshproxy/$$f || exit 1; \
		fi; \
	done
	@if [ -z "$(DESTDIR)" ]; then \
		set -e; \
		systemd-sysusers $(SYSUSERSDIR)/meshproxy.conf; \
		systemd-tmpfiles --create $(TMPFILESDIR)/meshproxy.conf; \
		if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
		echo "installed; next: edit $(SYSCONFDIR)/meshproxy/, then systemctl enable --now meshproxy"; \
	fi

# Stops the units (which removes the interception rules) and removes what
# install put in place, except the settings in /etc/meshproxy, the state
# in /var/lib/meshproxy (a local CA's keys) and the meshproxy user.
uninstall:
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
		systemctl disable --now meshproxy.service meshproxy-init.service || true; \
	fi
	rm -f $(DESTDIR)$(PREFIX)/bin/meshproxy \
		$(DESTDIR)$(UNITDIR)/meshproxy.service \
		$(DESTDIR)$(UNITDIR)/meshproxy-init.service \
		$(DESTDIR)$(SYSUSERSDIR)/meshproxy.conf \
		$(DESTDIR)$(TMPFILESDIR)/meshproxy.conf \
		$(DESTDIR)$(DOCDIR)/systemd.md
	rmdir $(DESTDIR)$(DOCDIR) 2>/dev/null || true
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "kept $(DESTDIR)$(SYSCONFDIR)/meshproxy, /var/lib/meshproxy and the meshproxy user; remove them by hand if wanted"
