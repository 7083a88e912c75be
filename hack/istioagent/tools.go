//go:build tools

// Package main's tools file keeps what Istio's agent command
// (istio.io/istio/pilot/cmd/pilot-agent) imports in go.mod and go.sum, so
// hack/istioagent.sh can build that command, unmodified, from this module.
package main

import (
	_ "github.com/KimMachineGun/automemlimit"
	_ "istio.io/istio/pilot/cmd/pilot-agent/app"
	_ "istio.io/istio/security/pkg/nodeagent/sds"
)
