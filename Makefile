# The entry points a newcomer and CI use. `make run` and `make test` are the README's two commands.
CARGO ?= cargo

.PHONY: run test controlplane moto lint deny fuzz bench

# The webhook on https://127.0.0.1:8443 (metrics on :9090) with the bundled policy, or
# POLICY=FILE (reloaded when it changes), and development certificates generated into certs/ on
# first run. The quickstart profile builds in minutes; `cargo build --release` is what to deploy.
POLICY ?=
run:
	$(CARGO) run --profile quickstart -- serve --listen 127.0.0.1:8443 --metrics-listen 127.0.0.1:9090 \
		--log-format text $(if $(POLICY),--policy $(POLICY))

# Everything that proves registry-gate: unit, property, vector, differential (against Go's own
# parser, built from the Go module proxy), CLI, HTTPS integration tests, the end-to-end suite
# against a real kube-apiserver + etcd (built once from the Go module proxy into
# ~/.cache/registry-gate, about 13 minutes cold; seconds when cached), and the manifests
# installed into that API server (manifests/validate.sh). The alert rules are unit-tested with
# promtool, and tests/prometheus.rs runs the dashboard's queries and the rules on a real Prometheus.
# image-smoke builds and runs the container image's executable (docs/container-image.md).
test: controlplane moto prometheus registry image-smoke
	manifests/monitoring/test-rules.sh
	REGISTRY_GATE_CONTROLPLANE_BIN="$$(tests/controlplane/build.sh | tail -n 1)" \
		$(CARGO) test --locked --lib --bins --tests
	manifests/validate.sh
	$(MAKE) --no-print-directory chart

controlplane:
	tests/controlplane/build.sh

# The manifests, the chart and the end-to-end tests against another Kubernetes release, by
# default the oldest the chart supports (tests/controlplane/README.md): what the release lacks
# is left out by name. Not part of `make test`: a second cold control-plane build takes about
# 13 minutes.
.PHONY: test-k8s
K8S_VERSION ?= v1.30.14
test-k8s: registry
	python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml
	bin="$$(REGISTRY_GATE_K8S_VERSION=$(K8S_VERSION) tests/controlplane/build.sh | tail -n 1)" && \
		REGISTRY_GATE_CONTROLPLANE_BIN="$$bin" manifests/validate.sh && \
		REGISTRY_GATE_CONTROLPLANE_BIN="$$bin" charts/test.sh && \
		REGISTRY_GATE_CONTROLPLANE_BIN="$$bin" $(CARGO) test --locked --test e2e

# The container image's executable (Dockerfile), built by build/release.sh exactly as the image
# build does (static, musl, release profile) and run as the image runs it: UID 65532, a root it
# cannot write, HTTPS /validate and /mutate (build/smoke.sh). Cold, a release build with LTO:
# about 12 minutes on a busy 2-core machine; a second when nothing changed.
.PHONY: image-smoke release
image-smoke:
	build/smoke.sh amd64

# Static executables for linux/amd64 and linux/arm64 in dist/, with SHA256SUMS, each put through
# the smoke test (arm64 under qemu-user). arm64 is cross-compiled with Debian's GNU cross gcc.
release:
	rm -rf dist
	build/release.sh --out dist amd64 arm64
	build/smoke.sh amd64 arm64

# The Helm chart (charts/registry-gate) checked against manifests/ and installed into a real
# kube-apiserver (charts/test.sh). helm is built from its Go module once into
# ~/.cache/registry-gate/helm (charts/helm.sh: 6 minutes cold on a busy 2-core machine, then cached).
.PHONY: chart
chart: controlplane
	python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml
	REGISTRY_GATE_CONTROLPLANE_BIN="$$(tests/controlplane/build.sh | tail -n 1)" charts/test.sh

.PHONY: prometheus dashboard-png registry

# Prometheus and promtool, from Debian's package, when promtool is missing. The package enables a
# service listening on :9090 (the port `make run` uses for metrics); it is stopped and disabled,
# since the tests start a Prometheus of their own on a free port.
prometheus:
	python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml
	command -v promtool >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus && \
		{ systemctl disable --now prometheus >/dev/null 2>&1 || service prometheus stop >/dev/null 2>&1 || true; }; }

# docs/img/dashboard.png: the Grafana dashboard drawn from the Prometheus of tests/prometheus.rs
# after DASHBOARD_SECONDS of load (docs/monitoring.md). Not part of `make test`.
DASHBOARD_SECONDS ?= 300
dashboard-png: controlplane prometheus
	python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet matplotlib
	REGISTRY_GATE_CONTROLPLANE_BIN="$$(tests/controlplane/build.sh | tail -n 1)" \
	REGISTRY_GATE_DASHBOARD_PNG=docs/img/dashboard.png REGISTRY_GATE_DASHBOARD_SECONDS=$(DASHBOARD_SECONDS) \
		$(CARGO) test --locked --test prometheus -- --nocapture

# Debian's docker-registry (distribution 2.8), the real registry tests/registry_test.rs starts on
# free loopback ports. The package's own service (on :5000) is stopped and disabled.
registry:
	command -v docker-registry >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry && \
		{ systemctl disable --now docker-registry >/dev/null 2>&1 || service docker-registry stop >/dev/null 2>&1 || true; }; }

# moto's server mode: the AWS API emulator the ECR tests (tests/ecr_moto.rs) run against.
moto:
	python3 -c 'import moto.server' 2>/dev/null || python3 -m pip install --quiet 'moto[server]'

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# A short fuzz run of every cargo-fuzz target from its committed corpus (fuzz/run.sh);
# FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 30
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh

# Licenses, banned crates (a second crypto provider among them) and sources: deny.toml.
deny:
	command -v cargo-deny >/dev/null || $(CARGO) install cargo-deny --locked
	$(CARGO) deny --locked check licenses bans sources

bench:
	$(CARGO) bench --bench decision
	$(CARGO) bench --bench review

# The peers' engines (OPA's Rego as Gatekeeper's k8sallowedrepos runs it, cel-go as a
# ValidatingAdmissionPolicy runs it) beside registry-gate on the same Pod and registries, in one
# run (benches/peers/run.sh, about 5 minutes; Go modules from the Go module proxy). Not part of
# `make test`.
.PHONY: bench-peers
bench-peers:
	benches/peers/run.sh
