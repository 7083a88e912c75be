package trustbundle_test

import (
	"testing"

	"github.com/wardenmesh/warden/internal/kube/kubetest"
)

// The tests share one real kube-apiserver and etcd (kubetest).
var apiserver kubetest.Server

func TestMain(m *testing.M) { kubetest.Main(m, &apiserver) }
