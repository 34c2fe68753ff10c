# whyslow: build, generate BPF objects, test.
GO      ?= go
BINARY  ?= whyslow
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/whyslow/whyslow/cmd.Version=$(VERSION)

# Debian packages the tests drive (udevd, fio, chromium for the HTML report, prometheus and
# systemd for serve and deploy/: promtool, systemd-analyze) and that
# `make generate` needs.
TEST_DEBS     := udev fio util-linux kmod procps xfsprogs chromium prometheus systemd
GENERATE_DEBS := clang llvm libbpf-dev linux-libc-dev

# What `make vmtest` needs on the host: qemu, the guest's busybox, and the
# tools the scenarios drive, copied into the guest with their libraries.
VMTEST_DEBS := qemu-system-x86 busybox-static bcache-tools xfsprogs fio udev mount kmod xz-utils zstd dpkg apt
# Kernels of the matrix: all, or a comma-separated list (5.10,6.1,6.12).
KERNEL ?= all

# What `make bench` drives: fio for the load, the tools whyslow is compared
# with (libbpf-tools, bpftrace) and perf for the context-switch benchmark
# (the BPF run-time statistics are read through cilium/ebpf).
BENCH_DEBS := fio libbpf-tools bpftrace linux-perf util-linux coreutils
# Extra flags of tools/bench/cmd/whyslow-bench, e.g. BENCH_FLAGS="-rounds 5 -sections io".
BENCH_FLAGS ?=

# Kernels and driver flags of `make bench-vm`: null_blk with its defaults
# (blk-mq, completions in softirq, no backing memory), whyslow (fentry
# probes there) against biolatency + execsnoop; no bpftrace in the guests.
BENCH_VM_KERNEL ?= 6.1,6.12
BENCH_VM_FLAGS  ?= -sections io -device /dev/nullb0 -configs none,whyslow,libbpf-tools -fio libaio,16,2 -rounds 8 -cost-rounds 5 -fio-time 3s

# Kernel and driver flags of `make bench-vm-serve`: whyslow serve for an hour
# under the storm's load (section 6) in one guest with one vCPU, so that the
# storm's uevents and execs load neither the host's udevd nor all its CPUs.
BENCH_VM_SERVE_KERNEL ?= 6.12
BENCH_VM_SERVE_FLAGS  ?= -sections serve -serve-time 1h

.PHONY: all build generate check-generated test test-unit fuzz vet clean deps deps-generate vmtest bench bench-vm bench-vm-serve

all: build

## build: a static binary ./whyslow (no cgo, no clang needed)
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BINARY) ./cmd/whyslow

## deps: install the Debian packages the tests need, when missing (needs root)
deps:
	@./tools/scripts/apt-ensure $(TEST_DEBS)

deps-generate:
	@./tools/scripts/apt-ensure $(GENERATE_DEBS)

## generate: rebuild the BPF objects and their Go bindings with bpf2go (needs clang, libbpf-dev)
generate: deps-generate
	cd probes && $(GO) generate ./...

## check-generated: fail when the committed BPF objects differ from a fresh `make generate`
check-generated: generate
	@git diff --exit-code --stat -- probes/ || { echo "generated BPF files are stale: run 'make generate' and commit" >&2; exit 1; }
	@test -z "$$(git status --porcelain --ignored -- 'probes/*_bpfel*')" || { git status --porcelain --ignored -- 'probes/*_bpfel*'; echo "untracked or ignored generated files: commit them" >&2; exit 1; }

## vet: go vet, gofmt and staticcheck (its version is pinned by the tool directive in go.mod)
vet:
	$(GO) vet ./...
	$(GO) tool staticcheck ./...
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt: the files above need formatting" >&2; exit 1; }

## test: every test; BPF and integration tests need root and run for real. Every test
## binary is built first, so that no test measures the machine while the compiler has it,
## and the packages' tests run one package at a time (-p 1): the probes' and the scenarios'
## tests each make and measure their own loads (busy disks, CPU hogs, fio), which another
## package's load beside them on this 2-CPU machine would falsify.
test: deps vet
	@$(GO) test -count=1 -run '^$$' ./... >/dev/null || $(GO) test -count=1 -run '^$$' ./...
	$(GO) test -count=1 -p 1 -timeout 20m ./...

