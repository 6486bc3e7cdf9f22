# The entry points a newcomer and CI use. `make run` and `make test` are the README's two commands.
CARGO ?= cargo

.PHONY: run test lint bench

# The webhook on https://127.0.0.1:8443 (metrics on :9090) with the bundled default policy and
# development certificates generated into certs/ on first run.
run:
	$(CARGO) run --release -- serve --listen 127.0.0.1:8443 --metrics-listen 127.0.0.1:9090 --log-format text

# Everything that proves registry-gate: unit, property, vector, CLI and HTTPS integration tests.
test:
	$(CARGO) test --locked

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

bench:
	$(CARGO) bench --bench decision
