// Package server serves warden's CA over gRPC, wire-compatible with Istio's
// istio.v1.auth.IstioCertificateService: callers authenticate with a bearer
// JWT or their current SVID, send a CSR, and get back the chain leaf first,
// and the whole trust bundle in the last element (as istiod answers).
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"

	"github.com/wardenmesh/warden/ca"
)

// Signer is the part of ca.Authority the server needs.
type Signer interface {
	Sign(ca.SignRequest) (*ca.Issued, error)
	Bundle() *x509bundle.Bundle
	TrustDomain() spiffeid.TrustDomain
}

var _ Signer = (*ca.Authority)(nil)

// Config wires a Server.
type Config struct {
	Signer         Signer
	Authenticators []Authenticator // tried in order
	// Authorizer decides which identity an authenticated caller's
	// certificate is for; nil is SelfOnly.
	Authorizer Authorizer
	Logger     *slog.Logger
	Observer   Observer // nil: none
}

// Outcome is how a certificate request ended.
type Outcome string

// Outcomes, as the metrics name them.
const (
	Issued           Outcome = "issued"
	Unauthenticated  Outcome = "unauthenticated"   // no or bad credentials
	AuthUnavailable  Outcome = "auth_unavailable"  // credentials could not be checked (the API server did not answer)
	InvalidCSR       Outcome = "invalid_csr"       // the CSR does not parse, or its key or signature is refused
	IdentityMismatch Outcome = "identity_mismatch" // the CSR names another identity
	InvalidTTL       Outcome = "invalid_ttl"       // the lifetime asked for is refused
	NotReady         Outcome = "unavailable"       // no CA material yet
	SignError        Outcome = "sign_error"        // anything else
)

// Observer hears of every CreateCertificate's outcome, and for an issued
// certificate how long signing took (metrics). It must not block.
type Observer interface {
	CertificateRequest(o Outcome, signing time.Duration)
}

// OutcomeOf classifies a Sign error.
func OutcomeOf(err error) Outcome {
	switch {
	case err == nil:
		return Issued
	case errors.Is(err, ca.ErrInvalidCSR):
		return InvalidCSR
	case errors.Is(err, ca.ErrIdentityMismatch):
		return IdentityMismatch
	case errors.Is(err, ca.ErrInvalidTTL):
		return InvalidTTL
	case errors.Is(err, ca.ErrNotReady):
		return NotReady
	}
	return SignError
}

// Server implements IstioCertificateService.
type Server struct {
	pb.UnimplementedIstioCertificateServiceServer
	cfg Config
	// bundlePEM is the trust bundle as every response carries it,
	// encoded once per bundle.
	bundlePEM atomic.Pointer[encodedBundle]
}

type encodedBundle struct {
	of  *x509bundle.Bundle
	pem string
}

// bundle is the trust bundle's PEM, encoded again only when it changed.
func (s *Server) bundle() string {
	b := s.cfg.Signer.Bundle()
	if e := s.bundlePEM.Load(); e != nil && e.of == b {
		return e.pem
	}
	e := &encodedBundle{of: b, pem: string(ca.EncodeCerts(b.X509Authorities()...))}
	s.bundlePEM.Store(e)
	return e.pem
}

// New checks cfg and returns a server.
func New(cfg Config) (*Server, error) {
	if cfg.Signer == nil {
		return nil, errors.New("server: Signer is required")
	}
	if len(cfg.Authenticators) == 0 {
		return nil, errors.New("server: at least one authenticator is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Authorizer == nil {
		cfg.Authorizer = SelfOnly{}
	}
	return &Server{cfg: cfg}, nil
}

// Register adds the service to a gRPC server.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	pb.RegisterIstioCertificateServiceServer(r, s)
}

