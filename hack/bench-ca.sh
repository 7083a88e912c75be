#!/usr/bin/env bash
# End-to-end CA load: starts 'warden serve' on a scratch data directory
# (in its own process, as in production) for each upstream, then runs
# 'warden bench ca' against them, alternating one run on each so that the
# machine's drift hits both alike, and prints every run and the medians.
# Compare certs/s with 'go test -bench CryptoBound ./ca'.
#
# Upstreams: "self-signed" (warden's own root) and "vault" (a real Vault,
# hack/vaultbin, set up with docs/vault.md's steps verbatim; AppRole auth).
# With Vault off the hot path both should sign at the same rate.
#
# METRICS="on off" serves each upstream twice, with Prometheus metrics kept
# (serve's default) and with --metrics=false, to measure what they cost.
# Each run also prints the server's CPU per certificate (from
# /proc/<pid>/stat), which the load generator sharing the cores disturbs
# less than certs/s.
#
# Env: WARDEN (default bin/warden), DURATION (10s), CONCURRENCY (16),
# KEY_TYPES (ecdsa-p256 rsa-2048), UPSTREAMS (self-signed), METRICS (on),
# RUNS (1), WARDEN_VAULT_BIN (default: built by hack/vault-binary.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
warden=${WARDEN:-bin/warden}
upstreams=${UPSTREAMS:-self-signed}
runs=${RUNS:-1}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() {
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "bench-ca: nothing listens on port $1" >&2; return 1
}

# start_vault <dir>: a test Vault set up as docs/vault.md says; sets
# vault_flags and root for warden.
start_vault() {
  local dir=$1 bin line
  bin=${WARDEN_VAULT_BIN:-$(hack/vault-binary.sh)}
  mkdir -p "$dir"
  "$bin" -listen 127.0.0.1:0 -data "$dir/vault" -tls > "$dir/vault.json" 2> "$dir/vault.log" &
  pids+=($!)
  for _ in $(seq 300); do line=$(head -n1 "$dir/vault.json" 2>/dev/null || true); [ -n "$line" ] && break; sleep 0.1; done
  [ -n "$line" ] || { echo "bench-ca: Vault did not start:" >&2; cat "$dir/vault.log" >&2; return 1; }
  (
    cd "$dir"
    export VAULT_ADDR=$(jq -r .addr <<<"$line") VAULT_TOKEN=$(jq -r .root_token <<<"$line") VAULT_CACERT=$(jq -r .ca_cert <<<"$line")
    bash -euo pipefail -c "$("$repo/hack/doc-steps.sh" "$repo/docs/vault.md" setup pki policy approle)"
  )
  vault_flags=(--ca-upstream vault --vault-addr "$(jq -r .addr <<<"$line")" --vault-cacert "$(jq -r .ca_cert <<<"$line")"
    --vault-auth approle --vault-approle-role-id "$(cat "$dir/warden-role-id")" --vault-approle-secret-id-file "$dir/warden-secret-id")
  root=$dir/vault-root.pem
}

# cpu_ticks <pid>: the process's user+system CPU in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }

for kt in ${KEY_TYPES:-ecdsa-p256 rsa-2048}; do
  work=$(mktemp -d)
  port=25112
  declare -A addr=() rootf=() rates=() cpus=() spid=() dir=()
  servers=()
  for up in $upstreams; do
    vault_flags=()
    root=$work/$up/data/root-cert.pem
    case $up in
      self-signed) ;;
      vault) start_vault "$work/$up" ;;
      *) echo "bench-ca: unknown upstream $up (want self-signed or vault)" >&2; exit 2 ;;
    esac
    for m in ${METRICS:-on}; do
      case $m in on) mflag=--metrics=true ;; off) mflag=--metrics=false ;; *) echo "bench-ca: METRICS takes on and off, not $m" >&2; exit 2 ;; esac
      s=$up
      [ "${METRICS:-on}" = on ] || s=$up/metrics-$m
      servers+=("$s")
      dir[$s]=$work/$up/data-$m
      # One data directory per server: a Vault-rooted one shares the
      # upstream, a self-signed one has its own root.
      [ "$up" = self-signed ] && root=${dir[$s]}/root-cert.pem
      addr[$s]=127.0.0.1:$port
      env -u VAULT_TOKEN "$warden" serve --data-dir "${dir[$s]}" --listen "${addr[$s]}" --http-listen "" \
        --ca-key-type "$kt" --log-level warn "$mflag" "${vault_flags[@]}" &
      pids+=($!)
      spid[$s]=$!
      wait_port "$port"
      rootf[$s]=$root
      port=$((port + 1))
    done
  done
  for i in $(seq "$runs"); do
    for s in "${servers[@]}"; do
      echo "== $kt, $s, run $i/$runs"
      t0=$(cpu_ticks "${spid[$s]}")
      out=$("$warden" bench ca --addr "${addr[$s]}" --data-dir "${dir[$s]}" --root-cert "${rootf[$s]}" \
        --key-type "$kt" --duration "${DURATION:-10s}" --concurrency "${CONCURRENCY:-16}")
      t1=$(cpu_ticks "${spid[$s]}")
      echo "$out"
      # The server's CPU over the whole run counts the warm-up too.
      n=$(sed -n 's/.*warm-up included: \([0-9]*\)).*/\1/p' <<<"$out")
      cpu=$(awk -v t="$((t1 - t0))" -v hz="$hz" -v n="$n" 'BEGIN {printf "%.0f", (n > 0 ? t / hz * 1e6 / n : 0)}')
      echo "server CPU: $cpu µs per certificate"
      rates[$s]+="$(awk '/^throughput:/ {print $2}' <<<"$out") "
      cpus[$s]+="$cpu "
    done
  done
  echo "== $kt: medians over $runs run(s)"
  for s in "${servers[@]}"; do
    printf '%-28s %8.0f certs/s  %6.0f server µs/cert  (certs/s: %s; µs: %s)\n' "$s" "$(median "${rates[$s]}")" "$(median "${cpus[$s]}")" "${rates[$s]% }" "${cpus[$s]% }"
  done
  cleanup; pids=()
  rm -rf "$work"
  unset addr rootf rates cpus spid dir
  echo
done
