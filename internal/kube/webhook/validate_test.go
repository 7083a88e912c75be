package webhook_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/wardenmesh/warden/internal/kube/webhook"
)

func request(op admissionv1.Operation, group, version, resource, obj string) *admissionv1.AdmissionRequest {
	return &admissionv1.AdmissionRequest{
		UID:       types.UID("uid-1"),
		Operation: op,
		Resource:  metav1.GroupVersionResource{Group: group, Version: version, Resource: resource},
		Object:    runtime.RawExtension{Raw: []byte(obj)},
	}
}

const pa = `{"apiVersion":"security.istio.io/v1","kind":"PeerAuthentication","metadata":{"name":"p","namespace":"shop"%s},"spec":%s}`

func paObj(meta, spec string) string {
	return strings.Replace(strings.Replace(pa, "%s", meta, 1), "%s", spec, 1)
}

// TestReview: what Istio's validation does for the kinds warden reads,
// with warden's decoder's messages; Istio's checks on every kind's
// metadata; the kinds warden does not read allowed with a warning.
func TestReview(t *testing.T) {
	t.Parallel()
	ap := `{"apiVersion":"security.istio.io/v1beta1","kind":"AuthorizationPolicy","metadata":{"name":"a","namespace":"shop"%s},"spec":{"action":"%s"}}`
	apObj := func(meta, action string) string {
		return strings.Replace(strings.Replace(ap, "%s", meta, 1), "%s", action, 1)
	}
	for _, c := range []struct {
		name     string
		req      *admissionv1.AdmissionRequest
		want     string // "" allowed
		warnings string
	}{
		{"valid", request(admissionv1.Create, "security.istio.io", "v1", "peerauthentications", paObj("", `{"mtls":{"mode":"STRICT"}}`)), "", ""},
		{"bad enum", request(admissionv1.Create, "security.istio.io", "v1", "peerauthentications", paObj("", `{"mtls":{"mode":"STRCT"}}`)),
			`configuration is invalid: PeerAuthentication shop/p: spec.mtls.mode: "STRCT" is not one of UNSET, DISABLE, PERMISSIVE, STRICT`, ""},
		{"unknown field on update", request(admissionv1.Update, "security.istio.io", "v1", "peerauthentications", paObj("", `{"mtls":{"mod":"STRICT"}}`)),
			"configuration is invalid: PeerAuthentication shop/p: spec.mtls.mod: unknown field", ""},
		{"dry run is validated", func() *admissionv1.AdmissionRequest {
			r := request(admissionv1.Create, "security.istio.io", "v1", "peerauthentications", paObj("", `{"portLevelMtls":{"0":{"mode":"STRICT"}}}`))
			dry := true
			r.DryRun = &dry
			return r
		}(), `configuration is invalid: PeerAuthentication shop/p: spec.portLevelMtls["0"]: key is not a port number (1-65535)`, ""},
		{"delete is allowed", request(admissionv1.Delete, "security.istio.io", "v1", "peerauthentications", paObj("", `{"mtls":{"mode":"STRCT"}}`)), "", ""},
		{"version warden does not know", request(admissionv1.Create, "security.istio.io", "v2", "peerauthentications",
			strings.Replace(paObj("", `{"mtls":{"mode":"STRCT"}}`), "security.istio.io/v1", "security.istio.io/v2", 1)),
			`configuration is invalid: PeerAuthentication shop/p: spec.mtls.mode: "STRCT" is not one of UNSET, DISABLE, PERMISSIVE, STRICT`, ""},
		{"always-reject", request(admissionv1.Create, "security.istio.io", "v1", "peerauthentications", paObj(`,"annotations":{"internal.istio.io/webhook-always-reject":"true"}`, `{}`)),
			`configuration is invalid: "internal.istio.io/webhook-always-reject" annotation found, rejecting`, ""},
		{"internal parents", request(admissionv1.Create, "networking.istio.io", "v1", "envoyfilters",
			`{"apiVersion":"networking.istio.io/v1alpha3","kind":"EnvoyFilter","metadata":{"name":"e","namespace":"shop","annotations":{"internal.istio.io/parents":"x"}},"spec":{}}`),
			`configuration is invalid: "internal.istio.io/parents" annotation found, this may not be set by users`, ""},
		{"dry-run annotation on another kind", request(admissionv1.Create, "security.istio.io", "v1", "peerauthentications", paObj(`,"annotations":{"istio.io/dry-run":"true"}`, `{}`)),
			"configuration is invalid: shop/p has unsupported annotation istio.io/dry-run, please remove the annotation", ""},
		{"dry-run annotation not a bool", request(admissionv1.Create, "security.istio.io", "v1beta1", "authorizationpolicies", apObj(`,"annotations":{"istio.io/dry-run":"yes"}`, "DENY")),
			`configuration is invalid: shop/a has annotation istio.io/dry-run with invalid value (yes): strconv.ParseBool: parsing "yes": invalid syntax`, ""},
		{"dry-run annotation on AUDIT", request(admissionv1.Create, "security.istio.io", "v1beta1", "authorizationpolicies", apObj(`,"annotations":{"istio.io/dry-run":"true"}`, "AUDIT")),
			"configuration is invalid: the annotation istio.io/dry-run currently only supports action ALLOW/DENY, found action AUDIT in shop/a", ""},
		{"dry-run annotation on ALLOW", request(admissionv1.Create, "security.istio.io", "v1beta1", "authorizationpolicies", apObj(`,"annotations":{"istio.io/dry-run":"1"}`, "ALLOW")), "", ""},
		{"top-level field", request(admissionv1.Create, "security.istio.io", "v1", "peerauthentications",
			`{"apiVersion":"security.istio.io/v1","kind":"PeerAuthentication","metadata":{"name":"p","namespace":"shop"},"spec":{},"extra":{}}`),
			`unknown field "extra" on PeerAuthentication resource shop/p`, ""},
		{"a rule without issuer stops warden's configuration", request(admissionv1.Create, "security.istio.io", "v1", "requestauthentications",
			`{"apiVersion":"security.istio.io/v1","kind":"RequestAuthentication","metadata":{"name":"r","namespace":"shop"},"spec":{"jwtRules":[{"jwksUri":"https://keys.example.com/jwks"}]}}`),
			"configuration is invalid: RequestAuthentication shop/r: spec.jwtRules[0].issuer is required", ""},
		{"a jwksUri of another scheme", request(admissionv1.Create, "security.istio.io", "v1", "requestauthentications",
			`{"apiVersion":"security.istio.io/v1","kind":"RequestAuthentication","metadata":{"name":"r","namespace":"shop"},"spec":{"jwtRules":[{"issuer":"i","jwksUri":"ftp://keys.example.com/jwks"}]}}`),
			`configuration is invalid: RequestAuthentication shop/r: spec.jwtRules[0].jwksUri: "ftp://keys.example.com/jwks": want an https URL`, ""},
		{"Istio's rule beyond its CRD", request(admissionv1.Create, "security.istio.io", "v1beta1", "authorizationpolicies",
			`{"apiVersion":"security.istio.io/v1beta1","kind":"AuthorizationPolicy","metadata":{"name":"a","namespace":"shop"},"spec":{"rules":[{"from":[{"source":{"ipBlocks":["10.0.0.0/8","not-an-ip"]}}]}]}}`),
			"configuration is invalid: AuthorizationPolicy shop/a: rule 0: bad IP address (not-an-ip)", ""},
		{"kind warden does not read", request(admissionv1.Create, "telemetry.istio.io", "v1", "telemetries",
			`{"apiVersion":"telemetry.istio.io/v1","kind":"Telemetry","metadata":{"name":"t","namespace":"shop"},"spec":{"anything":1}}`),
			"", "warden does not read Telemetry (telemetry.istio.io/v1): it is stored as written, neither validated nor served"},
		{"not an Istio kind", request(admissionv1.Create, "", "v1", "configmaps",
			`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","namespace":"shop"}}`),
			"unrecognized type v1 ConfigMap: warden validates Istio configuration only (the webhook's rules must name Istio's API groups)", ""},
		{"not JSON", request(admissionv1.Create, "security.istio.io", "v1", "peerauthentications", `{`),
			"cannot decode configuration: unexpected end of JSON input", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			obs := &observer{}
			resp := (&webhook.Validator{Observer: obs}).Review(c.req)
			if c.want == "" {
				if !resp.Allowed {
					t.Fatalf("refused: %s", resp.Result.Message)
				}
				if got := strings.Join(resp.Warnings, "\n"); got != c.warnings {
					t.Errorf("warnings %q, want %q", got, c.warnings)
				}
				return
			}
			if resp.Allowed || resp.Result == nil || !strings.HasPrefix(resp.Result.Message, c.want) {
				t.Fatalf("allowed %v, result %+v; want refused with %q", resp.Allowed, resp.Result, c.want)
			}
			if resp.Result.Code != 0 {
				t.Errorf("code %d: Istio answers none (the API server says 403 Forbidden)", resp.Result.Code)
			}
		})
	}
}

