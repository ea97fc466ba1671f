#!/usr/bin/env bash
# A distributed mailvault run on one machine, every component its own process:
#
#   mailvault-testbed (nats-server + Garage) ─ two mailvault-ews-sim (generated mail, and the
#   dev corpus when present) ─ one mailvault-collector per simulator ─ two mailvault-aggregator
#   replicas ─ one mailvault-indexer (event consumer + gRPC API)
#
# It backs everything up, waits until every item is searchable through the API, shows a search
# and a folder restore (through the API → restore job over NATS → the collector → the
# simulator), and tears everything down on exit (also on failure or ctrl-c).
#
#   MAILVAULT_CORPUS=DIR   maildir corpus for the second simulator
#                          (default ../shared/corpus/dev; skipped when it does not exist)
#   MAILVAULT_TOOLS=DIR    where nats-server and Garage are installed (install-tools.sh)
#   KEEP=1                 keep running after the demo until ctrl-c
#   WORK=DIR               working directory (default: a new temp dir, removed on exit)
#   PROFILE=dev            use debug builds instead of release (quicker to build, slower to run)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

export MAILVAULT_TOOLS="${MAILVAULT_TOOLS:-$HOME/.cache/mailvault/tools}"
bash ops/scripts/install-tools.sh >/dev/null
export PATH="$MAILVAULT_TOOLS/bin:$PATH"

say() { printf '\n== %s\n' "$*"; }

PROFILE="${PROFILE:-release}"
say "building ($PROFILE)"
cargo build --profile "$PROFILE" --locked -p mailvault-harness -p mailvault-ews-sim \
  -p mailvault-collector -p mailvault-aggregator -p mailvault-indexer --bins --example client
if [ "$PROFILE" = dev ]; then OUT=debug; else OUT=$PROFILE; fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$OUT"
CLIENT="$BIN/examples/client"

OWN_WORK=0
if [ -z "${WORK:-}" ]; then
  WORK=$(mktemp -d -t mailvault-distributed-XXXXXX)
  OWN_WORK=1
fi
mkdir -p "$WORK/logs"
PIDS=()