// CreateCertificate authenticates the caller, checks the CSR against its
// identity and returns the signed chain.
func (s *Server) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	caller, err := Authenticate(ctx, s.cfg.Authenticators...)
	if errors.Is(err, ErrUnavailable) {
		s.observe(AuthUnavailable, 0)
		s.cfg.Logger.Warn("certificate request not answered: its credentials cannot be checked now", "reason", err.Error())
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	if err != nil {
		s.observe(Unauthenticated, 0)
		s.cfg.Logger.Info("certificate request refused", "reason", err.Error())
		return nil, status.Error(codes.Unauthenticated, "authentication failed: "+err.Error())
	}
	vd := req.GetValidityDuration()
	if vd < 0 || vd > math.MaxInt64/int64(time.Second) {
		s.observe(InvalidTTL, 0)
		return nil, status.Errorf(codes.InvalidArgument, "validity_duration %d out of range", vd)
	}
	id, err := s.cfg.Authorizer.Authorize(ctx, caller, &Request{CSR: []byte(req.GetCsr()), Metadata: req.GetMetadata()})
	if err != nil {
		s.observe(Unauthenticated, 0)
		s.cfg.Logger.Info("certificate request refused", "id", caller.ID.String(), "auth", caller.Method, "reason", err.Error())
		msg := err.Error()
		if r := (*Refusal)(nil); errors.As(err, &r) {
			msg = r.Public()
		}
		return nil, status.Error(codes.Unauthenticated, msg)
	}
	signStart := time.Now()
	iss, err := s.cfg.Signer.Sign(ca.SignRequest{
		CSR: []byte(req.GetCsr()),
		ID:  id,
		TTL: time.Duration(vd) * time.Second,
	})
	s.observe(OutcomeOf(err), time.Since(signStart))
	if err != nil && id != caller.ID {
		// The message's "caller" is the identity asked for.
		err = fmt.Errorf("certificate for %s (ImpersonatedIdentity): %w", id, err)
	}
	if err != nil {
		code := Code(err)
		s.cfg.Logger.Info("certificate request refused", "id", caller.ID.String(), "auth", caller.Method, "code", code.String(), "reason", err.Error())
		return nil, status.Error(code, err.Error())
	}
	if s.cfg.Logger.Enabled(ctx, slog.LevelDebug) {
		s.cfg.Logger.Debug("certificate issued", "id", id.String(), "caller", caller.ID.String(), "auth", caller.Method,
			"serial", fmt.Sprintf("%x", iss.Cert.SerialNumber), "notAfter", iss.Cert.NotAfter)
	}
	// Leaf and intermediates, then the whole trust bundle in one element,
	// as istiod answers: Istio's agent builds ROOTCA from the last
	// element, and with two roots (a rotation, a plugged-in bundle) it
	// must get both.
	chain := make([]string, 0, len(iss.Chain))
	for _, c := range iss.Chain[:len(iss.Chain)-1] {
		chain = append(chain, string(c))
	}
	chain = append(chain, s.bundle())
	return &pb.IstioCertificateResponse{CertChain: chain}, nil
}

func (s *Server) observe(o Outcome, d time.Duration) {
	if s.cfg.Observer != nil {
		s.cfg.Observer.CertificateRequest(o, d)
	}
}

// Code maps the CA core's errors to gRPC codes.
func Code(err error) codes.Code {
	switch {
	case errors.Is(err, ca.ErrInvalidCSR), errors.Is(err, ca.ErrInvalidTTL):
		return codes.InvalidArgument
	case errors.Is(err, ca.ErrIdentityMismatch):
		return codes.PermissionDenied
	case errors.Is(err, ca.ErrNotReady):
		return codes.Unavailable
	}
	return codes.Internal
}

// TLSConfig is the server-side TLS configuration for the CA port: the
// serving certificate comes from certs, and a client certificate is
// requested but not required, so workloads can renew with their SVID
// (checked by SVIDAuthenticator) or bootstrap with a token.
func TLSConfig(certs *ServingCert) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		ClientAuth:     tls.RequestClientCert,
		GetCertificate: certs.GetCertificate,
		Time:           certs.now,
	}
}

// Credentials wraps TLSConfig for grpc.NewServer.
func Credentials(certs *ServingCert) grpc.ServerOption {
	return grpc.Creds(credentials.NewTLS(TLSConfig(certs)))
}
