package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
)

// Authorizer is the step between authenticating a caller and signing:
// which identity may this caller have a certificate for? Its answer is
// the identity signed (the CSR must name no other: ca.Authority.Sign
// checks it). Rules other than "the caller's own" go here: a trusted
// node proxy asking for the identities of its node's pods
// (impersonation), a pod-certificate request, a federated trust domain.
// An error refuses the request as Unauthenticated, as istiod answers a
// refused impersonation; it is logged with its reason.
type Authorizer interface {
	Authorize(ctx context.Context, caller *Caller, req *Request) (spiffeid.ID, error)
}

// Request is what a caller asked for.
type Request struct {
	CSR []byte
	// Metadata is the request's metadata Struct (Istio's agent and
	// ztunnel send ImpersonatedIdentity there).
	Metadata *structpb.Struct
}

// Impersonated is the identity the request asks for in its metadata
// (ImpersonatedIdentity), "" when it names none. As istiod reads it, a
// value that is not a string, or an empty one, names none.
func (r *Request) Impersonated() string {
	return r.Metadata.GetFields()[ImpersonatedIdentity].GetStringValue()
}

// ClusterIDHeader is the gRPC metadata key in which Istio's clients
// (the agent, ztunnel) name the cluster they run in (their CLUSTER_ID).
const ClusterIDHeader = "clusterid"

// ClusterID is the cluster the caller names in its clusterid header, ""
// when it sends none or more than one (as istiod's kubeauth reads it).
func ClusterID(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(ClusterIDHeader); len(v) == 1 {
		return v[0]
	}
	return ""
}

// Refusal is an Authorizer's refusal whose whole reason is for the log
// only: the caller is told ErrImpersonation and Reason, as istiod tells
// it nothing more than "request impersonation authentication failure"
// (where a node's pods run is not every caller's business). Reason is a
// short label from a fixed set (it also labels metrics); Detail names
// what failed and the fix.
type Refusal struct {
	Reason string
	Detail string
}

// Error is the whole reason, for the log.
func (r *Refusal) Error() string { return ErrImpersonation.Error() + ": " + r.Detail }

// Is makes a Refusal an ErrImpersonation.
func (r *Refusal) Is(target error) bool { return target == ErrImpersonation }

// Public is what the caller is told.
func (r *Refusal) Public() string { return ErrImpersonation.Error() + " (" + r.Reason + ")" }

// ImpersonatedIdentity is the metadata key with which a caller asks for
// another identity's certificate (Istio's
// security/pkg/server/ca.ImpersonatedIdentity).
const ImpersonatedIdentity = "ImpersonatedIdentity"

// ErrImpersonation refuses a request for another identity.
var ErrImpersonation = errors.New("request impersonation authentication failure")

// SelfOnly is warden's rule for every caller today: a certificate for the
// caller's own identity. A request asking for another one
// (ImpersonatedIdentity) is refused rather than answered with the
// caller's own, which a node proxy would then refuse for the wrong SAN.
type SelfOnly struct{}

var _ Authorizer = SelfOnly{}

// Authorize implements Authorizer.
func (SelfOnly) Authorize(_ context.Context, c *Caller, req *Request) (spiffeid.ID, error) {
	if v, ok := req.Metadata.GetFields()[ImpersonatedIdentity]; ok && v.GetStringValue() != c.ID.String() {
		return spiffeid.ID{}, fmt.Errorf("%w: %s asked for %q, and this CA issues a caller's own identity only: no node account is trusted to ask for another (ImpersonatedIdentity)", ErrImpersonation, c.ID, v.GetStringValue())
	}
	return c.ID, nil
}
