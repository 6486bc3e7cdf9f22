# The entry points a newcomer and CI use. `make test` is the README's test command.
CARGO ?= cargo

.PHONY: run test lint bench

# Checks three images against the bundled example policy (the webhook server comes later).
run:
	$(CARGO) run --release -- check --policy policy/example-all-types.yaml \
		nginx ghcr.io/acme/api:1.2 ghcr.io/acme-evil/api:1.2 || test $$? -eq 1

# Everything that proves registry-gate: unit, property, vector, CLI and integration tests.
test:
	$(CARGO) test --locked

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

bench:
	$(CARGO) bench --bench decision
