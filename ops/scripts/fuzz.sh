#!/usr/bin/env bash
# Hostile-input runs, long form: the property tests that feed random and mangled input to
# every parser that reads from outside (EWS responses, NTLM challenges, the checkpoint log,
# ingest messages off NATS, MIME and journal reports, search queries), with many more cases
# than the suite's short form (256 or fewer each). Stable toolchain; each case is a fresh input.
#
#   ops/scripts/fuzz.sh [CASES]      default 100000 per property
set -euo pipefail
cd "$(dirname "$0")/../.."
cases="${1:-100000}"
export MAILVAULT_FUZZ_CASES="$cases"
echo "fuzz.sh: $cases cases per property"
start=$(date +%s)
cargo test --locked -p mailvault-collector --lib hostile
cargo test --locked -p mailvault-aggregator --lib hostile
cargo test --locked -p mailvault-indexer --test extract_hostile --test query_hostile
echo "fuzz.sh: done in $(( $(date +%s) - start )) s"
