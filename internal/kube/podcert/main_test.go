package podcert_test

import (
	"testing"

	"github.com/wardenmesh/warden/internal/kube/kubetest"
)

// The tests share one real kube-apiserver and etcd (kubetest), started
// as a cluster with kubelets: Node,RBAC authorization and the
// NodeRestriction admission plugin, so that requests created with a
// node's credentials are held to what a kubelet may create.
var apiserver kubetest.Server

func TestMain(m *testing.M) { kubetest.MainWith(m, &apiserver, kubetest.Options{Nodes: true}) }
