package xds

import "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

// ShortType is Istio's short name of an xDS type URL (cds, eds, lds, rds,
// sds, as its metrics and istioctl name them), or "" for another type.
func ShortType(typeURL string) string {
	switch typeURL {
	case resource.ClusterType:
		return "cds"
	case resource.EndpointType:
		return "eds"
	case resource.ListenerType:
		return "lds"
	case resource.RouteType:
		return "rds"
	case resource.SecretType:
		return "sds"
	// ztunnel's types (xds/ambient), as Istio's GetMetricType names them.
	case "type.googleapis.com/istio.workload.Address":
		return "wds"
	case "type.googleapis.com/istio.security.Authorization":
		return "wads"
	}
	return ""
}
