package authn

import (
	"encoding/json"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// Rendered is Output in the shape `warden policy compile` prints: the
// decision, then the Envoy messages in proto-JSON with Envoy's snake_case
// field names.
type Rendered struct {
	Workload         Workload          `json:"workload"`
	Mode             Mode              `json:"mode"`
	ModeSource       string            `json:"modeSource"`
	Ports            []PortSettings    `json:"ports,omitempty"`
	PrincipalBinding string            `json:"principalBinding"`
	Conflicts        []string          `json:"conflicts,omitempty"`
	ListenerFilters  []json.RawMessage `json:"listenerFilters,omitempty"`
	FilterChains     []json.RawMessage `json:"filterChains,omitempty"`
	JWTAuthn         json.RawMessage   `json:"jwtAuthn,omitempty"`
}

var marshal = protojson.MarshalOptions{UseProtoNames: true}

func raw(m proto.Message) (json.RawMessage, error) { return marshal.Marshal(m) }

// Render returns o as a Rendered value.
func (o *Output) Render() (*Rendered, error) {
	s := o.Settings
	r := &Rendered{Workload: s.Workload, Mode: s.Mode, ModeSource: s.ModeSource, Ports: s.Ports, PrincipalBinding: s.PrincipalBinding, Conflicts: s.Conflicts}
	for _, f := range o.ListenerFilters {
		b, err := raw(f)
		if err != nil {
			return nil, err
		}
		r.ListenerFilters = append(r.ListenerFilters, b)
	}
	for _, c := range o.FilterChains {
		b, err := raw(c)
		if err != nil {
			return nil, err
		}
		r.FilterChains = append(r.FilterChains, b)
	}
	if o.JWT != nil {
		b, err := raw(o.JWT)
		if err != nil {
			return nil, err
		}
		r.JWTAuthn = b
	}
	return r, nil
}

// YAML renders o as YAML (keys sorted, so output is stable).
func (o *Output) YAML() ([]byte, error) {
	r, err := o.Render()
	if err != nil {
		return nil, err
	}
	j, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	return yaml.JSONToYAML(j)
}

// JSON renders o as indented JSON.
func (o *Output) JSON() ([]byte, error) {
	r, err := o.Render()
	if err != nil {
		return nil, err
	}
	return json.MarshalIndent(r, "", "  ")
}
