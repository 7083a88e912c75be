package rbac

import (
	"fmt"
	"regexp"
	"strings"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	uritemplatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/path/match/uri_template/v3"
)

// Path normalisation, Istio's meshConfig pathNormalization: what Envoy
// does to the path of every inbound request before RBAC sees it, so a
// DENY on /admin* also stops /./admin and /x/../admin.
const (
	// PathNone leaves the path as sent.
	PathNone = "NONE"
	// PathBase (Istio's default) resolves "." and ".." segments and
	// decodes percent-encoded unreserved characters (RFC 3986).
	PathBase = "BASE"
	// PathMergeSlashes also merges runs of slashes.
	PathMergeSlashes = "MERGE_SLASHES"
	// PathDecodeAndMergeSlashes also decodes %2F and %5C first.
	PathDecodeAndMergeSlashes = "DECODE_AND_MERGE_SLASHES"
)

// PathNormalizations lists the modes, Istio's default first.
var PathNormalizations = []string{PathBase, PathNone, PathMergeSlashes, PathDecodeAndMergeSlashes}

// CheckPathNormalization refuses a mode Istio does not define.
func CheckPathNormalization(mode string) error {
	for _, m := range PathNormalizations {
		if m == mode {
			return nil
		}
	}
	return fmt.Errorf("rbac: path normalization %q is not one of %s", mode, strings.Join(PathNormalizations, ", "))
}

// NormalizePath applies mode to a request path (with its query, which is
// kept as it is), as Envoy's connection manager does.
func NormalizePath(mode, p string) string {
	if mode == "" {
		mode = PathBase
	}
	if mode == PathNone || p == "" {
		return p
	}
	path, query, hasQuery := strings.Cut(p, "?")
	if mode == PathDecodeAndMergeSlashes {
		path = decodeSlashes(path)
	}
	path = removeDotSegments(decodeUnreserved(path))
	if mode == PathMergeSlashes || mode == PathDecodeAndMergeSlashes {
		for strings.Contains(path, "//") {
			path = strings.ReplaceAll(path, "//", "/")
		}
	}
	if hasQuery {
		return path + "?" + query
	}
	return path
}

func decodeSlashes(p string) string {
	r := strings.NewReplacer("%2F", "/", "%2f", "/", "%5C", `\`, "%5c", `\`)
	return strings.ReplaceAll(r.Replace(p), `\`, "/")
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// decodeUnreserved decodes %XX escapes of RFC 3986 unreserved characters
// and upper-cases the hex digits of the others.
func decodeUnreserved(p string) string {
	if !strings.Contains(p, "%") {
		return p
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+2 < len(p)+0 && i+2 <= len(p)-1 {
			h, ok1 := unhex(p[i+1])
			l, ok2 := unhex(p[i+2])
			if ok1 && ok2 {
				c := h<<4 | l
				if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~", c) >= 0 {
					b.WriteByte(c)
				} else {
					b.WriteString(strings.ToUpper(p[i : i+3]))
				}
				i += 2
				continue
			}
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

// removeDotSegments is RFC 3986 section 5.2.4 on an absolute path.
func removeDotSegments(p string) string {
	if !strings.Contains(p, ".") {
		return p
	}
	segs := strings.Split(p, "/")
	var out []string
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
			if len(out) > 1 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	r := strings.Join(out, "/")
	if strings.HasPrefix(p, "/") && !strings.HasPrefix(r, "/") {
		r = "/" + r
	}
	return r
}

// Envoy's uri_template: * is one segment of path characters, ** any run
// of them and slashes.
const templateChars = `a-zA-Z0-9\-._~%!$&'()+,;:@=`

var regexCache sync.Map // string -> *regexp.Regexp (nil when invalid)

func cachedRegexp(expr string) *regexp.Regexp {
	if re, ok := regexCache.Load(expr); ok {
		return re.(*regexp.Regexp)
	}
	re, err := regexp.Compile(expr)
	if err != nil {
		re = nil
	}
	regexCache.Store(expr, re)
	return re
}

func templateMatches(tc *corev3.TypedExtensionConfig, path string) bool {
	var cfg uritemplatev3.UriTemplateMatchConfig
	if tc.GetTypedConfig().UnmarshalTo(&cfg) != nil {
		return false
	}
	var b strings.Builder
	b.WriteString("^")
	t := cfg.PathTemplate
	for len(t) > 0 {
		switch {
		case strings.HasPrefix(t, "**"):
			b.WriteString("[" + templateChars + "/]*")
			t = t[2:]
		case strings.HasPrefix(t, "*"):
			b.WriteString("[" + templateChars + "]+")
			t = t[1:]
		default:
			n := strings.IndexByte(t, '*')
			if n < 0 {
				n = len(t)
			}
			b.WriteString(regexp.QuoteMeta(t[:n]))
			t = t[n:]
		}
	}
	b.WriteString("$")
	re := cachedRegexp(b.String())
	return re != nil && re.MatchString(path)
}
