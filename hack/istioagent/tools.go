//go:build tools

// Package main's tools file keeps what Istio's agent command
// (istio.io/istio/pilot/cmd/pilot-agent) and istioctl
// (istio.io/istio/istioctl/cmd/istioctl) import in go.mod and go.sum, so
// hack/istioagent.sh and hack/istioctl.sh can build those commands,
// unmodified, from this module: one hack/ module for Istio's binaries.
package main

import (
	_ "github.com/KimMachineGun/automemlimit"
	_ "istio.io/istio/istioctl/cmd"
	_ "istio.io/istio/pilot/cmd/pilot-agent/app"
	_ "istio.io/istio/security/pkg/nodeagent/sds"
)
