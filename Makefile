# Fieldhub developer entry points. `make run` and `make test` are the two
# commands the README promises work on a fresh machine with Go installed.

STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
GO          ?= go
FUZZTIME    ?= 150000x

.PHONY: all build influxd mosquitto alertmanager telegraf run run-cluster test test-loaded lint unit fuzz bench-smoke bench bench-peer mutation clean

all: build

# The version `fieldhub version` prints (GOFLAGS may turn VCS stamping off).
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null)

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/fieldhub ./cmd/fieldhub
	$(GO) build -o bin/firmware-sim ./cmd/firmware-sim

# The pinned InfluxDB for development and tests (version pinned in the script).
influxd:
	scripts/install-influxd

# Debian's Mosquitto 2 with its dynamic-security plugin, for the
# multi-instance tests (they start their own brokers).
mosquitto:
	scripts/install-mosquitto

# Debian's Prometheus Alertmanager, for the alert notification tests (they
# start their own on free ports).
alertmanager:
	scripts/install-alertmanager

# The pinned Telegraf with only the plugins make bench-peer uses (version
# pinned in the script), built from the Go module proxy; about two
# minutes, first run only.
telegraf:
	scripts/install-telegraf

# Runs influxd, the hub and a simulated fleet; Ctrl-C stops everything.
run: build influxd
	scripts/run-demo

# Two instances on a private Mosquitto, the machine's PostgreSQL and
# influxd, with a fleet spread over them (docs/deploy.md on one box).
run-cluster: build influxd mosquitto
	scripts/run-cluster-demo

test: lint unit fuzz bench-smoke

# The unit tests with both cores already busy (two stress-ng --cpu 1; the
# script installs Debian's stress-ng when missing). Not run by CI: it
# finds tests that wait for wall-clock windows instead of events.
test-loaded: influxd mosquitto
	scripts/test-loaded

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

unit: influxd mosquitto alertmanager
	FIELDHUB_ARTIFACTS=$(CURDIR)/var/artifacts $(GO) test -race -count=1 -timeout 20m ./...

# A short, bounded run of every fuzz target (counted in executions, not
# seconds: a time limit can expire while workers start and fail the run).
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzDecode$$' -fuzztime=$(FUZZTIME) ./telemetry
	$(GO) test -run='^$$' -fuzz='^FuzzAppendLines$$' -fuzztime=$(FUZZTIME) ./telemetry
	$(GO) test -run='^$$' -fuzz='^FuzzValidName$$' -fuzztime=100000x ./telemetry
	$(GO) test -run='^$$' -fuzz='^FuzzOnLive$$' -fuzztime=100000x ./bridge/cluster
	$(GO) test -run='^$$' -fuzz='^FuzzRecover$$' -fuzztime=100000x ./telemetry/spool
	$(GO) test -run='^$$' -fuzz='^FuzzPacketPath$$' -fuzztime=20000x ./bridge/mqtt
	$(GO) test -run='^$$' -fuzz='^FuzzMergePatch$$' -fuzztime=20000x ./devices/state
	$(GO) test -run='^$$' -fuzz='^FuzzSeqTracker$$' -fuzztime=20000x ./devices/ledger
	$(GO) test -run='^$$' -fuzz='^FuzzObserveSpan$$' -fuzztime=20000x ./devices/ledger

# Every Go benchmark once, so none of them rots.
bench-smoke: influxd mosquitto alertmanager
	$(GO) test -run='^$$' -bench=. -benchtime=1x -timeout 10m ./...

clean:
	rm -rf bin/fieldhub bin/firmware-sim

# The standard load benchmarks (docs/benchmarks.md), then the cost-vs-rate
# sweep of the hub and the peer pipeline (100 to 40,000 msgs/s, 12 s a
# step), which rewrites the generated section of docs/benchmarks.md and
# docs/benchmarks-cpu.png. Bounded: about twelve minutes (fixed-length
# steps; each run waits at most two minutes for stragglers), plus
# Telegraf's first build. Not part of `make test`.
bench: build influxd mosquitto telegraf
	scripts/bench

# The hub side by side with Mosquitto -> Telegraf -> InfluxDB, the same
# load in one run, at 10,000 and 20,000 msgs/s (BENCH_RATES, BENCH_STEP
# change them); prints landed, lost and CPU per million for each and the
# ratio. About two minutes. Not part of `make test`.
bench-peer: build influxd mosquitto telegraf
	scripts/bench-peer

# Mutation testing of the core packages with gremlins (pinned in the
# script); one score per package, summary in var/mutation/summary.txt.
# Fails if a package kills fewer than MUTATION_MIN percent (default 80) of
# its mutants. Slow (docs/architecture.md, "Mutation testing"): not part of
# `make test`. One package: scripts/mutation telemetry/spool
mutation:
	scripts/mutation
