#!/usr/bin/env bash
# The whole test suite, as the README and CI run it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PATH:/usr/sbin"
cargo test --locked --no-fail-fast -- --test-threads=2
