#!/usr/bin/env bash
# Writes the secrets infra/compose.yaml and infra/kubernetes read, unless they
# exist: an admin token, an invoke-only token (one per line; add lines to
# rotate) and the 256-bit key that signs the store's manifests and records,
# which every replica of one store must share. Both directories are git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
for dir in secrets kubernetes/secrets; do
    mkdir -p "$dir"
    [[ -e "$dir/admin-tokens" ]] || python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$dir/admin-tokens"
    [[ -e "$dir/invoke-tokens" ]] || python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$dir/invoke-tokens"
    [[ -e "$dir/signing-key" ]] || python3 -c 'import secrets; print(secrets.token_hex(32))' >"$dir/signing-key"
    # The gateway runs as uid 65532: compose bind-mounts these files as they are.
    chmod 0644 "$dir"/admin-tokens "$dir"/invoke-tokens "$dir"/signing-key
done
echo "secrets in infra/secrets and infra/kubernetes/secrets"
