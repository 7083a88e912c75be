package app_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/testkit"
)

// TestDataDirOwnedByAnotherUserRefused: 'warden serve' and 'warden token'
// refuse a data directory, or its token key, owned by a user other than
// the one they run as (the tests run as root, as CI does: chown needs
// it), naming the path, both uids and the chown that fixes it; owned
// back, it serves again.
func TestDataDirOwnedByAnotherUserRefused(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	_, stop := serve(t, data)
	if code := stop(); code != 0 {
		t.Fatalf("first serve exited %d", code)
	}
	me, other := os.Geteuid(), os.Geteuid()+1000
	chown := func(p string, uid int) {
		t.Helper()
		if err := os.Lchown(p, uid, -1); err != nil {
			t.Fatalf("chown %s to uid %d: %v (this test needs root, or CAP_CHOWN)", p, uid, err)
		}
	}
	// A serve that wrongly starts is stopped after a while (exit 0).
	refused := func(args ...string) (int, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var out, errs bytes.Buffer
		code := app.Run(ctx, args, &out, &errs)
		return code, errs.String()
	}
	serveArgs := []string{"serve", "--data-dir", data, "--listen", testkit.FreeAddr(t), "--http-listen", ""}

	chown(data, other)
	want := fmt.Sprintf("data directory %s is owned by uid %d, but warden runs as uid %d: its owner could replace what warden keeps there; chown -R %d %s", data, other, me, me, data)
	if code, stderr := refused(serveArgs...); code == 0 || !strings.Contains(stderr, want) {
		t.Errorf("serve, foreign data directory: exit %d\n%s\nwant %q", code, stderr, want)
	}
	if code, _, stderr := run(t, "token", "--data-dir", data, "--ns", "default", "--sa", "sleep"); code == 0 || !strings.Contains(stderr, want) {
		t.Errorf("token, foreign data directory: exit %d\n%s\nwant %q", code, stderr, want)
	}
	chown(data, me)

	key := filepath.Join(data, "token-key.pem")
	chown(key, other)
	want = fmt.Sprintf("%s is owned by uid %d, but warden runs as uid %d: its owner could replace what warden keeps there; chown %d %s", key, other, me, me, key)
	if code, stderr := refused(serveArgs...); code == 0 || !strings.Contains(stderr, want) {
		t.Errorf("serve, foreign token key: exit %d\n%s\nwant %q", code, stderr, want)
	}
	if code, _, stderr := run(t, "token", "--data-dir", data, "--ns", "default", "--sa", "sleep"); code == 0 || !strings.Contains(stderr, want) {
		t.Errorf("token, foreign token key: exit %d\n%s\nwant %q", code, stderr, want)
	}
	chown(key, me)

	if code, tok, stderr := run(t, "token", "--data-dir", data, "--ns", "default", "--sa", "sleep"); code != 0 || strings.TrimSpace(tok) == "" {
		t.Errorf("token, owned back: exit %d %s", code, stderr)
	}
	serve(t, data)
}
