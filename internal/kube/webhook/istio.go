package webhook

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"github.com/wardenmesh/warden/api"
)

// Istio's validation of the security kinds beyond its CRDs' schemas
// (pkg/config/validation: ValidateAuthorizationPolicy,
// ValidatePeerAuthentication, validateJwtRule; pkg/config/security), for
// what warden's decoder does not check itself. They are admission rules
// only: an object already stored is compiled as it is (warden's
// compilers report what they cannot express and never drop a DENY), so
// they live here and not in the decoder. Messages are Istio's, behind
// the object's name.

// istioRules checks obj as Istio's validation does; nil for kinds it has
// no rules for here (the networking kinds: the decoder's checks only).
func istioRules(obj api.Object) error {
	m := obj.Meta()
	var err error
	switch o := obj.(type) {
	case *api.AuthorizationPolicy:
		err = authorizationPolicy(&o.Spec)
	case *api.PeerAuthentication:
		err = peerAuthentication(&o.Spec)
	case *api.RequestAuthentication:
		for _, r := range o.Spec.JWTRules {
			if err = jwtRule(r); err != nil {
				break
			}
		}
	}
	if err != nil {
		return fmt.Errorf("%s %s/%s: %w", obj.Type().Kind, m.Namespace, m.Name, err)
	}
	return nil
}

func peerAuthentication(s *api.PeerAuthenticationSpec) error {
	if (s.Selector == nil || len(s.Selector.MatchLabels) == 0) && len(s.PortLevelMTLS) > 0 {
		return errors.New("mesh/namespace peer authentication cannot have port level mTLS")
	}
	return nil
}

var strictHeaderName = regexp.MustCompile(`^[-_A-Za-z0-9]+$`)

func jwtRule(r api.JWTRule) error {
	for _, a := range r.Audiences {
		if a == "" {
			return errors.New("audience must be non-empty string")
		}
	}
	if r.Issuer == "" && r.JwksURI == "" {
		return errors.New("issuer or jwksUri must be non-empty string")
	}
	for _, h := range r.FromHeaders {
		if h.Name == "" {
			return errors.New("location header name must be non-empty string")
		}
	}
	for _, p := range r.FromParams {
		if p == "" {
			return errors.New("location query must be non-empty string")
		}
	}
	for _, c := range r.FromCookies {
		if c == "" {
			return errors.New("cookie name must be non-empty string")
		}
	}
	for _, c := range r.OutputClaimToHeaders {
		if c.Claim == "" || c.Header == "" {
			return errors.New("outputClaimToHeaders header and claim value must be non-empty string")
		}
		if !strictHeaderName.MatchString(c.Header) {
			return fmt.Errorf("header name %s is not a valid header name", c.Header)
		}
	}
	return nil
}

func authorizationPolicy(s *api.AuthorizationPolicySpec) error {
	action := s.Action
	if action == "" {
		action = "ALLOW"
	}
	if action == "CUSTOM" {
		if len(s.Rules) == 0 {
			return errors.New("CUSTOM action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request")
		}
		if s.Provider == nil || s.Provider.Name == "" {
			return errors.New("`provider.name` must not be empty")
		}
		if err := customRules(s.Rules); err != nil {
			return err
		}
	}
	if s.Provider != nil && action != "CUSTOM" {
		return fmt.Errorf("`provider` must not be with non CUSTOM action, found %s", action)
	}
	if action == "DENY" && len(s.Rules) == 0 {
		return errors.New("DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request")
	}
	for i, r := range s.Rules {
		for _, f := range r.From {
			if f.Source == nil {
				continue // the decoder refuses it
			}
			if err := source(f.Source); err != nil {
				return fmt.Errorf("rule %d: %w", i, err)
			}
		}
		for _, t := range r.To {
			if t.Operation == nil {
				continue // the decoder refuses it
			}
			if err := operation(t.Operation); err != nil {
				return fmt.Errorf("rule %d: %w", i, err)
			}
		}
		for _, c := range r.When {
			if c.Key == "" {
				return fmt.Errorf("rule %d: `key` must not be empty", i)
			}
			if err := attribute(c.Key, c.Values); err != nil {
				return fmt.Errorf("rule %d: invalid `value` for `key` %s: %w", i, c.Key, err)
			}
			if err := attribute(c.Key, c.NotValues); err != nil {
				return fmt.Errorf("rule %d: invalid `notValue` for `key` %s: %w", i, c.Key, err)
			}
		}
	}
	return nil
}

