// Package webhook serves Istio's validating admission webhook in istiod's
// place, and keeps the ValidatingWebhookConfigurations that call it:
//
//   - Validator answers the API server's AdmissionReviews (v1) at
//     /validate and /validate/, Istio's paths, for the Istio kinds
//     warden reads, with warden's strict decoder: what warden would
//     refuse to serve is refused when it is applied, with the decoder's
//     message naming the field;
//   - Configurations (a bundle.Consumer the leader runs) points the
//     webhooks that call istiod at warden's Service when warden runs in
//     istiod's place, and keeps the caBundle of those that call warden
//     equal to the trust bundle, as istiod keeps its own.
package webhook

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
	"github.com/wardenmesh/warden/xds"
)

// Paths are where Istio's chart sends validation (clientConfig.service.path
// /validate; istiod serves /validate/ too).
var Paths = []string{"/validate", "/validate/"}

// maxBody is the largest AdmissionReview read, Istio's limit
// (pkg/kube.MaxRequestBodyBytes): the API server's own object limit is
// smaller.
const maxBody = 6 << 20

// IstioGroups are the API groups of Istio's validating webhook's rules
// (manifests/charts/base/templates/defaultrevision-validatingwebhookconfiguration.yaml).
var IstioGroups = []string{"security.istio.io", "networking.istio.io", "telemetry.istio.io", "extensions.istio.io"}

// Annotations Istio's validation refuses or checks on every kind
// (pkg/config/validation.validateMetadata; pkg/config/constants).
const (
	alwaysReject     = "internal.istio.io/webhook-always-reject"
	parentNamespace  = "internal.istio.io/parent-namespace"
	parentNames      = "internal.istio.io/parents"
	dryRunAnnotation = "istio.io/dry-run"
	invalidPrefix    = "configuration is invalid: "
	decodePrefix     = "cannot decode configuration: "
)

// Failure reasons, as Istio labels galley_validation_failed.
const (
	ReasonDecode        = "yaml_decode_error"
	ReasonUnknownType   = "unknown_type"
	ReasonInvalidConfig = "invalid_resource"
)

// Observer counts reviews (Istio's galley_validation_* metrics). Group,
// version and resource are the request's; reason is "" when the object
// passed.
type Observer interface {
	ValidationResult(group, version, resource, reason string)
	ValidationHTTPError(status int)
}

// Validator answers AdmissionReviews for Istio configuration.
type Validator struct {
	Log      *slog.Logger
	Observer Observer // nil: nothing counted
}

// Handler serves the validator at Paths.
func (v *Validator) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, p := range Paths {
		mux.HandleFunc(p, v.serve)
	}
	return mux
}

func (v *Validator) httpError(w http.ResponseWriter, msg string, status int) {
	if v.Observer != nil {
		v.Observer.ValidationHTTPError(status)
	}
	http.Error(w, msg, status)
}

