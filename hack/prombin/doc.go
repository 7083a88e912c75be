// Package prombin pins the Prometheus server (and its rule checker) that
// hack/prometheus.sh builds for warden's dashboard and alert tests:
// go.mod and go.sum hold github.com/prometheus/prometheus at the version
// the tests run, so the build is reproducible. go.mod is kept by
// `go get github.com/prometheus/prometheus/cmd/prometheus@<version>
// github.com/prometheus/prometheus/cmd/promtool@<version>`, not go mod tidy
// (nothing here imports Prometheus).
package prombin
