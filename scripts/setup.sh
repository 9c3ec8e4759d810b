#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine: the Rust
# toolchain must already be there; this adds the `mosquitto` broker (the tests
# start their own instances on free loopback ports) and its command-line
# clients, protoc for the Sparkplug tests and chromium for the status-page test. Idempotent: does nothing when everything is present.
set -euo pipefail

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
# The MQTT TLS test makes its certificates with the openssl command.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The Sparkplug tests decode what the gateway sends with protoc (an
# independent decoder; the build itself needs no protoc).
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# tests/status_page.rs drives the status page in a real headless browser.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# tests/independent_clients.rs runs mqtt.js and node-opcua (tests/js) against the demo.
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
  # The Debian package may start a system broker on 1883; the tests do not
  # need it and the demo's embedded broker wants that port.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
    $SUDO systemctl stop mosquitto || true
    $SUDO systemctl disable mosquitto >/dev/null 2>&1 || true
  elif command -v service >/dev/null 2>&1; then
    $SUDO service mosquitto stop >/dev/null 2>&1 || true
  fi
fi
# The independent clients' npm packages (versions pinned by tests/js/package-lock.json).
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ ! -d "$here/tests/js/node_modules/mqtt" ] || [ ! -d "$here/tests/js/node_modules/node-opcua-client" ]; then
  echo "setup: installing tests/js (mqtt.js, node-opcua-client)" >&2
  npm ci --prefix "$here/tests/js" --no-audit --no-fund >&2
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
echo "setup: ok" >&2
