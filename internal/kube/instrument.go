package kube

import (
	"net/http"
	"strconv"
	"strings"

	"k8s.io/client-go/rest"
)

// Instrument makes every request of the clients made from cfg reported
// to observe, once its answer's status is known: the verb as kubectl
// auth can-i names it (get, list, watch, create, update, patch, delete,
// deletecollection), the resource (with its subresource, e.g.
// serviceaccounts/token), and the HTTP status code ("error" when no
// answer came). Label values come from the resources warden uses: no
// namespace or object name.
func Instrument(cfg *rest.Config, observe func(verb, resource, code string)) {
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripper{next: rt, observe: observe}
	})
}

type roundTripper struct {
	next    http.RoundTripper
	observe func(verb, resource, code string)
}

func (r roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.next.RoundTrip(req)
	code := "error"
	if err == nil {
		code = strconv.Itoa(resp.StatusCode)
	}
	verb, resource := RequestKind(req.Method, req.URL.Path, req.URL.Query().Get("watch"))
	r.observe(verb, resource, code)
	return resp, err
}

// RequestKind is the verb and resource of an API request (method, URL
// path, and its watch parameter); "other" for a path that names no
// resource (discovery, /version).
func RequestKind(method, path, watch string) (verb, resource string) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	switch {
	case len(segs) >= 3 && segs[0] == "api":
		segs = segs[2:] // api/v1
	case len(segs) >= 4 && segs[0] == "apis":
		segs = segs[3:] // apis/<group>/<version>
	default:
		return strings.ToLower(method), "other"
	}
	if len(segs) >= 3 && segs[0] == "namespaces" {
		segs = segs[2:] // namespaces/<ns>/<resource>...
	}
	named := len(segs) >= 2
	resource = segs[0]
	if len(segs) >= 3 {
		resource += "/" + segs[2]
	}
	switch method {
	case http.MethodGet:
		switch {
		case watch == "true" || watch == "1":
			verb = "watch"
		case named:
			verb = "get"
		default:
			verb = "list"
		}
	case http.MethodPost:
		verb = "create"
	case http.MethodPut:
		verb = "update"
	case http.MethodPatch:
		verb = "patch"
	case http.MethodDelete:
		verb = "delete"
		if !named {
			verb = "deletecollection"
		}
	default:
		verb = strings.ToLower(method)
	}
	return verb, resource
}
