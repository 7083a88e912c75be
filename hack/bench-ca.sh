#!/usr/bin/env bash
# End-to-end CA load: starts 'warden serve' on a scratch data directory
# (in its own process, as in production), then runs 'warden bench ca'
# against it for each key type. Compare certs/s with
# 'go test -bench CryptoBound ./ca'.
#
# Env: WARDEN (default bin/warden), DURATION (10s), CONCURRENCY (16), KEY_TYPES.
set -euo pipefail
cd "$(dirname "$0")/.."
warden=${WARDEN:-bin/warden}
for kt in ${KEY_TYPES:-ecdsa-p256 rsa-2048}; do
  work=$(mktemp -d)
  addr=127.0.0.1:25112
  "$warden" serve --data-dir "$work" --listen "$addr" --http-listen "" --ca-key-type "$kt" --log-level warn &
  server=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/25112") 2>/dev/null && break; sleep 0.1; done
  "$warden" bench ca --addr "$addr" --data-dir "$work" --key-type "$kt" \
    --duration "${DURATION:-10s}" --concurrency "${CONCURRENCY:-16}"
  kill "$server"; wait "$server" || true
  rm -rf "$work"
  echo
done
