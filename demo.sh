#!/usr/bin/env bash
# The README's first command (after ./setup.sh): builds eryx, starts the gateway on its embedded
# defaults (127.0.0.1:8080, a local-filesystem store in ~/.local/share/eryx), deploys
# examples/functions/hello.py, invokes it, runs two executes in a stateful session, and keeps
# serving until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")"
cargo build -p eryx-cli
eryx=target/debug/eryx
listen=${ERYX_LISTEN:-127.0.0.1:8080}
url="http://$listen"
"$eryx" serve --listen "$listen" --log-format text &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
trap 'exit 0' INT TERM
echo "demo: waiting for $url/readyz (the first start builds the base snapshot: about a minute)"
until python3 -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$url/readyz" 2>/dev/null; do
    kill -0 "$server" 2>/dev/null || { echo "demo: the gateway exited" >&2; exit 1; }
    sleep 0.5
done
"$eryx" deploy hello examples/functions/hello.py --url "$url"
echo "demo: POST $url/v1/functions/hello/invoke {\"name\": \"newcomer\"}"
"$eryx" invoke hello '{"name": "newcomer"}' --url "$url"
session=$("$eryx" session new --url "$url")
echo "demo: session $session: each execute runs in a fresh instance with the session's state restored"
"$eryx" session exec "$session" "greeting = 'hello from a session'" --url "$url"
"$eryx" session exec "$session" "greeting.upper()" --url "$url"
echo "demo: the gateway is serving on $url (curl examples in README.md); Ctrl-C stops it"
wait "$server"
