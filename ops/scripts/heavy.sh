#!/usr/bin/env bash
# The long runs kept out of the default suite: the 150 MB item peak-RSS test and the aggregator
# throughput benchmark (release build), plus the format write-path benchmark.
#   ./ops/scripts/heavy.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export MAILVAULT_TOOLS="${MAILVAULT_TOOLS:-$HOME/.cache/mailvault/tools}"
bash ops/scripts/install-tools.sh >/dev/null
export PATH="$MAILVAULT_TOOLS/bin:$PATH"
cargo test --release -p mailvault-aggregator -- --ignored --nocapture
cargo bench -p mailvault-format --bench write_path
