package server

import (
	"testing"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/internal/source"
	"github.com/wardenmesh/warden/xds"
)

// FlaskappExample is docs/examples/flaskapp as a source gives it (fresh
// objects each call) with its ServiceEntries as the registry.
func FlaskappExample(t testing.TB) ([]api.Object, []*xds.Service) {
	t.Helper()
	objs, _, err := source.Load("../../docs/examples/flaskapp")
	if err != nil {
		t.Fatal(err)
	}
	services, err := xds.ServicesFromEntries(objs, "")
	if err != nil {
		t.Fatal(err)
	}
	return objs, services
}
