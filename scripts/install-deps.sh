#!/usr/bin/env bash
# Install what turnd's interop tests need on Debian 12, as root. Idempotent: run it
# as often as you like; it only installs what is missing. CI runs it.
#
#   - coturn (turnutils_uclient, turnutils_peer; its daemon is stopped and disabled)
#   - chromium (Debian's; driven by playwright-core, no browser download ever)
#   - iproute2 (ip) and util-linux (unshare) for the private network namespace
#   - systemd (systemd-analyze, to verify systemd/turnd.service)
#   - nodejs and npm, unless node and npm are already on PATH
#   - tests/browser/node_modules (npm ci from the lockfile)
#   - cargo-fuzz 0.13.2 (the fuzz targets in fuzz/, run by scripts/fuzz.sh)
#   - redis-server (the fleet tests start their own; the packaged daemon never runs)
#   - haproxy (in front of turnd with PROXY protocol, in a private namespace)
#   - podman and buildah (the container image is built and run from Containerfile),
#     runc (podman's runtime in scripts/deploy-check.sh: crun refuses hosts with
#     hybrid cgroups) and binutils (strip, for the image's binary)
#   - python3-venv, and in /opt/turnd-test/venv kubernetes-validate 1.37.0 from PyPI
#     (scripts/deploy-check.sh validates deploy/kubernetes with it)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "install-deps: $*"; }
die() { echo "install-deps: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get install, unshare --net)"

# Never let anything fetch a browser build.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

# clang-14 + libbpf-dev build the XDP program (cargo feature `xdp`); ethtool
# sets checksum offload and GRO on the XDP tests' veths.
pkgs=(coturn chromium iproute2 util-linux systemd redis-server haproxy podman buildah runc binutils python3-venv clang-14 libbpf-dev ethtool)
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  pkgs+=(nodejs npm)
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

# coturn's maintainer scripts may start a turnserver; keep it from starting at all.
policy_rc_added=0
cleanup() {
  if [ "$policy_rc_added" -eq 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT

if [ "${#missing[@]}" -gt 0 ]; then
  log "installing: ${missing[*]}"
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    policy_rc_added=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # apt-get update only when there are no package lists yet, or when the install
  # cannot find a package with the lists we have.
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    log "apt-get update (no package lists yet)"
    apt-get update
  fi
  if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
    log "install failed with the current package lists; apt-get update and retry"
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
  fi
else
  log "system packages already installed: ${pkgs[*]}"
fi

# No coturn daemon may hold 3478 or any other port: the tests start their own servers.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now coturn >/dev/null 2>&1 || true
  # Likewise the packaged redis-server and haproxy: the tests start their own.
  systemctl disable --now redis-server haproxy >/dev/null 2>&1 || true
fi
if [ -x /etc/init.d/coturn ]; then
  /etc/init.d/coturn stop >/dev/null 2>&1 || true
fi
if [ -f /etc/default/coturn ] && grep -q '^TURNSERVER_ENABLED=1' /etc/default/coturn; then
  sed -i 's/^TURNSERVER_ENABLED=1/#TURNSERVER_ENABLED=1/' /etc/default/coturn
fi
# A turnserver left by the package runs as the turnserver user (coturn's default) or
# from the init script's pid file; stop those, by pid, never a test's own coturn.
for pidfile in /run/turnserver/turnserver.pid /var/run/turnserver.pid /run/turnserver.pid; do
  if [ -s "$pidfile" ]; then
    pid=$(cat "$pidfile")
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "turnserver" ]; then
      log "stopping package turnserver (pid $pid)"
      kill "$pid" 2>/dev/null || true
    fi
  fi
done
if tsuid=$(id -u turnserver 2>/dev/null); then
  for d in /proc/[0-9]*; do
    [ "$(cat "$d/comm" 2>/dev/null)" = "turnserver" ] || continue
    [ "$(awk '/^Uid:/ {print $2}' "$d/status" 2>/dev/null)" = "$tsuid" ] || continue
    pid=${d#/proc/}
    log "stopping package turnserver (pid $pid)"
    kill "$pid" 2>/dev/null || true
  done
fi

# playwright-core for the Chromium tests, from the lockfile.
(
  cd tests/browser
  if [ -f package-lock.json ]; then
    # npm records the installed tree in node_modules/.package-lock.json; if every
    # package there matches the lockfile (version and integrity), nothing to do.
    if node -e '
      const fs = require("fs");
      const want = require("./package-lock.json").packages;
      const have = JSON.parse(fs.readFileSync("node_modules/.package-lock.json", "utf8")).packages;
      for (const [k, v] of Object.entries(want)) {
        if (k === "") continue;
        const h = have[k];
        if (!h || h.version !== v.version || h.integrity !== v.integrity || !fs.existsSync(k + "/package.json")) process.exit(1);
      }
    ' 2>/dev/null; then
      log "tests/browser/node_modules up to date"
    else
      log "npm ci in tests/browser"
      npm ci --no-audit --no-fund
    fi
  else
    log "npm install in tests/browser (no lockfile)"
    npm install --no-audit --no-fund
  fi
)

# cargo-fuzz for the fuzz targets (scripts/fuzz.sh), from crates.io, pinned.
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  log "cargo install cargo-fuzz 0.13.2"
  cargo install cargo-fuzz --version 0.13.2 --locked
else
  log "cargo-fuzz already installed: $(cargo fuzz --version 2>/dev/null || echo unknown)"
fi

# kubernetes-validate for scripts/deploy-check.sh, pinned, in its own venv (Debian's
# python3, whatever python3 comes first on PATH). Recreated only when the pin changes.
K8S_VALIDATE_VERSION=1.37.0
venv=/opt/turnd-test/venv
if [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" != "$K8S_VALIDATE_VERSION" ]; then
  log "kubernetes-validate $K8S_VALIDATE_VERSION into $venv"
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$K8S_VALIDATE_VERSION"
else
  log "kubernetes-validate $K8S_VALIDATE_VERSION already in $venv"
fi

# Everything the tests need must be there now.
fail=0
need() {
  if ! "$@" >/dev/null 2>&1; then
    echo "install-deps: MISSING after install: $*" >&2
    fail=1
  fi
}
need test -x /usr/bin/chromium
need command -v turnutils_uclient
need command -v turnutils_peer
need command -v turnserver
need command -v node
need command -v npm
need command -v unshare
need command -v ip
need command -v systemd-analyze
need command -v cargo-fuzz
need command -v redis-server
need command -v redis-cli
need command -v haproxy
need command -v podman
need command -v buildah
need command -v runc
need command -v strip
need test -x "$venv/bin/kubernetes-validate"
need test -f tests/browser/node_modules/playwright-core/package.json
[ "$fail" -eq 0 ] || die "dependencies missing (see above)"
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "install-deps: WARNING: node $(node --version) is older than playwright-core's minimum (20)" >&2
fi

log "ok: $(/usr/bin/chromium --version 2>/dev/null | head -1); node $(node --version);" \
  "playwright-core $(node -p 'require("./tests/browser/node_modules/playwright-core/package.json").version')"
