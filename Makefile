# SD3 Lab: the two commands of the README are `make run` and `make test`.
# Both install what is missing first (scripts/setup.sh is idempotent and fast once done).
CARGO ?= cargo
SETUP_FLAGS ?=

.PHONY: setup build run test doctor bench-blas fmt lint fuzz

setup:
	scripts/setup.sh $(SETUP_FLAGS)

build: setup
	$(CARGO) build --release --locked

# Starts the desktop app; where there is no display, a headless tiny-model demo through the CLI.
run: build
	target/release/sd3lab

doctor: build
	target/release/sd3lab doctor

# The whole test suite (unit, integration, numpy interop), in release mode: the MLX tests
# run real numerics and the build is shared with `make run`.
test: build
	$(CARGO) test --release --locked --workspace
	@echo "make test: all tests passed"

# Reference BLAS vs OpenBLAS, side by side in one run (builds a second, reference-BLAS binary).
bench-blas: build
	scripts/bench-blas.sh

# Coverage-guided fuzzing of every parser of outside data (nightly + cargo-fuzz only for this:
# the product stays on stable). RUNS=N executions per target; see docs/FUZZING.md.
fuzz: setup
	fuzz/run.sh

fmt:
	$(CARGO) fmt --all

# Formatting and clippy with warnings as errors (CI runs this after `make test`).
lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