type observer struct {
	mu     sync.Mutex
	counts []string
}

func (o *observer) ValidationResult(group, version, resource, reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.counts = append(o.counts, strings.Join([]string{group, version, resource, reason}, "/"))
}

func (o *observer) ValidationHTTPError(status int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.counts = append(o.counts, http.StatusText(status))
}

func (o *observer) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return strings.Join(o.counts, ",")
}

// TestValidatorHTTP: the AdmissionReview over HTTP at Istio's paths, the
// response's uid the request's, and bad requests answered with a status
// (not a crash), each counted. The label values are bounded to what
// warden knows.
func TestValidatorHTTP(t *testing.T) {
	t.Parallel()
	obs := &observer{}
	srv := httptest.NewServer((&webhook.Validator{Observer: obs}).Handler())
	t.Cleanup(srv.Close)
	post := func(path, ct string, body []byte) (*http.Response, []byte) {
		t.Helper()
		resp, err := http.Post(srv.URL+path, ct, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	review := func(req *admissionv1.AdmissionRequest) []byte {
		b, _ := json.Marshal(admissionv1.AdmissionReview{TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"}, Request: req})
		return b
	}
	for _, path := range webhook.Paths {
		resp, body := post(path, "application/json", review(request(admissionv1.Create, "security.istio.io", "v1", "peerauthentications", paObj("", `{"mtls":{"mode":"STRCT"}}`))))
		var got admissionv1.AdmissionReview
		if err := json.Unmarshal(body, &got); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %s %s (%v)", path, resp.Status, body, err)
		}
		if got.APIVersion != "admission.k8s.io/v1" || got.Kind != "AdmissionReview" || got.Response == nil || got.Response.UID != "uid-1" || got.Response.Allowed {
			t.Fatalf("%s: %s", path, body)
		}
	}
	resp, _ := post("/validate", "application/json", review(request(admissionv1.Create, "evil.example.com", "v9", "things", `{"apiVersion":"evil.example.com/v9","kind":"Thing","metadata":{"name":"x"}}`)))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("unknown type: %s", resp.Status)
	}
	for _, c := range []struct {
		ct   string
		body []byte
		want int
	}{
		{"text/plain", review(request(admissionv1.Create, "", "", "", "{}")), http.StatusUnsupportedMediaType},
		{"application/json", nil, http.StatusBadRequest},
		{"application/json", []byte(`{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}`), http.StatusBadRequest},
		{"application/json", []byte(`[`), http.StatusBadRequest},
		{"application/json", bytes.Repeat([]byte(" "), 6<<20+1), http.StatusRequestEntityTooLarge},
	} {
		if resp, body := post("/validate", c.ct, c.body); resp.StatusCode != c.want {
			t.Errorf("%s %.40q: %s %s, want %d", c.ct, c.body, resp.Status, body, c.want)
		}
	}
	want := "security.istio.io/v1/peerauthentications/invalid_resource,security.istio.io/v1/peerauthentications/invalid_resource,other/other/other/unknown_type," +
		"Unsupported Media Type,Bad Request,Bad Request,Bad Request,Request Entity Too Large"
	if got := obs.String(); got != want {
		t.Errorf("observed\n%s\nwant\n%s", got, want)
	}
}