// customRules refuses what a CUSTOM policy cannot match on (identities:
// the external authorizer runs before them).
func customRules(rules []api.Rule) error {
	for _, r := range rules {
		for _, f := range r.From {
			s := f.Source
			if s == nil {
				continue
			}
			for _, field := range []struct {
				name string
				set  bool
			}{
				{"From.Namespaces", len(s.Namespaces) > 0}, {"From.NotNamespaces", len(s.NotNamespaces) > 0},
				{"From.ServiceAccounts", len(s.ServiceAccounts) > 0}, {"From.NotServiceAccounts", len(s.NotServiceAccounts) > 0},
				{"From.TrustDomains", len(s.TrustDomains) > 0}, {"From.NotTrustDomains", len(s.NotTrustDomains) > 0},
				{"From.Principals", len(s.Principals) > 0}, {"From.NotPrincipals", len(s.NotPrincipals) > 0},
				{"From.RequestPrincipals", len(s.RequestPrincipals) > 0}, {"From.NotRequestPrincipals", len(s.NotRequestPrincipals) > 0},
			} {
				if field.set {
					return fmt.Errorf("%s is currently not supported with CUSTOM action", field.name)
				}
			}
		}
		for _, c := range r.When {
			switch {
			case c.Key == "source.namespace", c.Key == "source.serviceAccount", c.Key == "source.trustDomain", c.Key == "source.principal",
				strings.HasPrefix(c.Key, "request.auth."):
				return fmt.Errorf("%s is currently not supported with CUSTOM action", c.Key)
			}
		}
	}
	return nil
}

func source(s *api.Source) error {
	for _, l := range []struct {
		name   string
		values []string
		check  func(string, []string) error
	}{
		{"IpBlocks", s.IPBlocks, ips}, {"NotIpBlocks", s.NotIPBlocks, ips},
		{"RemoteIpBlocks", s.RemoteIPBlocks, ips}, {"NotRemoteIpBlocks", s.NotRemoteIPBlocks, ips},
		{"Principals", s.Principals, nonEmpty}, {"NotPrincipals", s.NotPrincipals, nonEmpty},
		{"RequestPrincipals", s.RequestPrincipals, nonEmpty}, {"NotRequestPrincipals", s.NotRequestPrincipals, nonEmpty},
		{"Namespaces", s.Namespaces, nonEmpty}, {"NotNamespaces", s.NotNamespaces, nonEmpty},
		{"ServiceAccounts", s.ServiceAccounts, serviceAccounts}, {"NotServiceAccounts", s.NotServiceAccounts, serviceAccounts},
		{"TrustDomains", s.TrustDomains, trustDomains}, {"NotTrustDomains", s.NotTrustDomains, trustDomains},
	} {
		if err := l.check(l.name, l.values); err != nil {
			return err
		}
	}
	return nil
}

func operation(o *api.Operation) error {
	for _, l := range []struct {
		name   string
		values []string
		check  func(string, []string) error
	}{
		{"Ports", o.Ports, ports}, {"NotPorts", o.NotPorts, ports},
		{"Methods", o.Methods, nonEmpty}, {"NotMethods", o.NotMethods, nonEmpty},
		{"Hosts", o.Hosts, nonEmpty}, {"NotHosts", o.NotHosts, nonEmpty},
		{"Paths", o.Paths, pathTemplates}, {"NotPaths", o.NotPaths, pathTemplates},
	} {
		if err := l.check(l.name, l.values); err != nil {
			return err
		}
	}
	return nil
}

func nonEmpty(key string, values []string) error {
	for _, v := range values {
		if v == "" {
			return fmt.Errorf("empty value not allowed, found in %s", key)
		}
	}
	return nil
}

func ips(key string, values []string) error {
	if err := nonEmpty(key, values); err != nil {
		return err
	}
	for _, v := range values {
		if strings.Contains(v, "/") {
			if _, err := netip.ParsePrefix(v); err != nil {
				return fmt.Errorf("bad CIDR range (%s): %v", v, err)
			}
		} else if _, err := netip.ParseAddr(v); err != nil {
			return fmt.Errorf("bad IP address (%s)", v)
		}
	}
	return nil
}

func ports(key string, values []string) error {
	if err := nonEmpty(key, values); err != nil {
		return err
	}
	for _, v := range values {
		if p, err := strconv.ParseUint(v, 10, 32); err != nil || p > 65535 {
			return fmt.Errorf("bad port (%s)", v)
		}
	}
	return nil
}

