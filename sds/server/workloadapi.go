package server

import (
	"crypto/x509"
	"sync"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/wardenmesh/warden/sds"
)

// WorkloadAPI serves the SPIFFE Workload API's X.509 half
// (FetchX509SVID, FetchX509Bundles) for one workload identity, streaming a
// new message whenever the SVID rotates or the bundle changes.
type WorkloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	Current func() *sds.SVID           // the workload's SVID; nil before the first, and once it has expired
	Roots   func() []*x509.Certificate // the trust bundle
	// TrustDomain names the bundle FetchX509Bundles sends, which needs no
	// SVID (a workload whose SVID expired still gets the bundle).
	TrustDomain spiffeid.TrustDomain
	// Federated returns the foreign trust domains' bundles the workload
	// federates with, sent as federated_bundles (keyed spiffe://<td>, DER)
	// and among FetchX509Bundles' bundles; nil: none.
	Federated func() map[spiffeid.TrustDomain][]*x509.Certificate

	mu   sync.Mutex
	subs map[chan struct{}]struct{}
}

// Register adds the Workload API to r.
func (w *WorkloadAPI) Register(r grpc.ServiceRegistrar) {
	workload.RegisterSpiffeWorkloadAPIServer(r, w)
}

// Updated wakes every stream to send the current state.
func (w *WorkloadAPI) Updated() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for ch := range w.subs {
		select {
		case ch <- struct{}{}:
		default: // a wake-up is already pending
		}
	}
}

func (w *WorkloadAPI) subscribe() (chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	w.mu.Lock()
	if w.subs == nil {
		w.subs = map[chan struct{}]struct{}{}
	}
	w.subs[ch] = struct{}{}
	w.mu.Unlock()
	return ch, func() { w.mu.Lock(); delete(w.subs, ch); w.mu.Unlock() }
}

// checkHeader enforces the Workload API's security header, which stops a
// browser or SSRF from reaching the socket through a proxy.
func checkHeader(md metadata.MD) error {
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

func der(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}

// serve sends the current state with send at once and after every
// update, until the stream ends.
func (w *WorkloadAPI) serve(stream grpc.ServerStream, needSVID bool, send func(*sds.SVID) error) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	if err := checkHeader(md); err != nil {
		return err
	}
	wake, done := w.subscribe()
	defer done()
	for {
		if s := w.Current(); s != nil || !needSVID {
			if err := send(s); err != nil {
				return err
			}
		}
		select {
		case <-wake:
		case <-stream.Context().Done():
			return nil
		}
	}
}

// FetchX509SVID implements the Workload API.
func (w *WorkloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	return w.serve(stream, true, func(s *sds.SVID) error {
		key, err := x509.MarshalPKCS8PrivateKey(s.Key)
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		return stream.Send(&workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
			SpiffeId: s.ID.String(), X509Svid: der(s.Certs), X509SvidKey: key, Bundle: der(w.Roots()),
		}}, FederatedBundles: w.federated(s.ID.TrustDomain())})
	})
}

// FetchX509Bundles implements the Workload API.
func (w *WorkloadAPI) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	return w.serve(stream, w.TrustDomain.IsZero(), func(s *sds.SVID) error {
		td := w.TrustDomain
		if s != nil {
			td = s.ID.TrustDomain()
		}
		bundles := w.federated(td)
		if bundles == nil {
			bundles = map[string][]byte{}
		}
		bundles[td.IDString()] = der(w.Roots())
		return stream.Send(&workload.X509BundlesResponse{Bundles: bundles})
	})
}

// federated is the foreign bundles keyed spiffe://<td> (DER), never the
// workload's own trust domain; nil when there are none.
func (w *WorkloadAPI) federated(own spiffeid.TrustDomain) map[string][]byte {
	if w.Federated == nil {
		return nil
	}
	var out map[string][]byte
	for td, roots := range w.Federated() {
		if td == own || len(roots) == 0 {
			continue
		}
		if out == nil {
			out = map[string][]byte{}
		}
		out[td.IDString()] = der(roots)
	}
	return out
}
