package server

import (
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/runtime/protoiface"
)

// marshaled is a resource with its deterministic wire encoding computed
// once. The snapshot cache encodes every resource of every response it
// sends, and proxies of a namespace share their outbound resources, so
// without this a push encodes the same route table once per proxy. The
// cache sees a message that encodes to exactly the bytes of the
// original (it copies them) and is named like it (types.ResourceWithName).
//
// Reflection goes to the original message; nothing may mutate either.
type marshaled struct {
	protoreflect.Message
	name string
	wire []byte
}

var (
	_ types.ResourceWithName = (*marshaled)(nil)
	_ proto.Message          = (*marshaled)(nil)
)

// marshal encodes r the way go-control-plane does (cachev3.MarshalResource).
func marshal(r types.Resource) (*marshaled, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
	if err != nil {
		return nil, err
	}
	return &marshaled{Message: r.ProtoReflect(), name: cachev3.GetResourceName(r), wire: b}, nil
}

func (m *marshaled) ProtoReflect() protoreflect.Message   { return m }
func (m *marshaled) Interface() protoreflect.ProtoMessage { return m }
func (m *marshaled) GetName() string                      { return m.name }
func (m *marshaled) ProtoMethods() *protoiface.Methods    { return &marshaledMethods }
func wireOf(in protoreflect.Message) []byte               { return in.(*marshaled).wire }

// marshaledMethods are the fast paths protobuf-go's proto.Marshal and
// proto.Size take instead of reflection.
var marshaledMethods = protoiface.Methods{
	Flags: protoiface.SupportMarshalDeterministic,
	Size: func(in protoiface.SizeInput) protoiface.SizeOutput {
		return protoiface.SizeOutput{Size: len(wireOf(in.Message))}
	},
	Marshal: func(in protoiface.MarshalInput) (protoiface.MarshalOutput, error) {
		return protoiface.MarshalOutput{Buf: append(in.Buf, wireOf(in.Message)...)}, nil
	},
	CheckInitialized: func(protoiface.CheckInitializedInput) (protoiface.CheckInitializedOutput, error) {
		return protoiface.CheckInitializedOutput{}, nil // it was, to be encoded
	},
}
