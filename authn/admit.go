package authn

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
)

// Admission is what the compiled jwt_authn filter does to one request.
type Admission struct {
	// Rejected is why jwt_authn answers 401 itself ("" when it passes the
	// request on to authorization).
	Rejected string
	// Payload is the verified payload as authorization reads it (space-
	// delimited claims split into lists); nil without a verified token.
	Payload map[string]any
	// Headers are the request headers after claim_to_headers replaced
	// the ones it owns.
	Headers map[string]string
}

// Admit evaluates the compiled jwt_authn configuration for a request
// whose token (if any) carries claims, and whose signature is taken as
// valid: which requirement applies to method and path, whether the
// issuer, audiences and expiry are accepted, and what reaches
// authorization. It is how policy explain models authentication; the
// decision follows the filter's own fields, not the policy objects.
func (o *Output) Admit(claims map[string]any, method, path string, headers map[string]string, now time.Time) Admission {
	return AdmitJWT(o.JWT, claims, method, path, headers, now)
}

// AdmitJWT is Admit for a jwt_authn configuration as a proxy got it (nil:
// no jwt_authn filter).
func AdmitJWT(cfg *jwtv3.JwtAuthentication, claims map[string]any, method, path string, headers map[string]string, now time.Time) Admission {
	a := Admission{Headers: map[string]string{}}
	for k, v := range headers {
		a.Headers[k] = v
	}
	if cfg == nil {
		return a // no jwt_authn: nothing is verified, nothing reaches metadata
	}
	if method == "OPTIONS" && cfg.BypassCorsPreflight {
		return a // CORS preflight: not checked at all
	}
	p, _, _ := strings.Cut(path, "?")
	var req *jwtv3.JwtRequirement
	matched := false
	for _, r := range cfg.Rules {
		if routeMatches(r, p) {
			req, matched = r.GetRequires(), true
			break
		}
	}
	if !matched || req == nil {
		return a // no requirement on this path: nothing verified
	}
	if claims == nil {
		if allowsMissing(req) {
			return a
		}
		a.Rejected = "Jwt is missing"
		return a
	}
	iss, _ := claims["iss"].(string)
	var name string
	var prov *jwtv3.JwtProvider
	for n, pv := range cfg.Providers {
		if pv.Issuer == iss && (prov == nil || n < name) {
			name, prov = n, pv
		}
	}
	switch {
	case prov == nil:
		a.Rejected = fmt.Sprintf("Jwt issuer %q is not configured", iss)
		return a
	case !names(req, name):
		a.Rejected = fmt.Sprintf("Jwt issuer %q is not required on %s", iss, p)
		return a
	case len(prov.Audiences) > 0 && !slices.ContainsFunc(stringsOf(claims["aud"]), func(x string) bool { return slices.Contains(prov.Audiences, x) }):
		a.Rejected = "Audiences in Jwt are not allowed"
		return a
	}
	if exp, ok := unixTime(claims["exp"]); ok && now.After(exp) {
		a.Rejected = "Jwt is expired"
		return a
	}
	a.Payload = map[string]any{}
	split := prov.GetNormalizePayloadInMetadata().GetSpaceDelimitedClaims()
	for k, v := range claims {
		if s, ok := v.(string); ok && slices.Contains(split, k) {
			a.Payload[k] = strings.Fields(s)
			continue
		}
		a.Payload[k] = v
	}
	for _, c := range prov.ClaimToHeaders {
		if v, ok := claims[c.ClaimName]; ok {
			a.Headers[strings.ToLower(c.HeaderName)] = fmt.Sprint(v)
		}
	}
	return a
}

// unixTime reads a NumericDate claim (a JSON number, or its decimal text
// as policy explain's flags give it).
func unixTime(v any) (time.Time, bool) {
	switch x := v.(type) {
	case float64:
		return time.Unix(int64(x), 0), true
	case int64:
		return time.Unix(x, 0), true
	case string:
		n, err := strconv.ParseInt(x, 10, 64)
		return time.Unix(n, 0), err == nil
	}
	return time.Time{}, false
}

func stringsOf(v any) []string {
	switch x := v.(type) {
	case string:
		return []string{x}
	case []string:
		return x
	case []any:
		var out []string
		for _, e := range x {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

func routeMatches(r *jwtv3.RequirementRule, path string) bool {
	m := r.GetMatch()
	switch {
	case m.GetPrefix() != "" || m.GetPath() == "" && m.GetSafeRegex() == nil:
		return strings.HasPrefix(path, m.GetPrefix())
	case m.GetPath() != "":
		return path == m.GetPath()
	default:
		re, err := regexp.Compile("^(?:" + m.GetSafeRegex().GetRegex() + ")$")
		return err == nil && re.MatchString(path)
	}
}

// allowsMissing: the requirement is met by a request without a token.
func allowsMissing(r *jwtv3.JwtRequirement) bool {
	switch t := r.GetRequiresType().(type) {
	case *jwtv3.JwtRequirement_AllowMissing, *jwtv3.JwtRequirement_AllowMissingOrFailed:
		return true
	case *jwtv3.JwtRequirement_RequiresAny:
		return slices.ContainsFunc(t.RequiresAny.GetRequirements(), allowsMissing)
	case *jwtv3.JwtRequirement_RequiresAll:
		for _, x := range t.RequiresAll.GetRequirements() {
			if !allowsMissing(x) {
				return false
			}
		}
		return true
	}
	return false
}

// names: a valid token of provider name meets the requirement.
func names(r *jwtv3.JwtRequirement, name string) bool {
	switch t := r.GetRequiresType().(type) {
	case *jwtv3.JwtRequirement_ProviderName:
		return t.ProviderName == name
	case *jwtv3.JwtRequirement_RequiresAny:
		return slices.ContainsFunc(t.RequiresAny.GetRequirements(), func(x *jwtv3.JwtRequirement) bool { return names(x, name) })
	case *jwtv3.JwtRequirement_RequiresAll:
		for _, x := range t.RequiresAll.GetRequirements() {
			if !names(x, name) && !allowsMissing(x) {
				return false
			}
		}
		return true
	}
	return false
}
