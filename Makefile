# The two commands a new machine needs are `make run` and `make test`.
CARGO ?= cargo
JOBS ?= 2

.PHONY: run test test-only redis bench loadtest lint fmt build

build:
	$(CARGO) build -j$(JOBS) --release

## Start the service on 127.0.0.1:8080 with the built-in defaults (no Redis, no API keys needed).
run:
	$(CARGO) run -j$(JOBS) --release -- serve

## Run every test. Starts (and, as root, installs) a local Redis when none is running.
test: redis
	$(CARGO) test -j$(JOBS) --workspace --all-targets

redis:
	@scripts/ensure-redis.sh

bench:
	$(CARGO) bench -j$(JOBS) --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy -j$(JOBS) --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all
