// Package fedstore keeps the foreign trust domains' bundles (SPIFFE
// Federation) in the API server in Kubernetes mode: the leader, which
// alone polls the peers' bundle endpoints, writes each last good bundle
// there, and every replica reads them (federation.Bundles.Reload), so
// that all serve the same bundles and a restart without the peer still
// has them.
package fedstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/federation"
)

// ConfigMap holds, in the install's namespace, key <trust domain>.json
// (the bundle, SPIFFE bundle JSON) and <trust domain>.fetched (RFC 3339,
// the leader's last good fetch) per foreign trust domain. Bundles are
// public (roots only); who may write this ConfigMap may make warden trust
// a CA for that trust domain, as with the CA Secrets beside it.
const ConfigMap = "warden-federation-bundles"

// timeout bounds one API call (federation.Store has no context).
const timeout = 10 * time.Second

// Store is federation.Store on ConfigMap warden-federation-bundles.
type Store struct {
	Client    kubernetes.Interface
	Namespace string
	Clock     ca.Clock // the time Save records; default the system's
}

var (
	_ federation.Store   = (*Store)(nil)
	_ federation.Toucher = (*Store)(nil)
)

func bundleKey(td spiffeid.TrustDomain) string  { return td.Name() + ".json" }
func fetchedKey(td spiffeid.TrustDomain) string { return td.Name() + ".fetched" }

// Load implements federation.Store: td's bundle and its last good fetch;
// nil when the ConfigMap or its key does not exist.
func (s *Store) Load(td spiffeid.TrustDomain) (*spiffebundle.Bundle, time.Time, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cm, err := s.Client.CoreV1().ConfigMaps(s.Namespace).Get(ctx, ConfigMap, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, time.Time{}, nil
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("fedstore: ConfigMap %s/%s: %w", s.Namespace, ConfigMap, err)
	}
	doc, ok := cm.Data[bundleKey(td)]
	if !ok {
		return nil, time.Time{}, nil
	}
	where := fmt.Sprintf("ConfigMap %s/%s key %s", s.Namespace, ConfigMap, bundleKey(td))
	if err := federation.CheckDocument([]byte(doc)); err != nil {
		return nil, time.Time{}, fmt.Errorf("fedstore: %s: %w", where, err)
	}
	b, err := spiffebundle.Parse(td, []byte(doc))
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("fedstore: %s: %w", where, err)
	}
	if len(b.X509Authorities()) == 0 {
		return nil, time.Time{}, fmt.Errorf("fedstore: %s: the bundle holds no X.509 root", where)
	}
	var at time.Time
	if v := cm.Data[fetchedKey(td)]; v != "" {
		if at, err = time.Parse(time.RFC3339Nano, v); err != nil {
			return nil, time.Time{}, fmt.Errorf("fedstore: ConfigMap %s/%s key %s: %w", s.Namespace, ConfigMap, fetchedKey(td), err)
		}
	}
	return b, at, nil
}

// Save implements federation.Store: td's bundle, fetched now.
func (s *Store) Save(td spiffeid.TrustDomain, b *spiffebundle.Bundle) error {
	doc, err := b.Marshal()
	if err != nil {
		return fmt.Errorf("fedstore: %w", err)
	}
	return s.write(map[string]string{bundleKey(td): string(doc), fetchedKey(td): s.now().UTC().Format(time.RFC3339Nano)})
}

func (s *Store) now() time.Time {
	if s.Clock == nil {
		return ca.SystemClock{}.Now()
	}
	return s.Clock.Now()
}

// Touch implements federation.Toucher: a good fetch of an unchanged
// bundle at at.
func (s *Store) Touch(td spiffeid.TrustDomain, at time.Time) error {
	return s.write(map[string]string{fetchedKey(td): at.UTC().Format(time.RFC3339Nano)})
}

// write sets keys in the ConfigMap, creating it if need be, retrying on
// a conflict with another writer.
func (s *Store) write(keys map[string]string) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cms := s.Client.CoreV1().ConfigMaps(s.Namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cm, err := cms.Get(ctx, ConfigMap, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: ConfigMap, Namespace: s.Namespace,
				Labels: map[string]string{"app.kubernetes.io/managed-by": "warden"}}, Data: keys}
			_, err = cms.Create(ctx, cm, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				// Created meanwhile: a conflict, retried as an update.
				return apierrors.NewConflict(corev1.Resource("configmaps"), ConfigMap, errors.New("created concurrently"))
			}
			return err
		}
		if err != nil {
			return err
		}
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		for k, v := range keys {
			cm.Data[k] = v
		}
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("fedstore: ConfigMap %s/%s: %w", s.Namespace, ConfigMap, err)
	}
	return nil
}
