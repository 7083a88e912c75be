package ca

import (
	"context"
	"errors"
	"fmt"
)

// KeyStore persists CA material in the cacerts layout. Implementations
// never overwrite: Create on a store that already holds material returns
// ErrExists, so racing replicas converge on whichever root was written first.
type KeyStore interface {
	// Load returns the stored files, or ErrNotFound when the store is empty.
	// A partial or unreadable store is another error, never ErrNotFound.
	Load(ctx context.Context) (Files, error)
	// Create stores f if the store is empty, else returns ErrExists.
	Create(ctx context.Context, f Files) error
}

// LoadOrCreate returns the material in store, generating it with create
// (and storing it) when the store is empty. When another writer wins the
// race to create, the winner's material is re-read and returned.
func LoadOrCreate(ctx context.Context, store KeyStore, clock Clock, create func() (*Material, error)) (m *Material, created bool, err error) {
	if clock == nil {
		clock = SystemClock{}
	}
	f, err := store.Load(ctx)
	if err == nil {
		m, err := DecodeMaterial(f, clock.Now())
		return m, false, err
	}
	if !errors.Is(err, ErrNotFound) {
		return nil, false, err
	}
	m, err = create()
	if err != nil {
		return nil, false, err
	}
	nf, err := m.Encode()
	if err != nil {
		return nil, false, err
	}
	switch err := store.Create(ctx, nf); {
	case err == nil:
		return m, true, nil
	case errors.Is(err, ErrExists):
		f, err := store.Load(ctx)
		if err != nil {
			return nil, false, fmt.Errorf("ca: re-read after losing the create race: %w", err)
		}
		m, err := DecodeMaterial(f, clock.Now())
		return m, false, err
	default:
		return nil, false, err
	}
}
