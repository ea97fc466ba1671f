#!/usr/bin/env bash
# Chaos, long form: N trials (default 100) of a distributed backup, an incremental run and a
# folder restore as real processes, each phase with one component SIGKILLed at a random moment
# and restarted
# (collector, either aggregator, indexer, nats-server, Garage); after each trial every item
# must be searchable exactly once and read back byte-identical, the restored folder must hold
# each item once (restores asked again until one completes), and verify --read-data clean.
# The short form (6 trials, each victim once) runs in the test suite.
#
#   ops/scripts/chaos.sh [TRIALS]     SEED=N picks the trials (default: random, printed)
set -euo pipefail
cd "$(dirname "$0")/../.."
export MAILVAULT_TOOLS="${MAILVAULT_TOOLS:-$HOME/.cache/mailvault/tools}"
bash ops/scripts/install-tools.sh >/dev/null
export PATH="$MAILVAULT_TOOLS/bin:$PATH"
trials="${1:-100}"
seed="${SEED:-$(( (RANDOM << 15) | RANDOM ))}"
echo "chaos.sh: $trials trials, seed $seed (SEED=$seed reproduces them)"
# The whole workspace, as the test suite builds it: building three packages alone unifies
# features differently and rebuilds much of the dependency tree.
cargo build --locked --quiet --workspace --bins
MAILVAULT_CHAOS_TRIALS="$trials" MAILVAULT_CHAOS_SEED="$seed" \
  cargo test --locked -p mailvault-e2e --test chaos -- --nocapture 2>&1 | grep --line-buffered -A4 -E '^chaos|panicked|test result|kept in'
