#!/usr/bin/env bash
# infra/compose.yaml's topology with local processes instead of containers:
# one S3-compatible server (moto), a one-shot `eryx build` that publishes the
# base snapshot to the bucket, and two `eryx serve` replicas with data
# directories of their own, sharing only the bucket, the signing key and the
# token file. It then checks what the load balancer relies on: a function
# deployed through one replica is served by the other, and a session created on
# one replica continues on the other, alternately. Exits non-zero, with the
# replicas' logs, on the first check that fails.
#
# Usage: infra/scripts/local-topology.sh [path/to/eryx]   (default: target/debug/eryx)
# Needs: python3 with moto[server] (./setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/../.."
eryx=$(realpath "${1:-target/debug/eryx}")
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() {
    echo "local-topology: FAILED: $*" >&2
    for log in "$work"/*.log; do
        echo "--- $log (last 30 lines)" >&2
        tail -n 30 "$log" >&2 || true
    done
    exit 1
}
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_for() { # URL PATH SECONDS PID
    local deadline=$((SECONDS + $3))
    until "$eryx" probe --url "$1" --path "$2" 2>/dev/null; do
        kill -0 "$4" 2>/dev/null || fail "process $4 for $1 exited"
        ((SECONDS < deadline)) || fail "$1$2 did not answer within $3 s"
        sleep 0.5
    done
}

# The S3-compatible server and its bucket (compose: the `s3` service).
s3_port=$(free_port)
python3 -m moto.server -H 127.0.0.1 -p "$s3_port" >"$work/s3.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$s3_port" 2>/dev/null && break
    sleep 0.2
done
python3 - "$s3_port" <<'PY' || fail "could not create the bucket"
import sys, urllib.request
request = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/eryx", method="PUT")
urllib.request.urlopen(request, timeout=10)
PY

# Secrets (compose: files under secrets/; Kubernetes: the Secret).
python3 -c 'import secrets; print(secrets.token_hex(32))' >"$work/signing.key"
admin_token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
printf '# admin tokens, one per line\n%s\n' "$admin_token" >"$work/admin-tokens"
export AWS_ACCESS_KEY_ID=eryx-local AWS_SECRET_ACCESS_KEY=eryx-local AWS_REGION=us-east-1
export AWS_ENDPOINT_URL="http://127.0.0.1:$s3_port" AWS_ALLOW_HTTP=true
export ERYX_STORE=s3://eryx/gateway
export ERYX_SIGNING_KEY_FILE="$work/signing.key" ERYX_ADMIN_TOKENS_FILE="$work/admin-tokens"
export ERYX_LOG=info

# The one-shot base build (compose: the `base` service; Kubernetes: the Job).
echo "local-topology: publishing the base snapshot to s3://eryx/gateway"
"$eryx" build --data-dir "$work/build" >"$work/build.log" 2>&1 || fail "eryx build failed"

# Two replicas, each with its own data directory, as two containers would have.
urls=()
for replica in a b; do
    port=$(free_port)
    "$eryx" serve --data-dir "$work/data-$replica" --listen "127.0.0.1:$port" \
        >"$work/replica-$replica.log" 2>&1 &
    pids+=($!)
    urls+=("http://127.0.0.1:$port")
    wait_for "http://127.0.0.1:$port" /healthz 30 "$!"
done
for i in 0 1; do
    wait_for "${urls[$i]}" /readyz 300 "${pids[$((i + 1))]}"
done
a=${urls[0]}
b=${urls[1]}
for replica in a b; do
    grep -q '"origin":"Fetched"' "$work/replica-$replica.log" ||
        fail "replica $replica did not fetch the published base snapshot (it built its own)"
done
echo "local-topology: both replicas ready on the published base ($a, $b)"

# Without the token nothing but the probes answers.
if out=$("$eryx" session new --url "$a" 2>&1); then
    fail "replica a created a session without a token: $out"
fi
[[ "$out" == *401* ]] || fail "without a token replica a answered $out (expected 401)"
export ERYX_TOKEN="$admin_token"

# A function deployed through a serves on b.
"$eryx" deploy hello examples/functions/hello.py --url "$a" || fail "deploy on a"
out=$("$eryx" invoke hello '{"name": "replica"}' --url "$b") || fail "invoke on b"
grep -q 'replica' <<<"$out" || fail "invoke on b answered $out"
echo "local-topology: deployed on a, invoked on b: $out"

# A session created on a continues on b, then on a again.
session=$("$eryx" session new --url "$a") || fail "session new on a"
"$eryx" session exec "$session" 'counter = 40' --url "$a" >/dev/null || fail "exec on a"
"$eryx" session exec "$session" 'counter += 1' --url "$b" >/dev/null || fail "exec on b"
out=$("$eryx" session exec "$session" 'counter + 1' --url "$a") || fail "second exec on a"
[[ "$out" == *42* ]] || fail "session state after a, b, a: $out (expected 42)"
echo "local-topology: session $session went a -> b -> a: counter + 1 = $out"

# SIGTERM drains and exits 0, as Kubernetes' termination expects.
for i in 1 2; do
    kill -TERM "${pids[$i]}"
    wait "${pids[$i]}" || fail "replica $i exited $? on SIGTERM"
done
pids=("${pids[0]}")
echo "local-topology: both replicas stopped cleanly on SIGTERM; ok"
