package app

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/wardenmesh/warden/internal/kube/nodeauth"
)

// istiodEnv is how warden serve takes istiod's environment variables:
// each, when set, is the default of the flag it maps to (a flag given on
// the command line wins), so that a Deployment moved from istiod keeps
// its settings. docs/istio.md has the table; TestIstiodEnv sets each.
var istiodEnv = []struct {
	env, flag string
	// value is the flag's value for the variable's (istiod's syntax).
	value func(string) (string, error)
}{
	{"CITADEL_SELF_SIGNED_CA_CERT_TTL", "root-ttl", duration},
	{"DEFAULT_WORKLOAD_CERT_TTL", "default-ttl", duration},
	{"MAX_WORKLOAD_CERT_TTL", "max-ttl", duration},
	{"TOKEN_AUDIENCES", "token-audiences", same},
	// istiod: "zero or a negative value disables automated root cert
	// check and rotation"; a positive interval has no equivalent (warden
	// checks every second) and changes nothing.
	{"CITADEL_SELF_SIGNED_ROOT_CERT_CHECK_INTERVAL", "auto-rotate-root", func(v string) (string, error) {
		d, err := time.ParseDuration(v)
		switch {
		case err != nil:
			return "", err
		case d <= 0:
			return "0", nil
		}
		return "", nil
	}},
	{"CITADEL_SELF_SIGNED_ROOT_CERT_GRACE_PERIOD_PERCENTILE", "auto-rotate-root", percentile},
	{"CITADEL_SELF_SIGNED_CA_RSA_KEY_SIZE", "ca-key-type", func(v string) (string, error) {
		switch v {
		case "2048", "4096":
			return "rsa-" + v, nil
		}
		return "", errors.New("want 2048 or 4096")
	}},
	{"REVISION", "istiod-revision", same},
	{"CA_TRUSTED_NODE_ACCOUNTS", "trusted-node-accounts", func(v string) (string, error) {
		_, err := nodeauth.ParseAccounts(v)
		return v, err
	}},
	{"CLUSTER_ID", "cluster-id", same},
}

func same(v string) (string, error) { return v, nil }

func duration(v string) (string, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		return "", err
	}
	return d.String(), nil
}

// percentile is istiod's whole percent (20, or 20%) as a fraction.
func percentile(v string) (string, error) {
	n, err := strconv.Atoi(strings.TrimSuffix(v, "%"))
	if err != nil || n < 0 || n > 100 {
		return "", errors.New("want a whole percent from 0 to 100")
	}
	return strconv.FormatFloat(float64(n)/100, 'f', -1, 64), nil
}

// applyIstiodEnv sets, from istiod's variables in the environment, the
// flags of fs that set (the flags given) lacks; it returns the variables
// it applied. An invalid value is a usage error naming the variable.
func applyIstiodEnv(fs *flag.FlagSet, e *env, set map[string]bool) ([]string, error) {
	var applied []string
	for _, m := range istiodEnv {
		v := e.getenv(m.env)
		if v == "" || set[m.flag] {
			continue
		}
		fv, err := m.value(v)
		if err != nil {
			return nil, fmt.Errorf("%w: %s=%q (istiod's variable for --%s): %v", errUsage, m.env, v, m.flag, err)
		}
		if fv == "" {
			continue
		}
		if err := fs.Set(m.flag, fv); err != nil {
			return nil, fmt.Errorf("%w: %s=%q (istiod's variable for --%s): %v", errUsage, m.env, v, m.flag, err)
		}
		set[m.flag] = true
		applied = append(applied, m.env+"="+v+" (--"+m.flag+" "+fv+")")
	}
	return applied, nil
}

// logIstiodEnv says which of istiod's variables serve took.
func logIstiodEnv(log *slog.Logger, e *env, applied []string) {
	if len(applied) > 0 {
		log.Info("istiod's environment variables applied (flags given win)", "variables", strings.Join(applied, ", "))
	}
	if v := e.getenv("ISTIOD_CUSTOM_HOST"); v != "" {
		log.Info("istiod's ISTIOD_CUSTOM_HOST: serving under its names too", "names", v)
	}
}