func (v *Validator) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		v.httpError(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		v.httpError(w, "invalid Content-Type "+strconv.Quote(ct)+", want application/json", http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	switch {
	case err != nil:
		v.httpError(w, err.Error(), http.StatusBadRequest)
		return
	case len(body) > maxBody:
		v.httpError(w, fmt.Sprintf("AdmissionReview larger than %d bytes", maxBody), http.StatusRequestEntityTooLarge)
		return
	case len(body) == 0:
		v.httpError(w, "no body found", http.StatusBadRequest)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		v.httpError(w, "could not decode the AdmissionReview: "+err.Error(), http.StatusBadRequest)
		return
	}
	if review.APIVersion != admissionv1.SchemeGroupVersion.String() || review.Kind != "AdmissionReview" || review.Request == nil {
		v.httpError(w, fmt.Sprintf("want an admission.k8s.io/v1 AdmissionReview with a request, got %s %s (the webhook's admissionReviewVersions must include v1)", review.APIVersion, review.Kind), http.StatusBadRequest)
		return
	}
	resp := v.Review(review.Request)
	resp.UID = review.Request.UID
	out, err := json.Marshal(admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp})
	if err != nil {
		v.httpError(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
}

// Review decides one request as Istio's validation does for the kinds
// warden reads (pkg/webhooks/validation/server): CREATE and UPDATE are
// validated, dry runs too; any other operation is allowed. An object of
// a kind warden reads is decoded strictly (api.DecodeObject), checked
// with Istio's rules for the security kinds beyond its CRDs' schemas
// (istioRules) and, for the kinds whose errors would stop warden
// applying the whole mesh configuration, as warden's compilers check it;
// what warden would refuse to serve is refused here, with the same
// message. Istio's
// checks on every kind's metadata apply to every kind: top-level fields,
// the always-reject and internal annotations, istio.io/dry-run. An Istio
// kind warden does not read is allowed with a warning that warden
// ignores it; a kind of no Istio group is refused, as Istio refuses a
// type it does not know.
func (v *Validator) Review(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	warnings, reason, err := review(req)
	if v.Observer != nil && !(req.DryRun != nil && *req.DryRun && reason != "") {
		g, ver, res := metricLabels(req.Resource)
		v.Observer.ValidationResult(g, ver, res, reason)
	}
	if err != nil {
		if v.Log != nil {
			v.Log.Info("refused configuration", "kind", req.Kind.Kind, "namespace", req.Namespace, "name", req.Name, "operation", string(req.Operation), "error", err.Error())
		}
		// No code, as Istio answers: the API server then refuses the
		// request 403 Forbidden, "admission webhook ... denied the request".
		return &admissionv1.AdmissionResponse{Result: &metav1.Status{Message: err.Error()}}
	}
	return &admissionv1.AdmissionResponse{Allowed: true, Warnings: warnings}
}

func review(req *admissionv1.AdmissionRequest) (warnings []string, reason string, err error) {
	switch req.Operation {
	case admissionv1.Create, admissionv1.Update:
	default:
		return nil, "", nil // Istio allows every other operation
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(req.Object.Raw, &top); err != nil || top == nil {
		if err == nil {
			err = errors.New("no object")
		}
		return nil, ReasonDecode, errors.New(decodePrefix + err.Error())
	}
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name        string            `json:"name"`
			Namespace   string            `json:"namespace"`
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
		Spec struct {
			Action string `json:"action"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(req.Object.Raw, &head); err != nil {
		return nil, ReasonDecode, errors.New(decodePrefix + err.Error())
	}
	group, _, _ := strings.Cut(head.APIVersion, "/")
	if !strings.Contains(head.APIVersion, "/") {
		group = ""
	}
	kind := findKind(group, head.Kind)
	if kind == nil && !slices.Contains(IstioGroups, group) {
		return nil, ReasonUnknownType, fmt.Errorf("unrecognized type %s %s: warden validates Istio configuration only (the webhook's rules must name Istio's API groups)", head.APIVersion, head.Kind)
	}
	// Istio's checks of every kind (validateMetadata, checkFields).
	md := head.Metadata
	if _, ok := md.Annotations[alwaysReject]; ok {
		return nil, ReasonInvalidConfig, fmt.Errorf("%s%q annotation found, rejecting", invalidPrefix, alwaysReject)
	}
	for _, a := range []string{parentNamespace, parentNames} {
		if _, ok := md.Annotations[a]; ok {
			return nil, ReasonInvalidConfig, fmt.Errorf("%s%q annotation found, this may not be set by users", invalidPrefix, a)
		}
	}
	if val, ok := md.Annotations[dryRunAnnotation]; ok {
		if head.Kind != "AuthorizationPolicy" {
			return nil, ReasonInvalidConfig, fmt.Errorf("%s%s/%s has unsupported annotation %s, please remove the annotation", invalidPrefix, md.Namespace, md.Name, dryRunAnnotation)
		}
		switch action := head.Spec.Action; action {
		case "", "ALLOW", "DENY":
			if _, err := strconv.ParseBool(val); err != nil {
				return nil, ReasonInvalidConfig, fmt.Errorf("%s%s/%s has annotation %s with invalid value (%s): %v", invalidPrefix, md.Namespace, md.Name, dryRunAnnotation, val, err)
			}
		default:
			return nil, ReasonInvalidConfig, fmt.Errorf("%sthe annotation %s currently only supports action ALLOW/DENY, found action %s in %s/%s", invalidPrefix, dryRunAnnotation, action, md.Namespace, md.Name)
		}
	}
	for key := range top {
		switch key {
		case "apiVersion", "kind", "metadata", "spec", "status":
		default:
			return nil, ReasonInvalidConfig, fmt.Errorf("unknown field %q on %s resource %s/%s", key, head.Kind, md.Namespace, md.Name)
		}
	}
	if kind == nil {
		return []string{fmt.Sprintf("warden does not read %s (%s): it is stored as written, neither validated nor served", head.Kind, head.APIVersion)}, "", nil
	}
	raw := req.Object.Raw
	if !slices.ContainsFunc(kind.Versions, func(v string) bool { return head.APIVersion == kind.Group+"/"+v }) {
		// Istio looks schemas up by group and kind, not version: every
		// version of a kind has one schema, so a version warden does not
		// know yet is read as the one it stores.
		top["apiVersion"], _ = json.Marshal(kind.Group + "/" + kind.Storage)
		raw, _ = json.Marshal(top)
	}
	obj, err := api.DecodeObject(raw)
	if err == nil {
		err = istioRules(obj)
	}
	if err == nil {
		err = compiles(obj)
	}
	if err != nil {
		return nil, ReasonInvalidConfig, errors.New(invalidPrefix + trimPackage(err.Error()))
	}
	return nil, "", nil
}

// compiles runs the checks the compilers make on the object alone whose
// failure would keep warden from applying the mesh configuration at all
// (xds.NewMesh fails on them): a RequestAuthentication's jwksUri and
// issuer, a legacy MeshPolicy's name; a ServiceEntry's hosts.
func compiles(obj api.Object) error {
	switch obj.(type) {
	case *api.RequestAuthentication, *api.MeshPolicy, *api.Policy:
		_, err := authn.NewIndex([]api.Object{obj}, authn.Options{})
		return err
	case *api.ServiceEntry:
		_, err := xds.ServicesFromEntries([]api.Object{obj}, "")
		return err
	}
	return nil
}

// trimPackage drops the Go package prefix ("api: ") of warden's errors:
// the message is read by people applying configuration.
func trimPackage(msg string) string {
	for _, p := range []string{"api: ", "authn: ", "xds: "} {
		if rest, ok := strings.CutPrefix(msg, p); ok {
			return rest
		}
	}
	return msg
}

// findKind is the kind warden reads with this group and kind, whatever
// the version.
func findKind(group, kind string) *api.Kind {
	for i := range api.Kinds {
		if k := &api.Kinds[i]; k.Group == group && k.Kind == kind {
			return k
		}
	}
	return nil
}

// metricLabels bounds the metrics' labels to the groups, versions and
// resources warden knows ("other" otherwise): anyone who reaches the port
// writes the request.
func metricLabels(r metav1.GroupVersionResource) (group, version, resource string) {
	group, version, resource = "other", "other", "other"
	if slices.Contains(IstioGroups, r.Group) {
		group = r.Group
	}
	for _, k := range api.Kinds {
		if k.Group == r.Group {
			group = r.Group
			if slices.Contains(k.Versions, r.Version) {
				version = r.Version
			}
			if k.Plural == r.Resource {
				resource = r.Resource
			}
		}
	}
	return group, version, resource
}
