package ca

import "errors"

// Sentinel errors. The edges map them: ErrInvalidCSR and ErrInvalidTTL to
// InvalidArgument, ErrIdentityMismatch to PermissionDenied, ErrNotReady to
// Unavailable. ErrUnsupportedKey is an ErrInvalidCSR too: a key type or
// size warden does not issue to (a pod-certificate signer must say so
// apart).
var (
	ErrInvalidCSR       = errors.New("invalid CSR")
	ErrInvalidTTL       = errors.New("invalid TTL")
	ErrIdentityMismatch = errors.New("identity mismatch")
	ErrNotReady         = errors.New("CA not ready")
	ErrUnsupportedKey   = errors.New("unsupported key type")
	ErrNotFound         = errors.New("CA material not found")
	ErrExists           = errors.New("CA material already exists")
)
