package rbac

import (
	"encoding/json"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"
)

type renderedFilter struct {
	Name        string          `json:"name"`
	TypedConfig json.RawMessage `json:"typed_config"`
}

type rendered struct {
	Filters []renderedFilter `json:"filters"`
	Reports []string         `json:"reports,omitempty"`
}

func (o *Output) render() (*rendered, error) {
	r := &rendered{Filters: []renderedFilter{}, Reports: o.Reports}
	for _, f := range o.Filters {
		a, err := anypb.New(f.Config)
		if err != nil {
			return nil, err
		}
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(a)
		if err != nil {
			return nil, err
		}
		r.Filters = append(r.Filters, renderedFilter{Name: f.Name, TypedConfig: b})
	}
	return r, nil
}

// YAML renders the filters (name + typed config, Envoy's snake_case field
// names) and the reports; keys are sorted, so output is stable.
func (o *Output) YAML() ([]byte, error) {
	r, err := o.render()
	if err != nil {
		return nil, err
	}
	j, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	return yaml.JSONToYAML(j)
}

// JSON renders the same as indented JSON.
func (o *Output) JSON() ([]byte, error) {
	r, err := o.render()
	if err != nil {
		return nil, err
	}
	return json.MarshalIndent(r, "", "  ")
}