## test-unit: the tests that need neither root nor BPF
test-unit:
	$(GO) test -count=1 -short ./...

## fuzz: run every fuzz target (func FuzzX in any package) for FUZZTIME each, as CI does
## (make fuzz FUZZTIME=5m for a longer hunt); an input that fails is written to the
## package's testdata/fuzz/FuzzX/ and replayed by go test from then on; a run that ends in
## Go's fuzzing-coordinator deadline race with no failing input is run once more (tools/scripts/fuzz)
FUZZTIME ?= 15s
fuzz:
	@set -e; grep -rHo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' . | sort | while IFS=: read -r file fn; do \
		t=$${fn#func }; pkg=./$$(dirname $${file#./}); \
		echo "== $$t ($$pkg), $(FUZZTIME)"; \
		./tools/scripts/fuzz "$(GO)" $$pkg $$t $(FUZZTIME); \
	done

## vmtest: the probe and scenario tests on Debian's 5.10, 6.1 and 6.12 cloud kernels under qemu
## (make vmtest KERNEL=6.1 for one); results in tools/vmtest/out/<kernel>/, needs root
vmtest:
	@./tools/scripts/apt-ensure $(VMTEST_DEBS)
	$(GO) run ./tools/vmtest/cmd/vmtest -kernel $(KERNEL) -quiet -matrix tools/vmtest/out/matrix.md

## bench: measure whyslow's cost (I/O, context switches, start-up, event storm) against
## libbpf-tools and bpftrace, and its analysis speed; writes BENCHMARKS.md (needs root;
## takes some 30 minutes; not part of make test)
bench: build
	@./tools/scripts/apt-ensure $(BENCH_DEBS)
	$(GO) run ./tools/bench/cmd/whyslow-bench -whyslow ./$(BINARY) -out BENCHMARKS.md -json tools/bench/results.json $(BENCH_FLAGS)

## bench-vm: the I/O overhead and BPF cost per I/O on null_blk in Debian's kernels under qemu
## (TCG), where whyslow runs its fentry probes; writes BENCHMARKS.md's VM section (needs root)
bench-vm:
	@./tools/scripts/apt-ensure $(VMTEST_DEBS) libbpf-tools coreutils
	$(GO) run ./tools/vmtest/cmd/vmtest -kernel $(BENCH_VM_KERNEL) -quiet -timeout 30m -out tools/vmtest/out-bench -bench "$(BENCH_VM_FLAGS)"
	@mkdir -p tools/bench/results-vm
	@for d in tools/vmtest/out-bench/*/; do k=$$(basename $$d); [ -f $$d/bench.json ] && cp $$d/bench.json tools/bench/results-vm/$$k.json; done; true
	$(GO) run ./tools/bench/cmd/whyslow-bench -vm-results tools/bench/results-vm -out BENCHMARKS.md

## bench-vm-serve: whyslow serve for an hour under the storm's load in a qemu guest (TCG, one
## vCPU: less load than the host's section 6); its console and bench.json in
## tools/vmtest/out-serve/<kernel>/, kept as tools/bench/results-vm-serve.json and rendered into
## BENCHMARKS.md (also when the run failed at its end: the bench.json says what failed)
bench-vm-serve:
	@./tools/scripts/apt-ensure $(VMTEST_DEBS)
	$(GO) run ./tools/vmtest/cmd/vmtest -kernel $(BENCH_VM_SERVE_KERNEL) -cpus 1 -timeout 90m -out tools/vmtest/out-serve -bench "$(BENCH_VM_SERVE_FLAGS)"; rc=$$?; \
	f=tools/vmtest/out-serve/$(BENCH_VM_SERVE_KERNEL)/bench.json; \
	if [ -f $$f ]; then cp $$f tools/bench/results-vm-serve.json && \
		$(GO) run ./tools/bench/cmd/whyslow-bench -vm-serve-results tools/bench/results-vm-serve.json -out BENCHMARKS.md || rc=1; \
	else echo "no $$f: see tools/vmtest/out-serve/$(BENCH_VM_SERVE_KERNEL)/console.log" >&2; rc=1; fi; exit $$rc

clean:
	rm -f $(BINARY)
