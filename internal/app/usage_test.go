package app_test

import (
	"strings"
	"testing"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/app"
)

// TestHelpShowsSynopsis: every command's -h starts with its synopsis,
// the positional arguments it takes and the flags it cannot do without,
// and says what the arguments are (ca rotate's steps, proxy-config's
// output types, cert inspect's file) before the flags.
func TestHelpShowsSynopsis(t *testing.T) {
	t.Parallel()
	want := map[string][]string{
		"serve":          {"Usage: warden serve [flags]\n"},
		"agent":          {"Usage: warden agent [flags]\n"},
		"token":          {"Usage: warden token --namespace NS --sa SA [flags]\n"},
		"ca info":        {"Usage: warden ca info [--data-dir DIR | --plugged-in-dir DIR]\n"},
		"ca rotate":      {"Usage: warden ca rotate [flags] prepare|publish|activate|retire|abort\n       warden ca rotate --status [flags]\n", "\n  prepare   make a new root", "\n  publish   ", "\n  activate  ", "\n  retire    ", "\n  abort     "},
		"cert request":   {"Usage: warden cert request [flags] --token-file FILE --out DIR\n       warden cert request [flags] --renew --out DIR\n"},
		"cert inspect":   {"Usage: warden cert inspect FILE\n", "FILE is a PEM file of certificates"},
		"bench ca":       {"Usage: warden bench ca [flags]\n"},
		"bench sds":      {"Usage: warden bench sds [flags]\n"},
		"bench xds":      {"Usage: warden bench xds [flags]\n"},
		"policy compile": {"Usage: warden policy compile -f FILE|DIR [flags]\n"},
		"policy explain": {"Usage: warden policy explain -f FILE|DIR [flags]\n"},
		"policy migrate": {"Usage: warden policy migrate -f FILE|DIR [--service-labels FQDN=k=v,k2=v2]...\n"},
		"policy check":   {"Usage: warden policy check -f FILE|DIR [flags]\n"},
		"demo server":    {"Usage: warden demo server --node ID --certs DIR --listen ADDR [flags]\n"},
		"demo client":    {"Usage: warden demo client --node ID --certs DIR [flags]\n"},
		"proxy-config": {"Usage: warden proxy-config --node ID --config-dir DIR [flags] listeners|routes|clusters|endpoints|secrets|all\n       warden proxy-config --node ID --kubernetes [flags] listeners|routes|clusters|endpoints|secrets|all\n",
			"\n  listeners  ", "\n  routes     ", "\n  clusters   ", "\n  endpoints  ", "\n  secrets    ", "\n  all        "},
		"check":   {"Usage: warden check [flags]\n"},
		"version": {"Usage: warden version\n", "'warden --version'"},
	}
	for cmd, parts := range want {
		code, stdout, stderr := run(t, append(strings.Fields(cmd), "-h")...)
		if code != 0 || stdout != "" || !strings.HasPrefix(stderr, parts[0]) {
			t.Errorf("warden %s -h: exit %d, stdout %q; want 0 and usage starting %q:\n%s", cmd, code, stdout, parts[0], stderr)
			continue
		}
		flags := strings.Index(stderr, "\nFlags:\n")
		if cmd == "version" || cmd == "cert inspect" {
			if flags >= 0 {
				t.Errorf("warden %s -h lists flags it has not:\n%s", cmd, stderr)
			}
			flags = len(stderr)
		} else if flags < 0 {
			t.Errorf("warden %s -h: no Flags: section\n%s", cmd, stderr)
			continue
		}
		for _, p := range parts[1:] {
			if i := strings.Index(stderr, p); i < 0 || i > flags {
				t.Errorf("warden %s -h lacks %q before its flags:\n%s", cmd, p, stderr)
			}
		}
	}
	// Every command listed is here, and the list names them all.
	for _, cmd := range app.CommandNames() {
		if want[cmd] == nil {
			t.Errorf("warden %s: no synopsis checked here", cmd)
		}
	}
	_, _, list := run(t, "help")
	for cmd := range want {
		if !strings.Contains(list, "  warden "+cmd+" ") {
			t.Errorf("warden help does not list %s:\n%s", cmd, list)
		}
	}
}

// TestKeyTypeValuesListed: every key-type flag lists the same values,
// every type warden can generate (ca.KeyTypes).
func TestKeyTypeValuesListed(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ cmd, flag string }{
		{"cert request", "key-type"}, {"agent", "key-type"}, {"bench ca", "key-type"}, {"serve", "ca-key-type"},
	} {
		_, _, help := run(t, append(strings.Fields(c.cmd), "-h")...)
		_, after, ok := strings.Cut(help, "\n  -"+c.flag+" string\n")
		desc, _, _ := strings.Cut(after, "\n")
		if !ok {
			t.Errorf("warden %s -h has no --%s:\n%s", c.cmd, c.flag, help)
			continue
		}
		for _, kt := range ca.KeyTypes {
			if !strings.Contains(desc, string(kt)) {
				t.Errorf("warden %s --%s: %q does not list %s", c.cmd, c.flag, strings.TrimSpace(desc), kt)
			}
		}
	}
}
