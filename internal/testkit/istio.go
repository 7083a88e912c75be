package testkit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// The Istio oracle is hack/istioauthz: Istio's own authorization builder
// and (with -listeners) listener generator, at a pinned istio.io/istio,
// built and cached by hack/istioauthz.sh. The rbac and xds differential
// tests run it.

// IstioOracleEnv names the oracle binary; unset, IstioOracle has
// hack/istioauthz.sh build it (minutes, once; cached).
const IstioOracleEnv = "WARDEN_ISTIO_AUTHZ_BIN"

var oracle = Tool{Env: IstioOracleEnv, Script: "istioauthz.sh", What: "Istio oracle"}

// IstioOracle returns the oracle's path: $WARDEN_ISTIO_AUTHZ_BIN, or what
// hack/istioauthz.sh prints (building it on first use).
func IstioOracle(t testing.TB) string {
	t.Helper()
	return oracle.Path(t)
}

// AskIstio runs cases (one JSON line each) through one oracle process
// started with args, and returns its answer lines, one per case.
func AskIstio[C any](t testing.TB, args []string, cases []C) []json.RawMessage {
	t.Helper()
	cmd := exec.Command(IstioOracle(t), args...)
	var in bytes.Buffer
	enc := json.NewEncoder(&in)
	for _, c := range cases {
		if err := enc.Encode(c); err != nil {
			t.Fatal(err)
		}
	}
	cmd.Stdin = &in
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("istioauthz %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	var res []json.RawMessage
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		res = append(res, json.RawMessage(bytes.Clone(sc.Bytes())))
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("istioauthz output: %v", err)
	}
	if len(res) != len(cases) {
		t.Fatalf("istioauthz answered %d of %d cases\n%s", len(res), len(cases), stderr.String())
	}
	return res
}