func wildcards(key string, values []string) error {
	if err := nonEmpty(key, values); err != nil {
		return err
	}
	for _, v := range values {
		switch n := strings.Count(v, "*"); {
		case n > 1:
			return fmt.Errorf("at most one wildcard is allowed, found in %s: %q", key, v)
		case n == 1 && v != "*" && !strings.HasPrefix(v, "*") && !strings.HasSuffix(v, "*"):
			return fmt.Errorf("wildcard is only allowed at the start or end, found in %s: %q", key, v)
		}
	}
	return nil
}

func trustDomains(key string, values []string) error {
	if err := wildcards(key, values); err != nil {
		return err
	}
	for _, v := range values {
		if strings.Contains(v, "/") {
			return fmt.Errorf("trust domain must not contain '/', found in %s: %q", key, v)
		}
	}
	return nil
}

func serviceAccounts(key string, values []string) error {
	if len(values) > 16 {
		return errors.New("may not have more than 16 values")
	}
	for _, v := range values {
		ns, sa, cut := strings.Cut(v, "/")
		switch {
		case v == "":
			return fmt.Errorf("empty value not allowed, found in %s", key)
		case strings.Contains(v, "*"):
			return fmt.Errorf("wildcard not allowed, found in %s", key)
		case strings.Count(v, "/") > 1:
			return fmt.Errorf("expected format 'serviceAccount' or 'namespace/serviceAccount', found %q in %s", v, key)
		case len(v) > 320:
			return fmt.Errorf("value cannot exceed 320 characters, found %q in %s", v, key)
		case cut && ns == "":
			return fmt.Errorf("expected format 'serviceAccount' or 'namespace/serviceAccount', found empty namespace %q in %s", v, key)
		case cut && sa == "":
			return fmt.Errorf("expected format 'serviceAccount' or 'namespace/serviceAccount', found empty serviceAccount %q in %s", v, key)
		}
	}
	return nil
}

// pchar of RFC 3986 (Envoy's path template literals).
var pathLiteral = regexp.MustCompile(`^[a-zA-Z0-9-._~%!$&'()+,;:@=]+$`)

// pathTemplates checks Envoy's path templates ({*} one segment, {**} the
// rest, last) as Istio does.
func pathTemplates(key string, values []string) error {
	if err := nonEmpty(key, values); err != nil {
		return err
	}
	for _, v := range values {
		templated := strings.Contains(v, "{*}") || strings.Contains(v, "{**}")
		p := strings.Trim(v, "/")
		rest := false
		for _, seg := range strings.Split(p, "/") {
			switch {
			case (seg == "{*}" || seg == "{**}") && rest:
				return fmt.Errorf("invalid or unsupported path %s, found in %s. {**} is not the last operator", p, key)
			case seg == "{*}":
				continue
			case seg == "{**}":
				rest = true
				continue
			case strings.ContainsAny(seg, "{}"):
				return fmt.Errorf("invalid or unsupported path %s, found in %s. Contains '{' or '}' beyond a supported path template", p, key)
			case templated && !pathLiteral.MatchString(seg):
				return fmt.Errorf("invalid or unsupported path %s, found in %s. Contains segment %s with invalid string literal", p, key, seg)
			}
		}
	}
	return nil
}

// attribute checks a when condition's values for its key.
func attribute(key string, values []string) error {
	if err := nonEmpty(key, values); err != nil {
		return err
	}
	mapKey := func() error {
		if open := strings.Index(key, "["); strings.HasSuffix(key, "]") && open > 0 && open < len(key)-2 {
			return nil
		}
		return fmt.Errorf("bad key (%s): should have format a[b]", key)
	}
	switch {
	case strings.HasPrefix(key, "request.headers"), strings.HasPrefix(key, "request.auth.claims"), strings.HasPrefix(key, "experimental.envoy.filters."):
		return mapKey()
	case key == "source.ip", key == "remote.ip", key == "destination.ip":
		return ips(key, values)
	case key == "destination.port":
		return ports(key, values)
	case key == "source.serviceAccount":
		return serviceAccounts(key, values)
	case key == "source.trustDomain":
		return wildcards(key, values)
	case key == "source.namespace", key == "source.principal", key == "request.auth.principal", key == "request.auth.audiences",
		key == "request.auth.presenter", key == "connection.sni":
		return nil
	case key == "destination.namespace":
		return fmt.Errorf("attribute %s is replaced by the metadata.namespace", key)
	case strings.HasPrefix(key, "destination.labels"):
		return fmt.Errorf("attribute %s is replaced by the workload selector", key)
	case key == "destination.name", key == "destination.user":
		return fmt.Errorf("deprecated attribute %s: only supported in v1alpha1", key)
	}
	return fmt.Errorf("unknown attribute: %s", key)
}
