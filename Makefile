# Fieldhub developer entry points. `make run` and `make test` are the two
# commands the README promises work on a fresh machine with Go installed.

STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
GO          ?= go
FUZZTIME    ?= 150000x

.PHONY: all build influxd run test lint unit fuzz bench-smoke bench clean

all: build

build:
	$(GO) build -o bin/fieldhub ./cmd/fieldhub
	$(GO) build -o bin/firmware-sim ./cmd/firmware-sim

# The pinned InfluxDB for development and tests (version pinned in the script).
influxd:
	scripts/install-influxd

# Runs influxd, the hub and a simulated fleet; Ctrl-C stops everything.
run: build influxd
	scripts/run-demo

test: lint unit fuzz bench-smoke

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

unit: influxd
	FIELDHUB_ARTIFACTS=$(CURDIR)/var/artifacts $(GO) test -race -count=1 -timeout 12m ./...

# A short, bounded run of every fuzz target (counted in executions, not
# seconds: a time limit can expire while workers start and fail the run).
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzDecode$$' -fuzztime=$(FUZZTIME) ./telemetry
	$(GO) test -run='^$$' -fuzz='^FuzzAppendLines$$' -fuzztime=$(FUZZTIME) ./telemetry
	$(GO) test -run='^$$' -fuzz='^FuzzValidName$$' -fuzztime=100000x ./telemetry

# Every Go benchmark once, so none of them rots.
bench-smoke: influxd
	$(GO) test -run='^$$' -bench=. -benchtime=1x -timeout 10m ./...

clean:
	rm -rf bin/fieldhub bin/firmware-sim

# The standard load benchmarks (docs/benchmarks.md); about six minutes.
bench: build influxd
	scripts/bench
