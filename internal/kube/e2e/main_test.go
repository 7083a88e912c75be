package e2e

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
)

// The tests share one real kube-apiserver and etcd (kubetest), started
// as a cluster with kubelets is (Node,RBAC, NodeRestriction). Each test
// works in namespaces of its own.
var apiserver kubetest.Server

// childEnv makes the test binary run warden (its arguments in the
// variable, separated by \x1f) instead of the tests: a replica a test can
// kill -9.
const childEnv = "WARDEN_KUBE_CHILD_ARGS"

func TestMain(m *testing.M) {
	if args := os.Getenv(childEnv); args != "" {
		os.Exit(app.Run(context.Background(), strings.Split(args, "\x1f"), os.Stdout, os.Stderr))
	}
	kubetest.MainWith(m, &apiserver, kubetest.Options{Nodes: true})
}
