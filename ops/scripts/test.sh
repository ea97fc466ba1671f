#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a warm one: installs the real servers and tools
# the tests use (nats-server 2.15, Garage, Helm's SDK, kubernetes-validate and the
# prometheus-operator CRD models, Prometheus and promtool) if they are missing, then runs
# formatting, lints and every test of the workspace. Tests start their own servers on free
# loopback ports.
#
#   MAILVAULT_CORPUS=DIR   real mail (../shared/corpus/dev layout) for the corpus tests; unset,
#                          those tests say so and run on generated mail only.
#   MAILVAULT_TOOLS=DIR    where the servers are installed (default ~/.cache/mailvault/tools).
set -euo pipefail
cd "$(dirname "$0")/../.."

export MAILVAULT_TOOLS="${MAILVAULT_TOOLS:-$HOME/.cache/mailvault/tools}"
bash ops/scripts/install-tools.sh >/dev/null
export PATH="$MAILVAULT_TOOLS/bin:$PATH"

if [ -n "${MAILVAULT_CORPUS:-}" ]; then
  echo "test.sh: real-mail tests use MAILVAULT_CORPUS=$MAILVAULT_CORPUS"
else
  echo "test.sh: MAILVAULT_CORPUS is unset: real-mail tests run on generated mail only"
fi

echo "test.sh: cargo fmt --check"
cargo fmt --all -- --check
echo "test.sh: cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "test.sh: cargo test"
cargo test --workspace --locked
