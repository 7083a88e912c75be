package rbac

import (
	"fmt"
	"sort"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	extauthznet "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_authz/v3"
	rbacnet "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"

	"github.com/wardenmesh/warden/api"
)

// Filter is one compiled filter: its Envoy name and typed config.
type Filter struct {
	Name   string
	Action string // AUDIT, DENY, ALLOW, CUSTOM; "" for ext_authz
	Config proto.Message
	// rules are what enforcement evaluates; shadow only logs.
	rules, shadow *rbacv3.RBAC
}

// Output is a workload's authorization configuration.
type Output struct {
	Filters []*Filter
	Reports []string // rules dropped or conditions ignored, and why

	pathNormalization string // what Envoy does to the path before RBAC
}

// Compile selects the policies that apply to w among objs and compiles
// them into RBAC filters (HTTP, or network with Options.TCP). Legacy
// ServiceRole/ServiceRoleBinding apply when ClusterRbacConfig turns RBAC on
// for w; they join the ALLOW filter.
func Compile(objs []api.Object, w Workload, opts Options) (*Output, error) {
	opts.fill()
	var aps []*api.AuthorizationPolicy
	for _, o := range objs {
		if p, ok := o.(*api.AuthorizationPolicy); ok {
			aps = append(aps, p)
		}
	}
	out := &Output{pathNormalization: opts.PathNormalization}
	var all []compiled
	for _, p := range selected(aps, w, opts) {
		all = append(all, compilePolicy(p, opts, &out.Reports)...)
	}
	all = append(all, compileLegacy(objs, w, opts, &out.Reports)...)
	for _, action := range []string{"AUDIT", "DENY", "ALLOW", "CUSTOM"} {
		var group []compiled
		for _, c := range all {
			if c.action == action {
				group = append(group, c)
			}
		}
		if len(group) == 0 {
			continue
		}
		fs, err := filtersFor(action, group, opts)
		if err != nil {
			return nil, err
		}
		out.Filters = append(out.Filters, fs...)
	}
	return out, nil
}

var envoyAction = map[string]rbacv3.RBAC_Action{"AUDIT": rbacv3.RBAC_LOG, "DENY": rbacv3.RBAC_DENY, "ALLOW": rbacv3.RBAC_ALLOW, "CUSTOM": rbacv3.RBAC_DENY}

func filtersFor(action string, group []compiled, opts Options) ([]*Filter, error) {
	rules := &rbacv3.RBAC{Action: envoyAction[action], Policies: map[string]*rbacv3.Policy{}}
	shadow := &rbacv3.RBAC{Action: envoyAction[action], Policies: map[string]*rbacv3.Policy{}}
	enforced, dry := false, false
	for _, c := range group {
		target := rules
		if c.dryRun || action == "CUSTOM" {
			target, dry = shadow, true
		} else {
			enforced = true
		}
		if c.policy != nil {
			target.Policies[c.name] = c.policy
		}
	}
	f := &Filter{Name: HTTPFilter, Action: action}
	if opts.TCP {
		f.Name = NetworkFilter
	}
	prefix := "istio_dry_run_allow_"
	switch action {
	case "DENY":
		prefix = "istio_dry_run_deny_"
	case "AUDIT":
		prefix = "istio_dry_run_audit_"
	case "CUSTOM":
		prefix = "istio_ext_authz_"
	}
	// An ALLOW filter with rules but no (valid) policies denies everything,
	// which is what an ALLOW policy with no rules, or only dropped ones,
	// must do.
	if enforced {
		f.rules = rules
	}
	if dry {
		f.shadow = shadow
	}
	if opts.TCP {
		cfg := &rbacnet.RBAC{StatPrefix: "tcp.", Rules: f.rules}
		if dry {
			cfg.ShadowRules, cfg.ShadowRulesStatPrefix = shadow, prefix
		}
		f.Config = cfg
	} else {
		cfg := &rbachttp.RBAC{Rules: f.rules}
		if dry {
			cfg.ShadowRules, cfg.ShadowRulesStatPrefix = shadow, prefix
		}
		f.Config = cfg
	}
	if err := validate(f.Config); err != nil {
		return nil, fmt.Errorf("rbac: %s filter: %w", action, err)
	}
	out := []*Filter{f}
	if action == "CUSTOM" {
		providers := map[string]bool{}
		for _, c := range group {
			providers[c.provider] = true
		}
		names := make([]string, 0, len(providers))
		for p := range providers {
			names = append(names, p)
		}
		sort.Strings(names)
		for _, p := range names {
			svc := &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: ExtAuthzClusterPrefix + p}}}
			// Only requests a CUSTOM policy matched (the shadow rules
			// record it in metadata) go to the external authorizer.
			enabled := func(filter string) *matcherv3.MetadataMatcher {
				return &matcherv3.MetadataMatcher{
					Filter: filter,
					Path:   []*matcherv3.MetadataMatcher_PathSegment{{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: prefix + "shadow_effective_policy_id"}}},
					Value:  &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "ns["}}}},
				}
			}
			var ext proto.Message = &extauthzv3.ExtAuthz{Services: &extauthzv3.ExtAuthz_GrpcService{GrpcService: svc},
				FilterEnabledMetadata: enabled(HTTPFilter), TransportApiVersion: corev3.ApiVersion_V3}
			name := ExtAuthz
			if opts.TCP {
				ext = &extauthznet.ExtAuthz{StatPrefix: "tcp.", GrpcService: svc,
					FilterEnabledMetadata: enabled(NetworkFilter), TransportApiVersion: corev3.ApiVersion_V3}
				name = NetworkExtAuthz
			}
			if err := validate(ext); err != nil {
				return nil, err
			}
			out = append(out, &Filter{Name: name, Config: ext})
		}
	}
	return out, nil
}

func validate(m proto.Message) error {
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		return v.ValidateAll()
	}
	return nil
}

// FilterOf reads back an RBAC filter's typed config (HTTP or network), so
// Explain can evaluate filters built elsewhere (another control plane's,
// or what a proxy was sent) exactly as it evaluates warden's own.
func FilterOf(name string, cfg proto.Message) (*Filter, error) {
	f := &Filter{Name: name, Config: cfg}
	var prefix string
	switch c := cfg.(type) {
	case *rbachttp.RBAC:
		f.rules, f.shadow, prefix = c.GetRules(), c.GetShadowRules(), c.GetShadowRulesStatPrefix()
	case *rbacnet.RBAC:
		f.rules, f.shadow, prefix = c.GetRules(), c.GetShadowRules(), c.GetShadowRulesStatPrefix()
	default:
		return nil, fmt.Errorf("rbac: %T is not an RBAC filter config", cfg)
	}
	switch {
	case f.rules == nil && f.shadow != nil && prefix == "istio_ext_authz_":
		f.Action = "CUSTOM" // shadow rules that pick what goes to ext_authz
	case f.rules != nil:
		f.Action = actionName[f.rules.GetAction()]
	case f.shadow != nil:
		f.Action = actionName[f.shadow.GetAction()]
	}
	return f, nil
}

var actionName = map[rbacv3.RBAC_Action]string{rbacv3.RBAC_LOG: "AUDIT", rbacv3.RBAC_DENY: "DENY", rbacv3.RBAC_ALLOW: "ALLOW"}
