//go:build tools

// Package tools keeps what Istio's istioctl command
// (istio.io/istio/istioctl/cmd/istioctl) imports in go.mod and go.sum, so
// hack/istioctl.sh can build that command, unmodified, from this module.
package tools

import _ "istio.io/istio/istioctl/cmd"
