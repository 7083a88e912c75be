// Package kube is warden's only client-go user: it authenticates callers
// with TokenReview, keeps CA material in Secrets, publishes the trust bundle
// and Citadel-style per-service-account Secrets, and elects a leader among
// replicas for those writes.
package kube

import (
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Client QPS and burst. client-go's defaults (5 QPS, burst 10) throttle a
// CA when a node scale-up brings hundreds of workloads at once (Linkerd's
// identity service hit exactly this), so warden asks for far more; the API
// server's priority and fairness still protects it.
const (
	DefaultQPS   = 200
	DefaultBurst = 400
)

// RESTConfig loads a kubeconfig file, or the in-cluster configuration when
// path is empty, with warden's rate limits.
func RESTConfig(path string) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if path == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", path)
	}
	if err != nil {
		return nil, fmt.Errorf("kube: config: %w", err)
	}
	cfg.QPS, cfg.Burst = DefaultQPS, DefaultBurst
	cfg.UserAgent = "warden"
	return cfg, nil
}

// NewClientset makes a clientset from cfg.
func NewClientset(cfg *rest.Config) (kubernetes.Interface, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kube: client: %w", err)
	}
	return cs, nil
}
