.PHONY: run test build bench bench-go fuzz lint fmt deps

# A node with the embedded defaults: in-memory fan-out, STUN/TURN on 3478,
# the web demo and API on http://localhost:8080, metrics on 127.0.0.1:9090.
# The node is built, then exec'd: a signal to make reaches it (go run would
# die at once and leave the node running).
run:
	go build -o bin/parley ./cmd/parley
	exec ./bin/parley serve

# Every test, with the race detector; the gateway's once more with a
# goroutine per WebSocket session and SSE stream instead of the poller
# (without the race detector, beside the first pass: it mostly waits, and the
# first pass runs the poller tests on both paths with it); and the heap-bound
# tests once more without the race detector (its bookkeeping skews heap
# figures). Installs what the tests need first, and checks the script that
# does so.
# The packages whose tests take longest, named first so that they start
# first: much of their time is spent waiting (browsers, Redis failovers,
# drains), which the other packages' tests fill.
SLOW = ./web/ ./fanout/ ./cmd/parley/ ./gateway/

test: deps
	bash .ci/deps-test
	go vet ./...
	@out=$$(mktemp); \
	echo "PARLEY_NOPOLLER=1 go test -count=1 ./gateway/ (beside the next)"; \
	PARLEY_NOPOLLER=1 go test -count=1 ./gateway/ > $$out 2>&1 & pid=$$!; \
	echo "go test -race -count=1 -timeout 20m $(SLOW) ./... (screenshots of the pages in test-output/screenshots)"; \
	PARLEY_SCREENSHOTS=$(CURDIR)/test-output/screenshots go test -race -count=1 -timeout 20m $(SLOW) ./...; rc=$$?; \
	wait $$pid; nrc=$$?; \
	echo "PARLEY_NOPOLLER=1 go test -count=1 ./gateway/:"; cat $$out; rm -f $$out; \
	[ $$rc -eq 0 ] && [ $$nrc -eq 0 ]
	go test -count=1 -run Heap ./gateway/

# Installs the test tools that are missing: redis-server, coturn's TURN utilities,
# Debian's Chromium and playwright-core (never a browser download).
deps:
	bash .ci/deps
	bash .ci/web-deps

build:
	go install ./cmd/parley

# Load profiles against fresh nodes on loopback (.ci/bench lists them):
# "short", under two minutes, unless PROFILE names others.
bench:
	bash .ci/bench $(or $(PROFILE),short)

# The Go benchmarks of the delivery path and the bus.
bench-go:
	go test -run '^$$' -bench . -benchmem ./gateway/ ./fanout/

fuzz:
	bash .ci/fuzz 60s

lint:
	go vet ./...
	test -z "$$(gofmt -l .)" || (gofmt -l . && false)

fmt:
	gofmt -w .
