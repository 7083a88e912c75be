#!/usr/bin/env bash
# warden's demo on the embedded defaults, no cluster needed: start the
# control plane in standalone mode, mint a service-account token for
# default/sleep, get a certificate with it, show its SPIFFE ID, check it
# with openssl, renew it over mTLS, and watch the CA refuse a token that
# asks for somebody else's identity.
#
# Env: WARDEN (binary, default bin/warden), DEMO_DIR (default a temp dir),
# DEMO_CA_PORT (15012), DEMO_HTTP_PORT (15014).
set -euo pipefail
cd "$(dirname "$0")/.."

warden=${WARDEN:-bin/warden}
work=${DEMO_DIR:-$(mktemp -d)}
ca_addr=127.0.0.1:${DEMO_CA_PORT:-15012}
http_addr=127.0.0.1:${DEMO_HTTP_PORT:-15014}
data=$work/warden-data
mkdir -p "$work"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { echo "demo: FAILED: $*" >&2; exit 1; }

step "warden serve --data-dir $data --listen $ca_addr"
"$warden" serve --data-dir "$data" --listen "$ca_addr" --http-listen "$http_addr" >"$work/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/${ca_addr%:*}/${ca_addr#*:}") 2>/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$work/serve.log"; fail "warden serve exited"; }
  sleep 0.1
done
sed 's/^/  /' "$work/serve.log"

step "warden token --ns default --sa sleep"
"$warden" token --data-dir "$data" --ns default --sa sleep >"$work/sleep.token"
cut -c1-60 "$work/sleep.token" | sed 's/$/.../'

step "warden cert request --token-file sleep.token --out sleep/"
"$warden" cert request --ca "$ca_addr" --data-dir "$data" --token-file "$work/sleep.token" --out "$work/sleep"

step "warden cert inspect sleep/cert-chain.pem"
"$warden" cert inspect "$work/sleep/cert-chain.pem" | tee "$work/inspect.txt"
grep -q 'SPIFFE ID:   spiffe://cluster.local/ns/default/sa/sleep' "$work/inspect.txt" || fail "wrong SPIFFE ID"

step "openssl verify -CAfile sleep/root-cert.pem sleep/cert-chain.pem"
openssl verify -x509_strict -purpose sslclient -CAfile "$work/sleep/root-cert.pem" "$work/sleep/cert-chain.pem"

step "renew over mTLS with the current SVID (no token)"
"$warden" cert request --ca "$ca_addr" --data-dir "$data" --renew --out "$work/sleep"

step "the sleep token asks for flaskapp's identity: refused"
if "$warden" cert request --ca "$ca_addr" --data-dir "$data" --token-file "$work/sleep.token" \
    --spiffe-id spiffe://cluster.local/ns/default/sa/flaskapp --out "$work/stolen" 2>"$work/refused.txt"; then
  fail "the CA issued flaskapp's identity to sleep"
fi
cat "$work/refused.txt"
grep -q 'code = PermissionDenied' "$work/refused.txt" || fail "expected PermissionDenied"

step "done: files in $work"
