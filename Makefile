# warden — `make demo` runs the standalone demo, `make test` runs every check CI runs.
GO         ?= go
BIN        := $(CURDIR)/bin
STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(BIN)/staticcheck
FUZZ_SCALE ?= 1
VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS    := -X github.com/wardenmesh/warden/internal/app.Version=$(VERSION)

.PHONY: race bench-peers image all build kube-binaries podcert-client vault-binary istio-oracle istio-agent istioctl prometheus test unit lint verify-imports fuzz-smoke fuzz test-demo demo bench bench-go bench-ca bench-sds bench-smoke clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/warden ./cmd/warden

$(STATICCHECK):
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

## test: everything CI runs — import rules, lint, unit and end-to-end tests, fuzz smoke, the demo.
test: verify-imports lint fuzz-smoke test-demo bench-smoke unit

verify-imports:
	hack/verify-imports.sh

lint: $(STATICCHECK)
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

## image: build warden's OCI image without a container daemon (static binary, user 65532, no shell) into bin/image;
## IMAGE=<registry>/warden also pushes it and writes the reference by digest into deploy/warden/kustomization.yaml.
GOARCH     ?= $(shell $(GO) env GOARCH)
image:
	CGO_ENABLED=0 GOOS=linux GOARCH=$(GOARCH) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/linux_$(GOARCH)/warden ./cmd/warden
	$(GO) run ./hack/image --binary $(BIN)/linux_$(GOARCH)/warden --version $(VERSION) --arch $(GOARCH) --layout $(BIN)/image \
	  $(if $(IMAGE),--push $(IMAGE) --deploy deploy/warden)

## kube-binaries: build (once, cached in .cache/kube) the kube-apiserver and etcd the tests run.
kube-binaries:
	hack/kube-binaries.sh

## podcert-client: build (once, cached in ~/.cache/warden/podcertclient) the kubelet's pod-certificate client the pod-certificate tests run.
podcert-client:
	hack/podcert-client.sh

## vault-binary: build (once, cached in ~/.cache/warden/vault) the real Vault server the tests run.
vault-binary:
	hack/vault-binary.sh

## istio-oracle: build (once, cached in ~/.cache/warden/istioauthz) Istio's authorization builder and listener generator, the rbac and xds tests' oracle.
istio-oracle:
	hack/istioauthz.sh

## prometheus: build (once, cached in ~/.cache/warden/prometheus) the Prometheus server and promtool the dashboard and alert test runs.
prometheus:
	hack/prometheus.sh

## istio-agent: build (once, cached in ~/.cache/warden/istioagent) Istio's pilot-agent and istio-probe, for the drop-in test.
istio-agent:
	hack/istioagent.sh

## istioctl: build (once, cached in ~/.cache/warden/istioctl) Istio's istioctl, for the "In istiod's place" migration test.
istioctl:
	hack/istioctl.sh

TEST_ENV = KUBEBUILDER_ASSETS="$$(hack/kube-binaries.sh)" WARDEN_VAULT_BIN="$$(hack/vault-binary.sh)" WARDEN_ISTIO_AUTHZ_BIN="$$(hack/istioauthz.sh)" \
	  WARDEN_ISTIO_AGENT_DIR="$$(hack/istioagent.sh)" WARDEN_PROMETHEUS_DIR="$$(hack/prometheus.sh)" WARDEN_ISTIOCTL="$$(hack/istioctl.sh)" \
	  WARDEN_PODCERT_CLIENT="$$(hack/podcert-client.sh)"

unit:
	$(TEST_ENV) $(GO) test -count=1 -timeout 20m ./...

## race: every Go test under the race detector (not part of `make test`: about 25 minutes on 2 cores).
race:
	$(TEST_ENV) $(GO) test -race -count=1 -timeout 60m ./...

fuzz-smoke:
	FUZZ_SCALE=$(FUZZ_SCALE) hack/fuzz.sh

## fuzz: longer fuzzing (FUZZ_SCALE=100 make fuzz; execution counts, not durations).
fuzz: FUZZ_SCALE = 20
fuzz:
	FUZZ_SCALE=$(FUZZ_SCALE) hack/fuzz.sh

test-demo: build
	WARDEN=$(BIN)/warden DEMO_CA_PORT=25012 DEMO_HTTP_PORT=25014 DEMO_APP_PORT=28080 hack/demo.sh

## bench-smoke: the load commands run briefly (no figures asserted), so they keep working.
bench-smoke: build
	$(BIN)/warden bench sds --streams 200
	$(BIN)/warden bench xds --proxies 50 --services 20 --sidecar
	DURATION=1s CONCURRENCY=4 KEY_TYPES=ecdsa-p256 UPSTREAMS="self-signed vault" METRICS="on off" WARDEN=$(BIN)/warden hack/bench-ca.sh

## demo: the standalone demo on the default ports.
demo: build
	WARDEN=$(BIN)/warden hack/demo.sh

## bench-peers: warden beside step-ca and cfssl serve, alternating runs (hack/bench-peers.sh; builds the peers once).
bench-peers: build
	WARDEN=$(BIN)/warden hack/bench-peers.sh

## bench: Go benchmarks, then the end-to-end CA load.
bench: bench-go bench-ca bench-sds

bench-go:
	WARDEN_VAULT_BIN="$$(hack/vault-binary.sh)" $(GO) test -run '^$$' -bench . -benchtime 2s ./...

## bench-ca: self-signed and Vault upstreams side by side, medians of 5 alternating runs.
bench-ca: build
	UPSTREAMS="self-signed vault" RUNS=5 WARDEN=$(BIN)/warden hack/bench-ca.sh

bench-sds: build
	$(BIN)/warden bench sds --streams 10000

clean:
	rm -rf $(BIN)
