package ca

import "errors"

// Sentinel errors. The edges map them: ErrInvalidCSR and ErrInvalidTTL to
// InvalidArgument, ErrIdentityMismatch to PermissionDenied, ErrNotReady to
// Unavailable.
var (
	ErrInvalidCSR       = errors.New("invalid CSR")
	ErrInvalidTTL       = errors.New("invalid TTL")
	ErrIdentityMismatch = errors.New("identity mismatch")
	ErrNotReady         = errors.New("CA not ready")
	ErrNotFound         = errors.New("CA material not found")
	ErrExists           = errors.New("CA material already exists")
)
