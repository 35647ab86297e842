# Trellis build, test and lint targets. `make test` is what CI runs.

GO          ?= go
GOBIN       := $(shell $(GO) env GOPATH)/bin
STATICCHECK := $(GOBIN)/staticcheck
PKGS        ?= ./...
# The machine the project is developed on has 2 cores: test 2 packages at
# a time so the database-backed packages do not starve each other.
TEST_FLAGS  ?= -race -p 2 -timeout 15m
BENCH       ?= .
BENCH_FLAGS ?= -run '^$$' -bench '$(BENCH)' -benchmem -p 1 -timeout 30m
# Flags of `trellis bench` for `make bench`, e.g. BENCH_ARGS='--db postgres --json bench.json'.
BENCH_ARGS  ?=
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -s -w -X github.com/trellis-dag/trellis/cli.version=$(VERSION)

.PHONY: all test lint fmt-check vet staticcheck build run bench bench-e2e bench-go ui screenshots clean

all: test build

## test: gofmt check, go vet, staticcheck, then the race-enabled test suite
test: lint
	$(GO) test $(TEST_FLAGS) $(PKGS)

## lint: gofmt check, go vet and staticcheck
lint: fmt-check vet staticcheck

fmt-check:
	@out="$$(gofmt -l $$(find . -name '*.go' -not -path './.git/*'))"; \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

staticcheck: $(STATICCHECK)
	$(STATICCHECK) $(PKGS)

# Installs staticcheck into $(go env GOPATH)/bin when it is missing.
$(STATICCHECK):
	$(GO) install honnef.co/go/tools/cmd/staticcheck@latest

## build: a static trellis binary in bin/
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/trellis ./cmd/trellis

## run: the server (scheduler, workers and API) with the default SQLite database
run:
	$(GO) run ./cmd/trellis serve

## bench: the end-to-end scenarios (trellis bench, SQLite and PostgreSQL), then every Go benchmark
bench: bench-e2e bench-go

## bench-e2e: `trellis bench`: every scenario on SQLite and on PostgreSQL (see docs/benchmarks.md)
bench-e2e:
	$(GO) run ./cmd/trellis bench $(BENCH_ARGS)

## bench-go: every Go benchmark (go test -bench), one package at a time
bench-go:
	$(GO) test $(BENCH_FLAGS) $(PKGS)

## ui: rebuild the web UI's front-end libraries from npm (needs Node and npm; the built
## files are committed in ui/static/vendor, so building and testing need no Node)
ui:
	cd ui/web && npm ci --no-audit --no-fund
	sed '/^\/\/# sourceMappingURL=/d' ui/web/node_modules/@dagrejs/dagre/dist/dagre.min.js > ui/static/vendor/dagre.min.js
	cp ui/web/node_modules/@dagrejs/dagre/dist/dagre.min.js.LEGAL.txt ui/static/vendor/
	cp ui/web/node_modules/@dagrejs/dagre/LICENSE ui/static/vendor/dagre.LICENSE
	cp ui/web/node_modules/@dagrejs/graphlib/LICENSE ui/static/vendor/graphlib.LICENSE

## screenshots: the README's screenshots of the web UI, taken by the browser tests (needs Chromium)
screenshots:
	TRELLIS_UI_SCREENSHOTS=$(CURDIR)/docs $(GO) test -count=1 -run 'TestUISQLite$$' ./e2e/

clean:
	rm -rf bin trellis
