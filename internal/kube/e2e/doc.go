// Package e2e holds the end-to-end tests of Kubernetes mode: they drive
// warden itself (serve, check, ca rotate, proxy-config, cert request;
// in-process through internal/app, or as a child process a test can
// kill -9) and the deploy/ manifests against a real API server
// (kubetest), and talk to it as operators and workloads would: kubectl,
// TokenRequest tokens, the CA and ADS over gRPC and TLS. The tests of
// each internal/kube package, which drive its types directly, live with
// it.
package e2e
