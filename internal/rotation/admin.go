package rotation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/unixsock"
)

// admin is what the admin socket serves: a rotation's status and its
// steps (a Rotator), or the status alone where the root rotates
// elsewhere (an Upstream, which refuses the steps).
type admin interface {
	Status() Status
	Request(to ca.Phase, force bool) error
	Abort() error
	// advanceNow takes at once the steps a request allows.
	advanceNow(ctx context.Context) error
}

var (
	_ admin = (*Rotator)(nil)
	_ admin = (*Upstream)(nil)
)

func (r *Rotator) advanceNow(ctx context.Context) error { return r.step(ctx) }

// adminHandler is the rotation API on the admin socket.
func adminHandler(r admin) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /rotation", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(r.Status())
	})
	mux.HandleFunc("POST /rotation", func(w http.ResponseWriter, req *http.Request) {
		to, err := ca.ParsePhase(req.URL.Query().Get("to"))
		if err == nil {
			err = r.Request(to, req.URL.Query().Get("force") == "true")
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		_ = r.advanceNow(req.Context()) // a failure is in the status
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(r.Status())
	})
	mux.HandleFunc("POST /rotation/abort", func(w http.ResponseWriter, _ *http.Request) {
		if err := r.Abort(); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(r.Status())
	})
	return mux
}

// ListenAdmin opens the admin socket in dataDir (0600). serve opens it
// with its other listeners, before it reports serving, so that 'ca
// rotate' finds a serve that answers on its port; ServeAdmin serves it.
func ListenAdmin(dataDir string) (net.Listener, error) {
	l, err := unixsock.Listen(filepath.Join(dataDir, AdminSocket), 0o600)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	return l, nil
}

// ServeAdmin serves the admin socket l (ListenAdmin) until ctx is done.
func (r *Rotator) ServeAdmin(ctx context.Context, l net.Listener) error {
	return serveAdmin(ctx, l, r)
}

func serveAdmin(ctx context.Context, l net.Listener, r admin) error {
	srv := &http.Server{Handler: adminHandler(r), ReadHeaderTimeout: 10 * time.Second}
	removed := make(chan struct{})
	go func() {
		<-ctx.Done()
		_ = srv.Close() // closes l, which removes its socket (only its own)
		close(removed)
	}()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	// The socket is gone before we return: a serve started next on this
	// data directory must not lose its new socket to our removal.
	<-removed
	return nil
}

// AdminClient talks to a running serve's admin socket.
func AdminClient(dataDir string) *http.Client {
	path := filepath.Join(dataDir, AdminSocket)
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}