cleanup() {
  local rc=$?
  set +e
  say "tearing down"
  # Newest first: indexer, aggregators, collectors, simulators.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill -TERM "${PIDS[i]}" 2>/dev/null
  done
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    wait "${PIDS[i]}" 2>/dev/null
  done
  # Closing the testbed's stdin stops nats-server and Garage.
  exec 3>&- 2>/dev/null
  [ -n "${TESTBED_PID:-}" ] && wait "$TESTBED_PID" 2>/dev/null
  if [ "$rc" -ne 0 ]; then
    echo "failed (exit $rc); logs:"
    for f in "$WORK"/logs/*.log; do
      echo "--- $f (last 15 lines)"
      tail -n 15 "$f"
    done
  fi
  if [ "$OWN_WORK" = 1 ] && [ "$rc" -eq 0 ]; then
    rm -rf "$WORK"
  else
    echo "working directory kept: $WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Polls a command until it succeeds (a real condition, never a fixed sleep).
wait_for() {
  local what=$1 secs=$2
  shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$end" ]; then
      echo "timed out after ${secs}s waiting for $what" >&2
      return 1
    fi
    sleep 0.2
  done
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

say "starting nats-server and Garage (mailvault-testbed)"
mkfifo "$WORK/testbed.in"
"$BIN/mailvault-testbed" "$WORK/testbed.env" <"$WORK/testbed.in" >"$WORK/logs/testbed.log" 2>&1 &
TESTBED_PID=$!
exec 3>"$WORK/testbed.in"
wait_for "the testbed" 60 grep -q S3_BUCKET "$WORK/testbed.env"
# shellcheck disable=SC1091
source "$WORK/testbed.env"
echo "NATS $NATS_URL, S3 $AWS_ENDPOINT_URL bucket $S3_BUCKET"

printf 'distributed-run passphrase\n' >"$WORK/passphrase"
printf '%s\n' "$AWS_SECRET_ACCESS_KEY" >"$WORK/s3-secret"
printf 'secret\n' >"$WORK/ews-password"
API_PORT=$(free_port)
cat >"$WORK/indexer.toml" <<EOF
[nats]
url = "$NATS_URL"
[repository]
url = "s3://$S3_BUCKET/repo"
passphrase_file = "$WORK/passphrase"
refresh_interval = "1s"
[index]
dir = "$WORK/index"
[api]
listen = "127.0.0.1:$API_PORT"
tokens_file = "$WORK/tokens.toml"
[s3]
endpoint = "$AWS_ENDPOINT_URL"
region = "$AWS_REGION"
access_key_id = "$AWS_ACCESS_KEY_ID"
secret_access_key_file = "$WORK/s3-secret"
EOF
for i in 1 2; do
  cat >"$WORK/aggregator-$i.toml" <<EOF
[nats]
url = "$NATS_URL"
[repository]
url = "s3://$S3_BUCKET/repo"
passphrase_file = "$WORK/passphrase"
refresh_interval = "1s"
[batch]
max_delay = "500ms"
[s3]
endpoint = "$AWS_ENDPOINT_URL"
region = "$AWS_REGION"
access_key_id = "$AWS_ACCESS_KEY_ID"
secret_access_key_file = "$WORK/s3-secret"
EOF
done

say "creating the repository"
"$CLIENT" init-repo --config "$WORK/indexer.toml"
"$BIN/mailvault-indexer" token --tokens-file "$WORK/tokens.toml" --name demo --role admin >"$WORK/token.txt"

say "starting the EWS simulators"
SOURCES=()
start_sim() { # name, extra args...
  local name=$1
  shift
  local port
  port=$(free_port)
  "$BIN/mailvault-ews-sim" --listen "127.0.0.1:$port" --password-file "$WORK/ews-password" \
    --mailboxes-file "$WORK/$name.mailboxes" "$@" >"$WORK/logs/sim-$name.log" 2>&1 &
  PIDS+=($!)
  wait_for "simulator $name" 120 grep -q "items at" "$WORK/logs/sim-$name.log"
  grep "items at" "$WORK/logs/sim-$name.log"
  cat >"$WORK/collector-$name.toml" <<EOF
source = "$name"
mailboxes_csv = "$WORK/$name.mailboxes"
[ews]
url = "http://127.0.0.1:$port/EWS/Exchange.asmx"
username = "svc-mailvault"
password_file = "$WORK/ews-password"
impersonation = true
[nats]
url = "$NATS_URL"
EOF
  SOURCES+=("$name")
}
start_sim exch01 --generate-seed 7 --generate-users 6 --generate-messages 120
CORPUS="${MAILVAULT_CORPUS:-$ROOT/../shared/corpus/dev}"
if [ -d "$CORPUS" ]; then
  start_sim exch02 --maildir "$CORPUS" --domain corpus.example
else
  echo "no corpus at $CORPUS: the second simulator is skipped (set MAILVAULT_CORPUS)"
fi
EXPECTED=0
for s in "${SOURCES[@]}"; do
  n=$(sed -n 's/.* \([0-9][0-9]*\) items at .*/\1/p' "$WORK/logs/sim-$s.log")
  EXPECTED=$((EXPECTED + n))
done

say "starting two aggregators and the indexer"
for i in 1 2; do
  "$BIN/mailvault-aggregator" --config "$WORK/aggregator-$i.toml" >"$WORK/logs/aggregator-$i.log" 2>&1 &
  PIDS+=($!)
done
"$BIN/mailvault-indexer" --config "$WORK/indexer.toml" >"$WORK/logs/indexer.log" 2>&1 &
PIDS+=($!)
wait_for "the indexer API" 60 grep -q "mailvault-indexer serving" "$WORK/logs/indexer.log"
api() { "$CLIENT" --server "http://127.0.0.1:$API_PORT" --token-file "$WORK/token.txt" "$@"; }

say "backing up (one collector --once per simulator)"
started=$SECONDS
for s in "${SOURCES[@]}"; do
  "$BIN/mailvault-collector" --config "$WORK/collector-$s.toml" --once \
    >"$WORK/logs/collector-$s-once.out" 2>"$WORK/logs/collector-$s-once.log"
  captured=$(sed -n 's/.* captured=\([0-9]*\).*/\1/p' "$WORK/logs/collector-$s-once.out" |
    awk '{ n += $1 } END { print n + 0 }')
  echo "collector $s: $captured items captured"
done
say "waiting until all $EXPECTED items are searchable"
api wait-count "$EXPECTED" --timeout-secs 600
echo "backup searchable after $((SECONDS - started)) s"
api mailboxes

say "search: has:attachment (first 5)"
api search 'has:attachment' --limit 5

# Collectors as daemons: they serve restore jobs (a `--once` run does not).
for s in "${SOURCES[@]}"; do
  "$BIN/mailvault-collector" --config "$WORK/collector-$s.toml" --interval 1h \
    >"$WORK/logs/collector-$s.log" 2>&1 &
  PIDS+=($!)
  wait_for "collector $s serving restores" 60 grep -q "serving restore jobs" "$WORK/logs/collector-$s.log"
done

MB=$(head -n 1 "$WORK/exch01.mailboxes")
FOLDER=$(api search "mailbox:$MB" --limit 1 | sed -n '2p' | cut -f3)
IFS=/ read -ra PARTS <<<"$FOLDER"
ARGS=()
for p in "${PARTS[@]}"; do ARGS+=(--folder "$p"); done
say "restore: $MB folder '$FOLDER' into the same folder (collision=copy)"
api restore --mailbox "$MB" "${ARGS[@]}" --collision copy | tail -n 5

if [ "${KEEP:-0}" = 1 ]; then
  say "running; API at http://127.0.0.1:$API_PORT (token in $WORK/token.txt); ctrl-c to stop"
  wait "${PIDS[@]}"
fi
say "done"
